"""The `edgekd` command line: parse arguments, call the Python API, map errors to exit codes.

Exit codes (the contract): 0 done; 1 ran but an SLO or parity gate failed; 2 bad input, with a
one-line message on stderr and no traceback unless `--debug`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from edgekd.errors import BadInput, EdgeKDError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune, distill, quantize, export and benchmark PyTorch models for edge targets.")
console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors.")):
    _state["debug"] = debug


@app.command()
def targets(as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")):
    """List target profiles and whether each device is present on this host."""
    from edgekd.host import detect_host, isa_summary
    from edgekd.targets import availability, list_targets

    host = detect_host()
    rows = []
    for target in list_targets():
        available, reason, warnings = availability(target, host)
        rows.append({
            "name": target.name, "device": target.device, "runtime": target.runtime,
            "runtime_device": target.runtime_device, "precision": target.precision,
            "available": available, "reason": reason, "warnings": warnings,
        })
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Target profiles on {isa_summary(host)}")
    for col in ("name", "device", "runtime / device", "precision", "available", "why not / notes"):
        table.add_column(col)
    for row in rows:
        note = row["reason"] or "; ".join(row["warnings"])
        table.add_row(row["name"], row["device"], f"{row['runtime']} / {row['runtime_device']}", row["precision"],
                      "[green]yes[/]" if row["available"] else "[red]no[/]", note)
    console.print(table)


@app.command()
def bench(
    model: Path = typer.Argument(..., help="An .onnx model or an OpenVINO .xml IR."),
    target: str = typer.Option(..., "--target", "-t", help="Target profile name or path to a profile YAML."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON to this file."),
    data: Optional[str] = typer.Option(None, "--data", help="Real samples: a dataset reference, or an .npz of named inputs."),
    dim: List[str] = typer.Option([], "--dim", help="Dynamic axis size, NAME=SIZE or INPUT:AXIS=SIZE (repeatable)."),
    seconds: float = typer.Option(3.0, "--time", help="Time budget of the timed loop, in seconds."),
    iterations: int = typer.Option(100, "--iterations", help="Minimum number of timed runs."),
    warmup: int = typer.Option(20, "--warmup", help="Untimed warm-up runs."),
    memory: bool = typer.Option(True, "--memory/--no-memory", help="Measure peak memory in an isolated process."),
    layers: bool = typer.Option(True, "--layers/--no-layers", help="Profile the slowest layers."),
    top: int = typer.Option(10, "--top", help="How many slowest layers to show."),
    retention: Optional[float] = typer.Option(None, "--retention", help="Metric retention to check against the SLO."),
):
    """Latency, throughput, memory, per-layer time and SLO verdict of one artifact on one target."""
    from edgekd.bench import benchmark, load_samples, parse_dims, render_bench
    from edgekd.io import write_json
    from edgekd.targets import load_target

    result = benchmark(model=model, target=load_target(target), inputs=load_samples(data=data) if data else None,
                       dynamic_dims=parse_dims(dim) or None, warmup=warmup, min_iterations=iterations,
                       time_budget_s=seconds, measure_memory=memory, profile_layers=layers, top_layers=top,
                       metric_retention=retention)
    render_bench(result, console)
    if json_out is not None:
        write_json(json_out, result.to_dict())
    if result.slo.verdict == "fail":
        raise typer.Exit(1)  # "not-measured" is not a failure of the model


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run directory (holds report.json).")):
    """Re-render report.md / report.html / plots from report.json."""
    from edgekd.report import render_report

    for path in render_report(run_dir=run_dir).values():
        console.print(f"wrote {path}")


@app.command()
def check(run_dir: Path = typer.Argument(..., help="A finished run directory (holds manifest.json)."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON.")):
    """Verify artifact hashes against manifest.json; 'stale' if the teacher or data changed."""
    from edgekd.checkpoint import load_model, model_sha256
    from edgekd.data import load_data
    from edgekd.report import check_run, read_manifest

    manifest = read_manifest(run_dir=run_dir)
    teacher_sha = data_sha = None
    try:
        teacher_sha = model_sha256(load_model(manifest["teacher"]["ref"]).model)
    except BadInput as err:
        err_console.print(f"teacher not re-checked: {err}")
    try:
        data_sha = load_data(manifest["data"].get("ref", manifest["data"]["name"])).sha256
    except BadInput as err:
        err_console.print(f"data not re-checked: {err}")
    result = check_run(run_dir=run_dir, current_teacher_sha256=teacher_sha, current_data_sha256=data_sha)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        colour = {"ok": "green", "stale": "yellow"}.get(result.status, "red")
        console.print(f"[bold {colour}]{result.status}[/]: {len(result.verified)} artifacts verified")
        for problem in result.problems:
            console.print(f"  - {problem}")
    raise typer.Exit(result.exit_code)


@app.command()
def compress(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the embedded example)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="module:factory, checkpoint, or HF model dir."),
    student: Optional[str] = typer.Option(None, "--student", help="module:factory, checkpoint, prune:R or layers:N."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset spec name/YAML, .npz, or text file."),
    target: List[str] = typer.Option([], "--target", "-t", help="Target profile name or YAML (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override distill.epochs."),
    qat_epochs: Optional[int] = typer.Option(None, "--qat-epochs", help="Override quant.epochs."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
):
    """The whole pipeline: prune, distill, QAT+KD, export, benchmark per target, report."""
    from edgekd.pipeline import compress as run_compress
    from edgekd.recipe import load_recipe

    resolved = load_recipe(recipe, teacher=teacher, student=student, data=data, targets=list(target), out=out,
                           seed=seed, distill_epochs=epochs, quant_epochs=qat_epochs)
    result = run_compress(recipe=resolved, resume=resume, console=err_console)
    _print_summary(result.report)
    console.print(f"run directory: {result.out}  (report.md, report.html, report.json, manifest.json)")
    raise typer.Exit(result.exit_code)


def _print_summary(report: dict) -> None:
    targets = [name for name in report["ablation"][0]["latency_p50_ms"]]
    table = Table(title="Ablation (exported artifacts, same held-out data)")
    table.add_column("variant")
    table.add_column(report["ablation"][0]["metric"]["name"], justify="right")
    table.add_column("params", justify="right")
    table.add_column("size MB", justify="right")
    for name in targets:
        table.add_column(f"p50 ms {name}", justify="right")
    for row in report["ablation"]:
        table.add_row(row["variant"], f"{row['metric']['value']:.4f}", f"{row['params']:,}", f"{row['size_mb']:.3f}",
                      *[f"{row['latency_p50_ms'][t]:.3f}" for t in targets])
    console.print(table)
    verdicts = Table(title="Deployable student against each target's SLOs")
    for col in ("target", "p50 ms", "p95 ms", "peak MB", "verdict"):
        verdicts.add_column(col)
    for entry in report["targets"]:
        lat = entry.get("latency_ms") or {}
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        verdicts.add_row(entry["name"], fmt(lat.get("p50")), fmt(lat.get("p95")), fmt(entry.get("peak_memory_mb")),
                         entry["slo"]["verdict"] + ("" if entry["available"] else f" ({entry['reason']})"))
    console.print(verdicts)


def main(argv: Optional[List[str]] = None) -> int:
    """Console-script entry point: run the app, turning edgekd errors into exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        # Without standalone mode, click returns a command's typer.Exit code instead of exiting.
        returned = app(args=args, standalone_mode=False)
    except EdgeKDError as err:
        if debug:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        err_console.print("interrupted: finished stages and checkpoints are kept; re-run with --resume")
        return 130
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", None)
        return int(code if code is not None else getattr(stop, "code", 0) or 0)
    except Exception as err:
        # Typer's (vendored) click reports usage errors as exceptions with show() and exit_code.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return 2
        if type(err).__name__ == "Abort":
            return 130
        raise
    return returned if isinstance(returned, int) else 0


if __name__ == "__main__":
    sys.exit(main())
