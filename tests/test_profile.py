"""`edgekd profile`: the most capable student that fits each target's budget, from measured figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tight_target(tmp_path: Path, name: str, **slo) -> Path:
    profile = yaml.safe_load((ROOT / "targets" / "x86-cpu-onnxruntime.yaml").read_text())
    profile.update(name=name, slo=slo)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    """A width-8 ResNet profiled against a size budget that only the smaller students meet."""
    from edgekd.cli import main

    tmp = tmp_path_factory.mktemp("profile")
    target = tight_target(tmp, "size-bound", model_size_mb=0.03, latency_p95_ms=1000.0)
    code = main(["profile", "profilemodels:small", "--data", "digits", "-t", str(target), "--out", str(tmp / "out"),
                 "--trust-factory", "profilemodels:small"])
    return code, json.loads((tmp / "out" / "profile.json").read_text()), tmp


@pytest.fixture(scope="module", autouse=True)
def user_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("profilemodels")
    (folder / "profilemodels.py").write_text("from edgekd.models import resnet\n\ndef small():\n"
                                          "    return resnet(width=8)\n")
    import sys

    sys.path.insert(0, str(folder))
    yield
    sys.path.remove(str(folder))


def test_the_largest_candidate_within_budget_is_chosen(profiled):
    code, result, tmp = profiled
    assert code == 0
    (entry,) = result["targets"]
    rows = {c["student"]: c for c in entry["candidates"]}
    params = [c["params"] for c in entry["candidates"]]
    assert params == sorted(params, reverse=True) and len(set(params)) == len(params)  # the ladder, no duplicates
    assert "nothing was pruned" in entry["skipped"]["prune:0.125"]  # width 8 in blocks of 8: 12.5% rounds to 0
    fitting = [c for c in entry["candidates"] if c["fits"] and c["student"] != "teacher"]
    assert fitting and all(c["model_size_mb"] <= 0.03 * 0.9 for c in fitting)
    assert entry["chosen"] == max(fitting, key=lambda c: c["params"])["student"]
    assert not rows["teacher"]["fits"] and rows["teacher"]["misses"] == ["model_size_mb"]
    assert entry["chosen"] in entry["why"] and "to spare" in entry["why"]
    assert (tmp / "out" / "budget.png").stat().st_size > 0


def test_an_impossible_budget_exits_1_naming_the_smallest_candidate(run_cli, tmp_path):
    target = tight_target(tmp_path, "impossible", model_size_mb=0.0001)
    code, out, _ = run_cli("profile", "profilemodels:small", "--data", "digits", "-t", str(target))
    assert code == 1 and "no candidate meets model_size_mb 0.0001" in out and "would need model_size_mb >= 0.0" in out


def test_an_absent_device_is_estimated_never_chosen(run_cli, tmp_path):
    code, out, _ = run_cli("profile", "profilemodels:small", "--data", "digits", "-t", "intel-npu-core-ultra",
                           "--json", str(tmp_path / "p.json"))
    entry = json.loads((tmp_path / "p.json").read_text())["targets"][0]
    assert code == 1 and entry["chosen"] is None and all(c["estimated"] and not c["fits"] for c in entry["candidates"])
    assert "never a measured fit" in out


def test_bad_margin_is_bad_input(run_cli):
    code, _, err = run_cli("profile", "edgekd.models:resnet", "--data", "digits", "-t", "x86-cpu-onnxruntime",
                           "--margin", "1.5")
    assert code == 2 and "margin 1.5" in err


@pytest.mark.slow
def test_compress_with_student_auto_trains_the_student_the_budget_chose(tmp_path):
    from edgekd.pipeline import compress
    from edgekd.recipe import Recipe

    # the trained tiny teacher exports to 0.0154 MB as INT8, prune:0.5 to 0.0107, prune:0.75 to 0.0085
    target = tight_target(tmp_path, "size-bound", model_size_mb=0.0125, latency_p95_ms=1000.0)
    recipe = Recipe(teacher="tiny_models:trained_teacher", student="auto", data="digits", targets=[str(target)],
                    out=str(tmp_path / "run"), formats=["onnx"], distill={"epochs": 1, "batch_size": 64},
                    quant={"epochs": 1, "latency_aware": False},
                    bench={"time_budget_s": 0.1, "ablation_time_budget_s": 0.05, "min_iterations": 10, "warmup": 2})
    result = compress(recipe=recipe)
    budget = result.report["budget"]
    (entry,) = budget["targets"]
    assert budget["chosen"] == entry["chosen"] == "prune:0.5"
    chosen = next(c for c in entry["candidates"] if c["student"] == budget["chosen"])
    assert result.report["ablation"][2]["params"] == chosen["params"]  # what was measured is what was trained
    assert "Budget (student: auto)" in (tmp_path / "run" / "report.md").read_text()
    assert (tmp_path / "run" / "plots" / "budget.png").is_file()


@pytest.mark.slow
def test_a_target_whose_budget_fits_a_larger_student_deploys_its_own(tmp_path):
    """Two budgets: the run's own student is the smaller pick (it fits both); the looser target gets the larger
    pick trained alike (KD, QAT+KD), exported under its own name, and deploys it."""
    from edgekd.pipeline import compress
    from edgekd.recipe import Recipe

    tight = tight_target(tmp_path, "tight", model_size_mb=0.0125, latency_p95_ms=1000.0)
    loose = tight_target(tmp_path, "loose", model_size_mb=0.016, latency_p95_ms=1000.0)
    recipe = Recipe(teacher="tiny_models:trained_teacher", student="auto", data="digits",
                    targets=[str(loose), str(tight)], out=str(tmp_path / "run"), formats=["onnx"],
                    distill={"epochs": 1, "batch_size": 64}, quant={"epochs": 1, "latency_aware": False},
                    bench={"time_budget_s": 0.1, "ablation_time_budget_s": 0.05, "min_iterations": 10, "warmup": 2})
    result = compress(recipe=recipe)
    report = result.report
    picks = {t["target"]: t["chosen"] for t in report["budget"]["targets"]}
    assert report["budget"]["chosen"] == picks["tight"] == "prune:0.5" and picks["loose"] not in (None, "prune:0.5")
    deploys = {t["name"]: t["variant"] for t in report["targets"]}  # INT8, or FP32 where INT8 ran clearly slower
    assert deploys["tight"] in ("student-kd-qat-int8", "student-kd-fp32")
    assert deploys["loose"] in (f"student-kd-qat-int8@{picks['loose']}", f"student-kd-fp32@{picks['loose']}")
    own = {row["variant"]: row for row in report["deployables"]}
    assert {f"student-kd-fp32@{picks['loose']}", f"student-kd-qat-int8@{picks['loose']}"} <= set(own)
    measured = {c["student"]: c["params"] for c in report["budget"]["targets"][0]["candidates"]}
    assert own[deploys["loose"]]["params"] == measured[picks["loose"]] > report["ablation"][2]["params"]
    assert report["deployed"] == deploys["loose"]  # the run root holds what the first target deploys
    assert (tmp_path / "run" / "variants" / deploys["loose"] / "model.onnx").is_file()


def test_student_auto_without_a_measurable_budget_is_refused_before_any_work(run_cli, tmp_path):
    code, _, err = run_cli("compress", "--student", "auto", "-t", "intel-npu-core-ultra", "--teacher",
                           "edgekd.models:resnet", "--data", "digits", "--out", str(tmp_path / "run"))
    assert code == 2 and "student: auto needs a target measurable on this host" in err
    assert not (tmp_path / "run").exists()


def test_candidates_are_timed_together_and_a_speedup_floor_binds(run_cli, tmp_path):
    """min_speedup: each candidate against the FP32 teacher in the same interleaved rounds; a floor
    no INT8 candidate can reach fails naming what it would take."""
    code, out, _ = run_cli("profile", "profilemodels:small", "--data", "digits", "-t", "x86-cpu-onnxruntime",
                           "--slo", "min_speedup=1000", "--json", str(tmp_path / "p.json"))
    entry = json.loads((tmp_path / "p.json").read_text())["targets"][0]
    assert code == 1 and entry["budget"]["limits"]["min_speedup"] == 1000
    assert all(c["speedup"] > 0 and "min_speedup" in c["misses"] for c in entry["candidates"])
    assert all(c["latency_spread_ms"][0] <= c["latency_p50_ms"] <= c["latency_spread_ms"][1]
               for c in entry["candidates"])
    assert "min_speedup <= " in out  # what the fastest candidate would allow


def test_slo_flags_replace_a_profile_budget_per_target():
    from edgekd.errors import BadInput
    from edgekd.targets import apply_slo_overrides, load_target, parse_slo_flags

    targets = [load_target("x86-cpu-onnxruntime"), load_target("x86-cpu-openvino")]
    flags = parse_slo_flags(["latency_p95_ms=4", "x86-cpu-openvino:min_speedup=2", "model_size_mb=none"])
    assert parse_slo_flags(["a:b:min_speedup=2"]) == {"a:b": {"min_speedup": 2.0}}  # a target named a:b
    ort, ov = apply_slo_overrides(targets, flags, source="--slo")
    assert ort.slo.latency_p95_ms == ov.slo.latency_p95_ms == 4 and ort.slo.model_size_mb is None
    assert ov.slo.min_speedup == 2 and ort.slo.min_speedup is None
    assert ort.slo.peak_memory_mb == targets[0].slo.peak_memory_mb  # the rest of the profile's budget stays
    for flag, message in [("latency=4", "'latency=4': unknown SLO key"), ("latency_p95_ms=fast", "not a number"),
                          (":min_speedup=2", "expected"),
                          ("latency_p95_ms=-1", "greater than 0"), ("latency_p95_ms=inf", "finite"),
                          ("nosuch:latency_p95_ms=1", "'nosuch' is not a target of this run"),
                          ("latency_p95_ms", "expected [TARGET:]KEY=VALUE")]:
        with pytest.raises(BadInput, match=message.replace("[", r"\[")):
            apply_slo_overrides(targets, parse_slo_flags([flag]), source="--slo")


def test_recipe_slo_is_checked_before_any_work(tmp_path):
    from edgekd.errors import BadInput
    from edgekd.recipe import load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("slo:\n  x86-cpu-onnxruntime: {latency_p95_ms: 4}\n")
    loaded = load_recipe(recipe, slo_flags={"x86-cpu-onnxruntime": {"min_speedup": 2.0}})
    assert loaded.slo == {"x86-cpu-onnxruntime": {"latency_p95_ms": 4, "min_speedup": 2.0}}
    recipe.write_text("slo:\n  x86-cpu-onnxruntime: {model_size_mb: 0.01}\n")  # a flag for every target wins
    assert load_recipe(recipe, slo_flags={"*": {"model_size_mb": None}}).slo["x86-cpu-onnxruntime"] == {
        "model_size_mb": None}
    for bad in ("slo:\n  '*': {1: 2, foo: 3}\n", "slo:\n  '*': [1, 2]\n"):
        recipe.write_text(bad)
        with pytest.raises(BadInput, match="slo"):
            load_recipe(recipe, slo_flags={"*": {"min_speedup": 2.0}})
    recipe.write_text("slo:\n  '*': {latency_ms: 4}\n")
    with pytest.raises(BadInput, match="slo.\\*: unknown SLO key 'latency_ms'"):
        load_recipe(recipe)
    recipe.write_text("slo:\n  '*': {min_speedup: 0}\n")
    with pytest.raises(BadInput, match="min_speedup"):
        load_recipe(recipe)


def test_speedup_is_a_lower_bound_checked_only_when_given():
    from edgekd.bench import check_slo
    from edgekd.targets import Slo

    slo = Slo(min_speedup=2.0)
    figures = {"latency_p95_ms": 1.0, "latency_p50_ms": 1.0, "peak_memory_mb": 1.0, "model_size_mb": 1.0}
    assert check_slo(slo=slo, figures=figures, speedup=2.5).verdict == "pass"
    failed = check_slo(slo=slo, figures=figures, speedup=1.5)
    assert failed.verdict == "fail" and failed.failed[0].key == "min_speedup"
    unchecked = check_slo(slo=slo, figures=figures)
    assert unchecked.verdict == "pass" and "min_speedup not checked" in unchecked.reason


def test_the_embedded_example_binds_a_budget_and_other_models_keep_plain_defaults():
    from edgekd.recipe import Recipe, load_recipe

    example = load_recipe(None)
    assert example.student == "auto" and example.labeled_fraction == 0.1
    assert set(example.slo["*"]) == {"model_size_mb", "min_speedup"}
    assert load_recipe(None, student="prune:0.5").student == "prune:0.5"  # explicit still wins
    assert load_recipe(None, slo_flags={"*": {"min_speedup": 2.0}}).slo["*"]["model_size_mb"] == 0.2
    own = load_recipe(None, teacher="edgekd.models:resnet")
    assert (own.student, own.labeled_fraction, own.slo) == (Recipe().student, 1.0, {})
