"""Do identical artifacts get identical figures? The timing harness measured against itself.

Builds a ResNet the size of the demo student (edgekd.models.resnet width 16 on 1x16x16 digits), in FP32
and PTQ INT8, exports each twice (two files, same bytes), and on each x86 CPU target times the two
copies REPS times:
  - harness: edgekd.bench.time_interleaved with the ablation's defaults (21 interleaved rounds, 1 s of
    timed runs per artifact), and whether `differ` calls the copies different (a false alarm);
  - sequential: edgekd.bench.measure_latency on one copy, then on the other (1 s each), as the ablation
    did before the harness.
The claim: the two copies' harness p50s agree within 10% in every repetition.

    .venv/bin/python benchmarks/harness_noise.py            # 10 repetitions (about 4 minutes)
    .venv/bin/python benchmarks/harness_noise.py --quick    # smoke: 3 repetitions, 0.3 s per artifact

Writes benchmarks/results/harness_noise.json; exits 1 if a pair disagrees by more than 10%.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.bench import ROUNDS, differ, measure_latency, time_interleaved  # noqa: E402
from edgekd.data import load_data  # noqa: E402
from edgekd.export import export  # noqa: E402
from edgekd.host import detect_host, isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402
from edgekd.models import resnet  # noqa: E402
from edgekd.quant import QuantConfig, quantize  # noqa: E402
from edgekd.targets import availability, load_target  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "harness_noise.json"
TARGETS = ("x86-cpu-onnxruntime", "x86-cpu-openvino")
TOLERANCE = 0.10


def build_copies(work: Path, data) -> dict[str, tuple[dict, dict]]:
    """Per precision, two exports of the same model: ({"onnx", "openvino"} paths) x 2."""
    torch.manual_seed(0)
    fp32 = resnet(width=16, blocks=(1, 1, 1), in_channels=1, num_classes=10).eval()
    int8 = quantize(model=fp32, data=data, config=QuantConfig(mode="ptq"), progress=False).model
    example = torch.from_numpy(data.x_test[:1])
    copies = {}
    for precision, model in (("fp32", fp32), ("int8", int8)):
        pair = []
        for copy in ("a", "b"):
            result = export(model=model, example_inputs=example, out_dir=work / precision / copy,
                            parity_inputs=data.x_test[:64])
            pair.append({"onnx": result.onnx, "openvino": result.openvino_xml})
        copies[precision] = tuple(pair)
    return copies


def deviation(a: float, b: float) -> float:
    return abs(a / b - 1)


def measure(copies: tuple[dict, dict], target, *, reps: int, budget_s: float) -> dict:
    fmt = "openvino" if target.runtime == "openvino" else "onnx"
    a, b = copies[0][fmt], copies[1][fmt]
    harness, sequential = [], []
    for rep in range(reps):
        timed = time_interleaved(models={"a": a, "b": b}, target=target, rounds=ROUNDS,
                                 round_time_s=budget_s / ROUNDS)
        harness.append({"a": timed["a"].as_dict(), "b": timed["b"].as_dict(),
                        "deviation": deviation(timed["a"].p50, timed["b"].p50),
                        "differ": differ(timed["a"], timed["b"])})
        first, second = (measure_latency(model=path, target=target, time_budget_s=budget_s) for path in (a, b))
        sequential.append({"a_p50": first["p50"], "b_p50": second["p50"], "deviation": deviation(first["p50"],
                                                                                               second["p50"])})
        print(f"  rep {rep + 1}/{reps}: harness {timed['a'].p50:.4f} / {timed['b'].p50:.4f} ms "
              f"({harness[-1]['deviation']:.1%}{', DIFFER' if harness[-1]['differ'] else ''}); sequential "
              f"{first['p50']:.4f} / {second['p50']:.4f} ms ({sequential[-1]['deviation']:.1%})", flush=True)
    a_p50s = [r["a"]["p50"] for r in harness]
    return {
        "harness": harness, "sequential": sequential,
        "harness_max_deviation": max(r["deviation"] for r in harness),
        "harness_median_deviation": statistics.median(r["deviation"] for r in harness),
        "false_alarms": sum(r["differ"] for r in harness),
        "sequential_max_deviation": max(r["deviation"] for r in sequential),
        "sequential_median_deviation": statistics.median(r["deviation"] for r in sequential),
        "p50_across_reps_ms": [min(a_p50s), max(a_p50s)],  # drift between runs, which a pair shares
        "within_tolerance": max(r["deviation"] for r in harness) <= TOLERANCE,
    }


def markdown_table(payload: dict) -> str:
    """The results as the README shows them: per target and model, the p50 gap between the identical copies."""
    reps = payload["reps"]
    lines = [f"| target | model | harness: p50 gap, max / median of {reps} | `differ` false alarms | sequential "
             "(before): p50 gap, max / median | p50 across repetitions ms |", "|---|---|---|---|---|---|"]
    for r in (r for r in payload["rows"] if r["measured"]):
        low, high = r["p50_across_reps_ms"]
        lines.append(f"| {r['target']} | {r['precision']} | {r['harness_max_deviation']:.1%} / "
                     f"{r['harness_median_deviation']:.1%} | {r['false_alarms']} of {reps} | "
                     f"{r['sequential_max_deviation']:.1%} / {r['sequential_median_deviation']:.1%} | "
                     f"{low:.3f}-{high:.3f} |")
    verdict = "yes" if payload["within_tolerance"] else "NO"
    lines += ["", f"Identical copies within {payload['tolerance']:.0%} at p50 in every repetition: {verdict}. "
              f"Host: {payload['host']}, 1-minute load average {payload['load_average_1min']['before']:.1f} -> "
              f"{payload['load_average_1min']['after']:.1f}; {payload['rounds']} rounds, "
              f"{payload['timed_s_per_artifact']:g} s of timed runs per artifact."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repetitions, 0.3 s per artifact")
    parser.add_argument("--reps", type=int, help="repetitions per pair (default 10, --quick 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 10)
    budget_s = 0.3 if args.quick else 1.0  # timed seconds per artifact: the ablation's default is 1.0
    load_before = os.getloadavg()[0]
    data = load_data("digits16")
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgekd-noise-") as tmp:
        copies = build_copies(Path(tmp), data)
        for name in TARGETS:
            target = load_target(name)
            available, reason, _ = availability(target)
            for precision, pair in copies.items():
                if not available:
                    rows.append({"target": name, "precision": precision, "measured": False, "reason": reason})
                    continue
                print(f"{precision} on {name}", flush=True)
                rows.append({"target": name, "precision": precision, "measured": True,
                             **measure(pair, target, reps=reps, budget_s=budget_s)})
    ok = all(r["within_tolerance"] for r in rows if r["measured"])
    payload = {
        "benchmark": "harness_noise", "quick": args.quick, "reps": reps, "rounds": ROUNDS,
        "timed_s_per_artifact": budget_s, "tolerance": TOLERANCE, "within_tolerance": ok,
        "model": "edgekd.models.resnet(width=16, blocks=(1,1,1)) on 1x1x16x16, FP32 and PTQ INT8, each exported twice",
        "host": isa_summary(), "host_detail": detect_host().as_dict(),
        "versions": {"python": platform.python_version(),
                     **{p: version(p) for p in ("edgekd", "torch", "onnxruntime", "openvino")}},
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "wall_s": round(time.time() - started, 1), "rows": rows,
    }
    print("\n" + markdown_table(payload))
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
