"""edgekd.bench logic that needs no runtime: SLO verdicts, percentiles, the timing loop, input feeds."""

from pathlib import Path

import numpy as np
import pytest

from edgekd.bench import SloVerdict, check_slo
from edgekd.bench.artifact import Artifact, InputSpec
from edgekd.bench.feeds import build_feeds
from edgekd.runtimes import SessionConfig, openvino_config
from edgekd.bench.stats import latency_stats, time_sync
from edgekd.errors import BadInput
from edgekd.targets import Slo

FULL_SLO = Slo(latency_p95_ms=10.0, latency_p50_ms=5.0, peak_memory_mb=200, model_size_mb=25,
               min_metric_retention=0.99)
GOOD = {"latency_p95_ms": 9.0, "latency_p50_ms": 4.0, "peak_memory_mb": 150.0, "model_size_mb": 3.0}


def _by_key(verdict: SloVerdict) -> dict:
    return {c.key: c for c in verdict.checks}


def test_slo_passes_when_every_figure_is_within_its_limit():
    verdict = check_slo(slo=FULL_SLO, figures=GOOD, metric_retention=0.995)
    assert verdict.verdict == "pass"
    assert [c.ok for c in verdict.checks] == [True] * 5
    assert _by_key(verdict)["latency_p95_ms"].to_dict() == {"key": "latency_p95_ms", "limit": 10.0,
                                                           "value": 9.0, "ok": True}


def test_slo_limit_is_inclusive_and_one_figure_over_fails():
    at_limit = check_slo(slo=FULL_SLO, figures={**GOOD, "latency_p95_ms": 10.0})
    assert at_limit.verdict == "pass"
    over = check_slo(slo=FULL_SLO, figures={**GOOD, "peak_memory_mb": 200.5})
    assert over.verdict == "fail"
    assert [c.key for c in over.failed] == ["peak_memory_mb"]
    assert "peak_memory_mb" in over.reason


def test_slo_retention_is_a_lower_bound_checked_only_when_given():
    low = check_slo(slo=FULL_SLO, figures=GOOD, metric_retention=0.98)
    assert low.verdict == "fail" and _by_key(low)["min_metric_retention"].ok is False
    unknown = check_slo(slo=FULL_SLO, figures=GOOD)
    retention = _by_key(unknown)["min_metric_retention"]
    assert (retention.value, retention.ok) == (None, None)  # reported not measured ...
    assert unknown.verdict == "pass"  # ... without hiding the measured verdict
    assert "min_metric_retention not checked" in unknown.reason


def test_slo_without_a_limit_has_no_check_for_it():
    verdict = check_slo(slo=Slo(latency_p95_ms=10.0), figures={"latency_p95_ms": 50.0, "peak_memory_mb": 10**6})
    assert [c.key for c in verdict.checks] == ["latency_p95_ms"]
    assert verdict.verdict == "fail"
    assert check_slo(slo=Slo(), figures=GOOD).verdict == "pass"


def test_slo_missing_figure_is_not_measured_never_pass():
    verdict = check_slo(slo=FULL_SLO, figures={**GOOD, "peak_memory_mb": None}, metric_retention=1.0)
    assert verdict.verdict == "not-measured"
    assert _by_key(verdict)["peak_memory_mb"].ok is None
    assert "peak_memory_mb" in verdict.reason


@pytest.mark.parametrize(("baseline", "model_mb"), [(40.0, 2.0), (42.0, 0.0), (42.5, None)])
def test_model_peak_below_the_baseline_is_not_measured_and_no_memory_slo_passes(monkeypatch, baseline, model_mb):
    """Child-process noise can put the model's peak below the runtime-only baseline: that is no figure, not 0 MB."""
    from edgekd.bench import memory
    from edgekd.bench.core import BenchResult

    peaks = {"baseline": baseline, "model": 42.0}
    monkeypatch.setattr(memory, "_run_child", lambda config, feeds, mode, runs, timeout: peaks[mode])
    config = SessionConfig(model="m.onnx", runtime="onnxruntime", device="CPUExecutionProvider")
    figures = memory.measure_peak_memory(config=config, feeds={"x": np.zeros((1, 4), np.float32)})
    assert figures == memory.MemoryFigures(model_mb, 42.0, baseline)
    result = BenchResult(name="t", model="m.onnx", runtime="onnxruntime", runtime_device="CPUExecutionProvider",
                         available=True, reason=None, model_size_mb=3.0, slo=SloVerdict("not-measured"), batch_size=1,
                         threads=None, host="test", inputs={}, input_source="generated", memory=figures)
    verdict = check_slo(slo=FULL_SLO, figures={**result.figures, "latency_p95_ms": 9.0, "latency_p50_ms": 4.0},
                        metric_retention=1.0)
    assert result.to_dict()["peak_memory_mb"] == model_mb
    assert verdict.verdict == ("pass" if model_mb is not None else "not-measured")
    assert _by_key(verdict)["peak_memory_mb"].ok is (None if model_mb is None else True)


def test_openvino_cpu_is_pinned_to_f32_and_other_devices_keep_their_default():
    """The CPU plugin would run FP32 in bf16 on AVX512_BF16/AMX hosts; GPU/NPU default to f16 for FP16 profiles."""
    assert openvino_config("CPU") == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                                      "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}  # integer-weight MatMuls as exported
    assert openvino_config("CPU", threads=2, perf_count=True)["INFERENCE_NUM_THREADS"] == 2
    for device in ("GPU", "GPU.1", "NPU"):
        assert "INFERENCE_PRECISION_HINT" not in openvino_config(device)


def test_slo_unavailable_device_is_not_measured_even_with_passing_figures():
    verdict = check_slo(slo=FULL_SLO, figures=GOOD, metric_retention=1.0, unavailable_reason="no NPU here")
    assert verdict.verdict == "not-measured"
    assert "no NPU here" in verdict.reason
    assert verdict.to_dict()["verdict"] == "not-measured"


def test_latency_stats_match_hand_computed_percentiles():
    stats = latency_stats(np.arange(1.0, 11.0))  # 1..10 ms
    # linear interpolation at rank q/100 * (n - 1): p90 -> 8.1 -> 9 + 0.1 * (10 - 9)
    assert stats["p50"] == pytest.approx(5.5)
    assert stats["p90"] == pytest.approx(9.1)
    assert stats["p95"] == pytest.approx(9.55)
    assert stats["p99"] == pytest.approx(9.91)
    assert stats["mean"] == pytest.approx(5.5)
    assert stats["std"] == pytest.approx(np.sqrt(82.5 / 9))  # sum of squared deviations 82.5, n - 1 = 9
    assert (stats["min"], stats["max"]) == (1.0, 10.0)
    assert latency_stats(np.array([2.0]))["std"] == 0.0
    with pytest.raises(ValueError):
        latency_stats(np.array([]))


def test_time_sync_runs_warmup_untimed_then_at_least_min_iterations():
    calls = []
    timing = time_sync(lambda: calls.append(1), warmup=3, min_iterations=7, time_budget_s=0.0)
    assert timing.iterations == 7
    assert len(calls) == 10


def test_time_sync_keeps_running_until_the_time_budget_is_spent():
    timing = time_sync(lambda: None, warmup=0, min_iterations=1, time_budget_s=0.02)
    assert timing.wall_s >= 0.02
    assert timing.iterations > 1


def _artifact(*specs: InputSpec) -> Artifact:
    return Artifact(Path("model.onnx"), "onnx", (), specs, quantized=False)


TEXT_MODEL = _artifact(InputSpec("input_ids", ("batch", "sequence"), np.dtype(np.int64)),
                       InputSpec("attention_mask", ("batch", "sequence"), np.dtype(np.int64)),
                       InputSpec("token_type_ids", ("batch", "sequence"), np.dtype(np.int64)))


def test_generated_text_inputs_are_valid_ids_and_masks():
    feeds = build_feeds(artifact=TEXT_MODEL, batch_size=2, dynamic_dims={"sequence": 16})
    ids, mask, types = (feeds.arrays[n] for n in ("input_ids", "attention_mask", "token_type_ids"))
    assert ids.shape == mask.shape == types.shape == (2, 16)
    assert ids.dtype == np.int64 and ids.min() >= 1 and ids.max() < 100
    assert (mask == 1).all() and (types == 0).all()
    assert feeds.named_dims == {"batch": 2, "sequence": 16}
    assert feeds.source == "generated" and feeds.batch_size == 2


def test_unset_dynamic_axis_asks_for_its_size():
    with pytest.raises(BadInput, match=r"axis 1 is dynamic \('sequence'\).*--dim sequence=128"):
        build_feeds(artifact=TEXT_MODEL, batch_size=1)


def test_dynamic_dim_that_matches_no_axis_is_rejected():
    with pytest.raises(BadInput, match="'seqence' matches no dynamic axis"):
        build_feeds(artifact=TEXT_MODEL, batch_size=1, dynamic_dims={"seqence": 8})
    with pytest.raises(BadInput, match="positive integer"):
        build_feeds(artifact=TEXT_MODEL, batch_size=1, dynamic_dims={"sequence": 0})


def test_unnamed_dynamic_axis_is_set_by_input_and_axis():
    image = _artifact(InputSpec("x", (None, 3, None, None), np.dtype(np.float32)))
    feeds = build_feeds(artifact=image, batch_size=4, dynamic_dims={"x:2": 32, "x:3": 24})
    x = feeds.arrays["x"]
    assert x.shape == (4, 3, 32, 24) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0.0 <= x.min() and x.max() < 1.0


def test_real_samples_fill_the_batch_and_are_cast_to_the_model_dtype():
    image = _artifact(InputSpec("x", ("batch", 1, 2, 2), np.dtype(np.float32)))
    samples = np.arange(2 * 4, dtype=np.float64).reshape(2, 1, 2, 2)
    feeds = build_feeds(artifact=image, batch_size=3, inputs=samples)
    x = feeds.arrays["x"]
    assert x.dtype == np.float32 and x.shape == (3, 1, 2, 2)
    np.testing.assert_array_equal(x, samples[[0, 1, 0]])  # too few samples: repeated in order
    assert feeds.source == "samples" and feeds.batch_size == 3


def test_real_samples_of_the_wrong_shape_or_dtype_are_bad_input():
    image = _artifact(InputSpec("x", ("batch", 1, 2, 2), np.dtype(np.float32)))
    with pytest.raises(BadInput, match=r"input 'x' expects shape \[batch, 1, 2, 2\]; samples have shape \[5, 1, 3, 3\]"):
        build_feeds(artifact=image, batch_size=1, inputs=np.zeros((5, 1, 3, 3)))
    with pytest.raises(BadInput, match="missing"):
        build_feeds(artifact=TEXT_MODEL, batch_size=1, inputs={"input_ids": np.ones((1, 4), np.int64)})
    with pytest.raises(BadInput, match="expects int64; samples are float"):
        build_feeds(artifact=TEXT_MODEL, batch_size=1,
                    inputs={n: np.ones((1, 4)) for n in ("input_ids", "attention_mask", "token_type_ids")})


def test_fixed_batch_that_differs_from_the_profile_is_warned_about():
    fixed = _artifact(InputSpec("x", (1, 4), np.dtype(np.float32)))
    feeds = build_feeds(artifact=fixed, batch_size=8)
    assert feeds.arrays["x"].shape == (1, 4)
    assert any("fixed batch of 1" in w for w in feeds.warnings)


def test_load_samples_reads_named_arrays_or_a_dataset(tmp_path):
    from edgekd.bench import load_samples

    named = tmp_path / "tokens.npz"
    np.savez(named, input_ids=np.ones((3, 8), np.int64), attention_mask=np.ones((3, 8), np.int64))
    arrays = load_samples(data=named)
    assert set(arrays) == {"input_ids", "attention_mask"} and arrays["input_ids"].shape == (3, 8)
    dataset = tmp_path / "images.npz"
    np.savez(dataset, x=np.random.default_rng(0).random((20, 1, 4, 4)).astype(np.float32))
    x = load_samples(data=dataset)
    assert isinstance(x, np.ndarray) and x.shape[1:] == (1, 4, 4) and 0 < len(x) < 20  # the held-out split
    with pytest.raises(BadInput, match="no such file"):
        load_samples(data=tmp_path / "absent.npz")


def test_parse_dims_reads_cli_dim_arguments():
    from edgekd.bench import parse_dims

    assert parse_dims(["sequence=128", "pixel_values:2=224"]) == {"sequence": 128, "pixel_values:2": 224}
    for bad in ("sequence", "sequence=", "=4", "sequence=-1", "sequence=0", "sequence=abc"):
        with pytest.raises(BadInput, match="--dim"):
            parse_dims([bad])


@pytest.mark.parametrize("options", [{"min_iterations": 0}, {"warmup": -1}, {"time_budget_s": -1.0}])
def test_impossible_timing_options_are_bad_input(options):
    from edgekd.bench import benchmark
    from edgekd.targets import parse_target

    target = parse_target({"name": "t", "device": "cpu", "runtime": "onnxruntime",
                           "runtime_device": "CPUExecutionProvider", "precision": "fp32"}, source="test")
    with pytest.raises(BadInput, match="timing options"):
        benchmark(model="model.onnx", target=target, **options)


def test_unlabeled_held_out_samples_are_not_scored_as_misses():
    """y == -1 has no right answer: accuracy counts labeled samples only; with none, agreement with the teacher."""
    import numpy as np

    from edgekd.families.arrays import classification_metric

    outputs = np.eye(3)[[0, 1, 2, 0]]
    teacher = np.eye(3)[[0, 1, 1, 0]]
    metric = classification_metric(outputs, np.array([0, 1, -1, -1]), teacher)
    assert metric == {"name": "accuracy", "value": 1.0, "labeled_samples": 2}
    unlabeled = classification_metric(outputs, np.full(4, -1), teacher)
    assert unlabeled == {"name": "teacher_agreement", "value": 0.75}
