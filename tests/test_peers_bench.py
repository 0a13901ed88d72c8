"""benchmarks/peers.py: the Pareto rule the README's verdicts come from, and the calibration subset
the peers share with edgekd's quantizer (pure logic, no training, no runtimes)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import benchmark_script


@pytest.fixture(scope="module")
def peers():
    with benchmark_script("peers") as module:
        yield module


def _entry(p50: float, metric: float) -> dict:
    return {"measured": True, "p50_ms": p50, "metric": metric}


def _results(peers, student: tuple, **rows) -> dict:
    """Rows measured on both runtimes alike, except NNCF (IR only), as peers.measure_rows lays them out."""
    results = {peers.CANDIDATE: {runtime: _entry(*student) for runtime in peers.RUNTIMES}}
    for key, figures in rows.items():
        key = key.replace("_", "-")
        results[key] = {runtime: _entry(*figures) for runtime in peers.RUNTIMES}
    results["nncf-int8"]["onnxruntime"] = {"measured": False, "reason": "IR only"}
    return results


def test_pareto_rule_faster_and_metric_within_tolerance(peers):
    results = _results(peers, (0.10, 0.990), teacher_fp32=(0.30, 0.994), ort_static_int8=(0.20, 0.970),
                       nncf_int8=(0.08, 0.990))
    verdicts = {(v["runtime"], v["peer"]): v for v in peers.pareto_verdicts(results, tolerance=0.005)}
    assert len(verdicts) == 6

    teacher = verdicts[("openvino", "teacher-fp32")]
    assert teacher["dominates"] and teacher["faster"] and teacher["metric_as_good"]  # 0.004 below: a tie
    assert teacher["statement"].startswith("openvino: vs teacher FP32: dominates")

    ort = verdicts[("onnxruntime", "ort-static-int8")]
    assert ort["dominates"] and ort["metric"] == {"edgekd": 0.990, "peer": 0.970}

    slower = verdicts[("openvino", "nncf-int8")]
    assert slower["dominates"] is False and not slower["faster"] and slower["metric_as_good"]
    assert "does NOT dominate (slower)" in slower["statement"]

    absent = verdicts[("onnxruntime", "nncf-int8")]
    assert absent["compared"] is False and absent["dominates"] is None and "IR only" in absent["statement"]


def test_pareto_rule_metric_beyond_tolerance_is_not_a_tie(peers):
    results = _results(peers, (0.10, 0.980), teacher_fp32=(0.30, 0.990), ort_static_int8=(0.05, 0.999),
                       nncf_int8=(0.30, 0.980))
    verdicts = {(v["runtime"], v["peer"]): v for v in peers.pareto_verdicts(results, tolerance=0.005)}
    teacher = verdicts[("onnxruntime", "teacher-fp32")]
    assert teacher["dominates"] is False and teacher["faster"] and not teacher["metric_as_good"]
    assert "metric lower by more than 0.005" in teacher["statement"]
    both = verdicts[("onnxruntime", "ort-static-int8")]
    assert "(slower and metric lower by more than 0.005)" in both["statement"]
    # The same rows pass with a looser tolerance: the rule is the stated one, nothing else.
    loose = {(v["runtime"], v["peer"]): v for v in peers.pareto_verdicts(results, tolerance=0.02)}
    assert loose[("onnxruntime", "teacher-fp32")]["dominates"] is True


def test_calibration_subset_is_edgekd_quantizers_selection(peers):
    from edgekd.quant.qat import calibration_batches

    x = np.arange(100 * 3, dtype=np.float32).reshape(100, 3)
    subset = peers.calibration_subset(x, samples=16, seed=7)
    edgekd_batches = [b.numpy() for (b,) in calibration_batches(x, collate=None, samples=16, batch_size=5, seed=7)]
    np.testing.assert_array_equal(subset, np.concatenate(edgekd_batches))
    assert len(subset) == 16
