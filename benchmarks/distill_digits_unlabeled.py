"""Knowledge distillation with 10% of the labels: does the teacher's knowledge of the unlabeled 90% help?

Digits (scikit-learn, 8x8), training split with 10% of the labels kept (stratified) and the rest
marked unlabeled. A ResNet teacher (width 32) is trained with cross-entropy on ALL labels (cached
under ~/.cache/edgekd/benchmarks); a small ResNet student (width 8, one block per stage) is then
trained, over several seeds, three ways on the same loop and schedule:

  kd              response KD on every sample (T=4, alpha=0.9) + CE on the labeled 10%, cached teacher
  ce              the undistilled baseline: distill(kd=False), same data and steps, CE on labeled samples
  ce-labeled-only CE on the labeled subset alone, epochs scaled to the same number of optimizer steps

Test accuracy is reported as mean +- std over seeds. Step time: the cached-teacher KD step against a
plain CE step (target: at most 1.15x), and the live-teacher step, interleaved and repeated. Pass
--threads 1 on a shared or small machine: multi-threaded kernels on tiny models mostly wait.

    python benchmarks/distill_digits_unlabeled.py [--quick] [--seeds N] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgekd.checkpoint import load_checkpoint, save_checkpoint
from edgekd.data import load_data
from edgekd.distill import DistillConfig, distill, evaluate
from edgekd.host import detect_host, isa_summary
from edgekd.io import write_json
from edgekd.models import ModelRef, resnet

RESULTS = Path(__file__).resolve().parent / "results" / "distill_digits_unlabeled.json"
TEACHER_CACHE = Path.home() / ".cache" / "edgekd" / "benchmarks"
STUDENT = {"width": 8, "blocks": (1, 1, 1)}
LABELED_FRACTION = 0.1
TIMING_LIMIT = 1.15


def teacher_for(data, *, epochs: int, console: Console):
    """The width-32 ResNet trained with CE on all labels, reused from disk when already trained."""
    path = TEACHER_CACHE / f"digits-resnet32-{data.sha256[:12]}-e{epochs}.pt"
    if path.is_file():
        console.print(f"teacher: reusing {path}")
        return load_checkpoint(path).model
    started = time.perf_counter()
    torch.manual_seed(0)
    result = distill(student=resnet(width=32), data=data, config=DistillConfig(kd=False, epochs=epochs), progress=False)
    save_checkpoint(path, result.model, ref=ModelRef("edgekd.models:resnet", {"width": 32}),
                    meta={"trained_by": "benchmarks/distill_digits_unlabeled.py", "epochs": epochs,
                          "best_epoch": result.best_epoch, "train_s": time.perf_counter() - started})
    console.print(f"teacher: trained in {time.perf_counter() - started:.0f} s, saved to {path}")
    return result.model


def labeled_only(data):
    keep = data.y_train >= 0
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def accuracy_runs(data, teacher, *, seeds, epochs: int, patience: int, workdir: Path, console: Console) -> list[dict]:
    subset = labeled_only(data)
    base = DistillConfig(epochs=epochs, patience=patience, cache_dir=workdir / "cache")
    scale = steps_per_epoch(len(data.x_train), base.batch_size) / steps_per_epoch(len(subset.x_train), base.batch_size)
    variants = {
        "kd": (data, base),
        "ce": (data, replace(base, kd=False)),
        "ce-labeled-only": (subset, replace(base, kd=False, epochs=round(epochs * scale), patience=round(patience * scale))),
    }
    runs = []
    for seed in seeds:
        for name, (variant_data, config) in variants.items():
            torch.manual_seed(seed)
            student = resnet(**STUDENT)
            started = time.perf_counter()
            result = distill(student=student, teacher=teacher if config.kd else None, data=variant_data,
                             config=replace(config, seed=seed), progress=False)
            test = evaluate(result.model, data.x_test, data.y_test, teacher=teacher)
            runs.append({"variant": name, "seed": seed, "test_accuracy": test["accuracy"],
                         "test_teacher_agreement": test["teacher_agreement"], "val_accuracy": result.metrics["accuracy"],
                         "best_epoch": result.best_epoch, "epochs_run": len(result.history),
                         "optimizer_steps": sum(h["steps"] for h in result.history),
                         "wall_s": round(time.perf_counter() - started, 2)})
            console.print(f"  seed {seed} {name:16s} test accuracy {test['accuracy']:.4f} "
                          f"({len(result.history)} epochs, {runs[-1]['wall_s']:.1f} s)")
    return runs


def step_timing(data, teacher, *, epochs: int, repeats: int, workdir: Path) -> dict:
    """Training-step time per variant (mean over an epoch's steps, batch loading included), runs of
    the variants interleaved so machine noise hits all alike, the first epoch of every run left out
    (warm-up). The ratios use the fastest epoch of each variant, the measurement least disturbed by
    other processes on a shared CPU; medians are reported beside them."""
    base = DistillConfig(epochs=epochs, patience=None, cache_dir=workdir / "cache")
    variants = {"ce": replace(base, kd=False), "kd-cached": base, "kd-live": replace(base, cache=False)}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, config in variants.items():
            torch.manual_seed(0)
            result = distill(student=resnet(**STUDENT), teacher=teacher, data=data, config=config, progress=False)
            samples[name].extend(h["step_ms"] for h in result.history[1:])
    fastest = {name: min(values) for name, values in samples.items()}
    median = {name: statistics.median(values) for name, values in samples.items()}
    return {"step_ms": fastest, "step_ms_median": median, "samples_ms": samples,
            "ratio_cached_vs_ce": fastest["kd-cached"] / fastest["ce"], "ratio_live_vs_ce": fastest["kd-live"] / fastest["ce"],
            "median_ratio_cached_vs_ce": median["kd-cached"] / median["ce"]}


def summarize(runs: list[dict]) -> dict:
    summary = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        values = [r["test_accuracy"] for r in runs if r["variant"] == name]
        summary[name] = {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                         "n": len(values)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed, few epochs: a smoke run")
    parser.add_argument("--seeds", type=int, default=5, help="student seeds in the full run (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=RESULTS, help=f"where to write the results (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console()
    seeds = [0] if args.quick else list(range(args.seeds))
    teacher_epochs, epochs, patience = (8, 6, 3) if args.quick else (30, 30, 8)
    timing_epochs, repeats = (3, 1) if args.quick else (4, 3)

    full = load_data("digits")
    data = full.with_labeled_fraction(LABELED_FRACTION)
    labeled = int((data.y_train >= 0).sum())
    console.print(f"digits: {len(data.x_train)} training samples, {labeled} labeled; {len(data.x_val)} val, "
                  f"{len(data.x_test)} test; torch threads {torch.get_num_threads()}")
    teacher = teacher_for(full, epochs=teacher_epochs, console=console)
    teacher_test = evaluate(teacher, data.x_test, data.y_test)["accuracy"]
    console.print(f"teacher test accuracy {teacher_test:.4f}")

    with tempfile.TemporaryDirectory() as tmp:
        runs = accuracy_runs(data, teacher, seeds=seeds, epochs=epochs, patience=patience, workdir=Path(tmp),
                             console=console)
        timing = step_timing(data, teacher, epochs=timing_epochs, repeats=repeats, workdir=Path(tmp))
    summary = summarize(runs)

    table = Table(title=f"digits, {LABELED_FRACTION:.0%} labeled: student resnet(width=8, blocks=(1,1,1)), "
                        f"{len(seeds)} seed(s)")
    for column in ("variant", "test accuracy (mean ± std)", "teacher agreement", "optimizer steps"):
        table.add_column(column)
    table.add_row("teacher (all labels)", f"{teacher_test:.4f}", "-", "-")
    for name, stats in summary.items():
        rows = [r for r in runs if r["variant"] == name]
        table.add_row(name, f"{stats['mean']:.4f} ± {stats['std']:.4f}",
                      f"{statistics.mean(r['test_teacher_agreement'] for r in rows):.4f}",
                      f"{statistics.mean(r['optimizer_steps'] for r in rows):.0f}")
    console.print(table)
    timing_table = Table(title="training step time (fastest / median epoch, first epoch of each run excluded)")
    for column in ("variant", "ms / step (fastest)", "vs ce", "ms / step (median)", "vs ce"):
        timing_table.add_column(column)
    fastest, median = timing["step_ms"], timing["step_ms_median"]
    for name in fastest:
        timing_table.add_row(name, f"{fastest[name]:.2f}", f"{fastest[name] / fastest['ce']:.3f}x",
                             f"{median[name]:.2f}", f"{median[name] / median['ce']:.3f}x")
    console.print(timing_table)

    gain = summary["kd"]["mean"] - max(summary["ce"]["mean"], summary["ce-labeled-only"]["mean"])
    verdict = {"kd_minus_best_ce_points": 100 * gain,
               "kd_beats_ce": gain > 0 and all(
                   min(r["test_accuracy"] for r in runs if r["variant"] == "kd" and r["seed"] == s)
                   > max(r["test_accuracy"] for r in runs if r["variant"] != "kd" and r["seed"] == s) for s in seeds),
               "cached_step_within_limit": timing["ratio_cached_vs_ce"] <= TIMING_LIMIT}
    console.print(f"KD - best CE baseline: {100 * gain:+.2f} accuracy points; KD ahead on every seed: "
                  f"{verdict['kd_beats_ce']}; cached KD step {timing['ratio_cached_vs_ce']:.3f}x CE "
                  f"(limit {TIMING_LIMIT}x), live teacher {timing['ratio_live_vs_ce']:.3f}x")
    write_json(args.json, {
        "benchmark": "distill_digits_unlabeled", "quick": args.quick, "host": isa_summary(detect_host()),
        "torch_threads": torch.get_num_threads(), "labeled_fraction": LABELED_FRACTION,
        "train_samples": len(data.x_train), "labeled_samples": labeled,
        "teacher": {"model": "resnet(width=32)", "epochs": teacher_epochs, "test_accuracy": teacher_test},
        "student": "resnet(width=8, blocks=(1, 1, 1))", "epochs": epochs, "patience": patience, "seeds": seeds,
        "runs": runs, "summary": summary, "timing": timing, "timing_limit": TIMING_LIMIT, "verdict": verdict,
    })
    console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
