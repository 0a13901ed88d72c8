"""The interleaved comparison harness (edgekd.bench.compare), its decision rule, and the decisions built on it:
an INT8 deployable that loses to its FP32 self is not shipped, and the report says what really runs."""

import json
import types
from pathlib import Path

import pytest

import edgekd.bench.compare as compare
import edgekd.bench.stats as stats
from edgekd.bench import RoundTimes, clearly_faster, differ, time_interleaved
from edgekd.errors import BadInput
from edgekd.report import render_report
from edgekd.report.schema import DEPLOYABLE, KD_FP32
from edgekd.steps.context import Artifact
from edgekd.steps.export import publish_root
from edgekd.steps.measure import _never_slower_than_fp32
from edgekd.steps.plan import plan_targets
from edgekd.targets import load_target
from test_bench import _target, _tiny_conv_net
from test_report_render import synthetic_report


def rounds(*p50s: float) -> RoundTimes:
    return RoundTimes(tuple(p50s), tuple(p * 1.2 for p in p50s), runs_per_round=20)


# ---- the rule ---------------------------------------------------------------------------------

def test_clearly_faster_only_when_the_quartile_bands_do_not_overlap():
    fast, slow = rounds(0.27, 0.26, 0.28, 0.27, 0.29), rounds(0.31, 0.33, 0.30, 0.32, 0.31)
    assert fast.spread == (0.27, 0.28) and slow.spread == (0.31, 0.32)
    assert clearly_faster(fast, slow) and not clearly_faster(slow, fast) and differ(fast, slow) and differ(slow, fast)
    loaded = rounds(0.27, 0.50, 0.28, 0.49, 0.29)  # rounds in a slow mode reach into the other's band: a tie
    assert not clearly_faster(loaded, slow) and not clearly_faster(slow, loaded) and not differ(loaded, slow)
    stray = rounds(0.27, 0.26, 0.28, 0.27, 0.45)  # one slow round does not hide a clear difference
    assert clearly_faster(stray, slow)


def test_bands_apart_by_less_than_the_minimum_difference_are_a_tie():
    """Two sessions of the same file can differ consistently by 1-2%: real, and of no use to a decision."""
    a, b = rounds(1.000, 1.001, 1.000, 1.001), rounds(1.020, 1.021, 1.020, 1.021)
    assert a.spread[1] < b.spread[0] and not differ(a, b)
    assert clearly_faster(a, rounds(1.060, 1.061, 1.060, 1.061))


def test_figures_are_medians_of_round_figures_with_the_quartile_spread():
    timed = RoundTimes((0.3, 0.9, 0.2, 0.31, 0.29), (0.4, 1.2, 0.3, 0.5, 0.45), runs_per_round=50)
    assert timed.p50 == pytest.approx(0.3) and timed.p95 == pytest.approx(0.45)
    assert timed.spread == pytest.approx((0.29, 0.31))
    assert timed.as_dict() == {"p50": timed.p50, "p95": timed.p95, "spread": list(timed.spread), "rounds": 5,
                               "runs_per_round": 50, "round_p50_ms": [0.3, 0.9, 0.2, 0.31, 0.29]}
    assert timed.describe() == "0.3 ms (round IQR 0.29-0.31)"


# ---- the harness on fake sessions and a fake clock: load that drifts while timing ---------------

class FakeRuntime:
    """Sessions whose runs take `base_ms[model]` times the host's load at that moment, on a fake clock."""

    def __init__(self, monkeypatch, base_ms: dict[str, float], load=lambda now_ms: 1.0):
        self.now_ns, self.base_ms, self.load, self.calls = 0, base_ms, load, []
        monkeypatch.setattr(stats, "time", types.SimpleNamespace(perf_counter_ns=lambda: self.now_ns))
        available = types.SimpleNamespace(available=True, reason=None)
        monkeypatch.setattr(compare, "prepare", lambda path, *_: (path, types.SimpleNamespace(arrays={}), available))
        monkeypatch.setattr(compare, "session_config", lambda artifact, *_: artifact)
        monkeypatch.setattr(compare, "open_session", self.session)

    def session(self, model):
        runtime = self

        class Session:
            def bind(self, feeds):
                pass

            def infer(self):
                runtime.calls.append(model)
                runtime.now_ns += int(runtime.base_ms[model] * runtime.load(runtime.now_ns / 1e6) * 1e6)

            def close(self):
                pass

        return Session()

    def timed(self, *models: str, **options) -> dict[str, RoundTimes]:
        return time_interleaved(models={m: m for m in models}, target=_target(), **options)


def test_rounds_rotate_through_the_artifacts_with_a_fixed_run_count(monkeypatch):
    fake = FakeRuntime(monkeypatch, {"a": 1.0, "b": 2.0, "c": 0.5})
    timed = fake.timed("a", "b", "c", rounds=3, round_time_s=0.03, warmup=4)
    blocks = [m for i, m in enumerate(fake.calls) if i == 0 or fake.calls[i - 1] != m]
    assert blocks == ["a", "b", "c", "a", "b", "c", "b", "c", "a", "c", "a", "b"]  # warm-ups, then A B C, B C A, C A B
    assert {name: t.runs_per_round for name, t in timed.items()} == {"a": 30, "b": 15, "c": 60}  # fills 30 ms
    per_round = compare.ROUND_WARMUP + 30
    assert fake.calls.count("a") == 4 + 3 * per_round
    assert timed["a"].p50 == pytest.approx(1.0) and timed["b"].p50 == pytest.approx(2.0)
    assert clearly_faster(timed["a"], timed["b"]) and clearly_faster(timed["c"], timed["a"])


def test_identical_artifacts_agree_under_drifting_load_only_when_interleaved(monkeypatch):
    """The load doubles at 260 ms (another job starts), just as a first loop ends: back-to-back loops call two
    copies of the same model different; interleaved rounds see the step alike."""
    fake = FakeRuntime(monkeypatch, {"a": 1.0, "copy": 1.0}, load=lambda now_ms: 1.0 if now_ms < 260 else 2.0)
    alone_a = fake.timed("a", round_time_s=0.01, warmup=5)["a"]  # 21 rounds of 2 + 10 runs: 0-257 ms
    alone_copy = fake.timed("copy", round_time_s=0.01, warmup=5)["copy"]
    assert (alone_a.p50, alone_copy.p50) == (1.0, 2.0) and clearly_faster(alone_a, alone_copy)
    fake.now_ns = 130_000_000  # the step comes a quarter into the interleaved rounds
    together = fake.timed("a", "copy", round_time_s=0.01, warmup=5)
    assert together["a"].p50 == together["copy"].p50 == 2.0 and not differ(together["a"], together["copy"])
    assert min(together["a"].round_p50_ms) == 1.0  # both saw the quiet rounds too


def test_unavailable_target_and_bad_round_counts_are_bad_input(tmp_path):
    model = _tiny_conv_net(tmp_path / "tiny.onnx")
    with pytest.raises(BadInput, match="cannot be timed on this host"):
        time_interleaved(models={"a": model}, target=_target(runtime="openvino", runtime_device="NPU"))
    for bad in (0, 1.5, True):
        with pytest.raises(BadInput, match="rounds"):
            time_interleaved(models={"a": model}, target=_target(), rounds=bad)


def test_real_interleaved_run_on_two_tiny_onnx_files(tmp_path):
    first = _tiny_conv_net(tmp_path / "a.onnx")
    second = _tiny_conv_net(tmp_path / "b.onnx")
    timed = time_interleaved(models={"a": first, "b": second}, target=_target(), rounds=3, round_time_s=0.005,
                             warmup=3)
    assert list(timed) == ["a", "b"]
    for figures in timed.values():
        low, high = figures.spread
        assert len(figures.round_p50_ms) == 3 and figures.runs_per_round >= compare.MIN_RUNS_PER_ROUND
        assert 0 < low <= figures.p50 <= high and figures.p95 >= figures.p50


# ---- never slower than its FP32 self ----------------------------------------------------------

def _artifact(root: Path, name: str, *, int8: bool) -> Artifact:
    folder = root / "variants" / name
    (folder / "openvino").mkdir(parents=True)
    for relative in ("model.onnx", "openvino/model.xml", "openvino/model.bin", "hf/config.json"):
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text(f"{name} {relative}")
    return Artifact(name, folder / "model.onnx", folder / "openvino" / "model.xml", {}, {"onnx": int8}, None, {})


def _ctx(tmp_path):
    plan = plan_targets([load_target("x86-cpu-onnxruntime"), load_target("intel-npu-core-ultra")])
    return types.SimpleNamespace(plan=plan, run=types.SimpleNamespace(out=tmp_path))


@pytest.mark.parametrize("int8_ms, executes_int8, focused_int8_ms, falls_back", [
    ((0.31, 0.30, 0.33), True, None, True),  # clearly slower: the FP32 student ships
    ((0.28, 0.26, 0.31), True, (0.28, 0.27, 0.29), False),  # undecided, INT8 behind: timed again; a tie keeps INT8
    ((0.28, 0.26, 0.31), True, (0.31, 0.30, 0.33), True),  # ... and the longer look says clearly slower
    ((0.31, 0.30, 0.33), False, None, False),  # the quantizer already kept it float: nothing to swap
])
def test_an_int8_student_clearly_slower_than_fp32_deploys_the_fp32_student(tmp_path, monkeypatch, int8_ms,
                                                                           executes_int8, focused_int8_ms,
                                                                           falls_back):
    import edgekd.bench

    focused = []

    def time_pair(*, models, **_):
        focused.append(sorted(models))
        return {DEPLOYABLE: rounds(*focused_int8_ms), KD_FP32: rounds(0.27, 0.26, 0.28)}

    monkeypatch.setattr(edgekd.bench, "time_interleaved", time_pair)
    ctx = _ctx(tmp_path)
    x86 = ctx.plan.targets[0]
    artifacts = {DEPLOYABLE: _artifact(tmp_path, DEPLOYABLE, int8=executes_int8),
                 KD_FP32: _artifact(tmp_path, KD_FP32, int8=False)}
    _never_slower_than_fp32(ctx, artifacts, {DEPLOYABLE: rounds(*int8_ms), KD_FP32: rounds(0.27, 0.26, 0.28)}, x86,
                            sample=None)
    assert focused == ([sorted([DEPLOYABLE, KD_FP32])] if focused_int8_ms else [])
    assert ctx.plan.deployed_variant(x86) == (KD_FP32 if falls_back else DEPLOYABLE)
    assert ctx.plan.primary == ctx.plan.deployed_variant(x86)  # the first target: the run root follows
    assert ctx.plan.deployed_variant(ctx.plan.targets[1]) == DEPLOYABLE  # unmeasured: the profile's INT8
    if falls_back:
        assert ctx.plan.notes == ["INT8 0.31 ms (round IQR 0.305-0.32) vs FP32 0.27 ms (round IQR 0.265-0.275) on "
                                  "x86-cpu-onnxruntime: deploys the FP32 student (student-kd-fp32)"]
        # the report carries the rounds the decision rests on: the focused ones where the pair was timed again
        timing = ctx.plan.fp32_instead_timing[x86.name]
        assert timing["int8"]["round_p50_ms"] == list(focused_int8_ms or int8_ms)
        assert timing["fp32"]["round_p50_ms"] == [0.27, 0.26, 0.28]
    else:
        assert ctx.plan.notes == [] and ctx.plan.fp32_instead_timing == {}


def test_the_run_root_holds_a_copy_of_what_the_first_target_deploys(tmp_path):
    ctx = _ctx(tmp_path)
    (tmp_path / "model.onnx").write_text("an earlier root")
    fp32 = _artifact(tmp_path, KD_FP32, int8=False)
    root = publish_root(ctx, fp32)
    assert (root.onnx, root.openvino) == (tmp_path / "model.onnx", tmp_path / "openvino" / "model.xml")
    for relative in ("model.onnx", "openvino/model.xml", "openvino/model.bin", "hf/config.json"):
        assert (tmp_path / relative).read_text() == f"{KD_FP32} {relative}"
    assert root.variant == KD_FP32 and fp32.onnx.is_file()  # the variant's own export stays where it was
    assert not list(tmp_path.glob(".*.tmp"))


# ---- the report names what runs ---------------------------------------------------------------

def _headline(tmp_path, report) -> str:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(json.dumps(report))
    render_report(run_dir=run_dir)
    return (run_dir / "report.md").read_text()


def test_a_mostly_float_quantized_student_is_not_called_int8(tmp_path):
    report = synthetic_report(latency_ok=True)
    report["ablation"][4]["int8_layers"] = {"int8": 2, "total": 20}
    md = _headline(tmp_path, report)
    assert "The student (student-kd-qat-int8, mostly float: 2 of 20 layers INT8) meets every SLO" in md
    assert "The INT8 student" not in md


def test_a_target_that_falls_back_to_fp32_is_named_with_the_reason(tmp_path):
    report = synthetic_report(latency_ok=True)
    note = "INT8 0.31 ms (round IQR 0.3-0.32) vs FP32 0.27 ms (round IQR 0.26-0.28) on x86-cpu-openvino: deploys FP32"
    report["targets"][0].update(variant=KD_FP32, note=note)
    report.update(deployed=KD_FP32, notes=[note], speedup_vs_teacher={"x86-cpu-openvino": 2.9},
                  speedup_within_noise=["x86-cpu-openvino"])
    md = _headline(tmp_path, report)
    assert "The FP32 student (student-kd-fp32) meets every SLO" in md and "The INT8 student" not in md
    assert "2.90x on x86-cpu-openvino (within timing noise)" in md
    assert md.count(note) == 2  # under the headline, and under the target
