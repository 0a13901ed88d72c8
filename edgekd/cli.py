"""The `edgekd` command line: parse arguments, call the Python API, map errors to exit codes.

Exit codes (the contract): 0 done; 1 ran but an SLO or parity gate failed; 2 bad input, with a
one-line message on stderr and no traceback unless `--debug`; 3 a crash (edgekd's bug, or the
system failing), never mistaken for 1 or 2; 130 interrupted (Ctrl-C), with the resume hint.
"""

from __future__ import annotations

import errno
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from edgekd.errors import BadInput, EdgeKDError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune, distill, quantize, export and benchmark PyTorch models for edge targets.")
# Piped or redirected output gets wide lines instead of rich's 80-column default, so tables stay readable.
console = Console() if sys.stdout.isatty() else Console(width=200)
err_console = Console(stderr=True)
_state = {"debug": False}
# A checkpoint may name only edgekd's own factories, or one the user trusts (edgekd.factories).
_TRUST_HELP = "Allow checkpoints to name this model factory (module:callable; repeatable)."


def _trust_option():
    return typer.Option([], "--trust-factory", help=_TRUST_HELP)


def _slo_option():
    return typer.Option([], "--slo", help="Budget: [TARGET:]KEY=VALUE replaces a profile's SLO (e.g. latency_p95_ms=4, "
                                          "min_speedup=2, model_size_mb=none); repeatable.")


def _trusted(given: List[str], *named: Optional[str]) -> frozenset:
    """--trust-factory refs, plus the factories this command line names itself (--teacher mymodels:net)."""
    from edgekd.factories import is_factory_ref, user_trusted

    bad = [ref for ref in given if not is_factory_ref(ref)]
    if bad:
        raise BadInput(f"--trust-factory '{bad[0]}': expected a factory reference, package.module:callable")
    return user_trusted([*given, *named])


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
    table.add_column("name", no_wrap=True)  # a name is what the user types next: never cut it
    for col in ("device", "runtime / device", "precision", "available", "why not / notes"):
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

    if json_out is not None:
        _output_file(json_out, "--json")
    if retention is not None and not 0 <= retention < float("inf"):
        raise BadInput(f"--retention {retention}: a metric retention is a ratio >= 0 (student metric / teacher's)")
    result = benchmark(model=model, target=load_target(target), inputs=load_samples(data=data) if data else None,
                       dynamic_dims=parse_dims(dim) or None, warmup=warmup, min_iterations=iterations,
                       time_budget_s=seconds, measure_memory=memory, profile_layers=layers, top_layers=top,
                       metric_retention=retention)
    render_bench(result, console)
    if json_out is not None:
        write_json(json_out, result.to_dict())
    if result.slo.verdict == "fail":
        raise typer.Exit(1)  # "not-measured" is not a failure of the model


def _output_file(path: Path, flag: str) -> Path:
    """Fail before the work, not after it, when a file output cannot be written there."""
    if path.is_dir():
        raise BadInput(f"{flag} {path}: is a directory; give a file path, e.g. {path / 'model.pt'}")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise BadInput(f"{flag} {path}: exists and is not a regular file (a link, pipe or device); edgekd writes "
                       "its outputs only as regular files")
    _creatable(path.parent, flag, path)
    return path


def _output_dir(path: Path, flag: str) -> Path:
    if path.exists() and not path.is_dir():
        raise BadInput(f"{flag} {path}: exists and is not a directory")
    _creatable(path, flag, path)
    return path


def _creatable(folder: Path, flag: str, given: Path) -> None:
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"{flag} {given}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise BadInput(f"{flag} {given}: {existing} is not writable")


@app.command()
def distill(
    teacher: Optional[str] = typer.Option(None, "--teacher", help="module:factory, checkpoint, or model dir."),
    student: str = typer.Option(..., "--student",
                                help="module:factory or checkpoint; also prune:R, and with text data "
                                     "layers:N[,ffn:F][,heads:H]."),
    data: str = typer.Option(..., "--data", help="Dataset spec name/YAML, .npz, or text file."),
    out: Path = typer.Option(Path("runs/distill"), "--out", "-o", help="Output directory."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML with a 'distill:' section."),
    mode: Optional[str] = typer.Option(None, "--mode", help="offline | self | online | multistage."),
    assistant: Optional[str] = typer.Option(None, "--assistant", help="Teacher-assistant model (multistage)."),
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the soft (KD) term vs hard-label CE."),
    no_kd: bool = typer.Option(False, "--no-kd", help="Train the undistilled baseline (CE only)."),
    labeled_fraction: Optional[float] = typer.Option(None, "--labeled-fraction", help="Keep labels on this fraction."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last epoch checkpoint in --out."),
    trust_factory: List[str] = _trust_option(),
):
    """Knowledge distillation only: train the FP32 student, write OUT/student.pt."""
    from edgekd.checkpoint import LoadedModel, load_model, save_checkpoint
    from edgekd.data import load_data
    from edgekd.distill import config_from_mapping, distill as run_distill
    from edgekd.families import family_for
    from edgekd.io import write_json
    from edgekd.recipe import PruneSection, load_recipe
    from edgekd.student_spec import parse_student

    _output_dir(out, "--out")
    settings = dict(load_recipe(recipe, data=data).distill) if recipe else {}
    flags = {"mode": mode, "epochs": epochs, "lr": lr, "temperature": temperature, "alpha": alpha, "seed": seed}
    settings.update({k: v for k, v in flags.items() if v is not None})
    if no_kd:
        settings["kd"] = False
    source_name = str(recipe or "command line")
    config = config_from_mapping(settings, source=source_name)  # checked before any model is built
    trusted = _trusted(trust_factory, teacher, student, assistant)
    dataset = load_data(data, labeled_fraction=labeled_fraction)
    build = {"trusted_factories": trusted, "seed": config.seed}  # the same command builds the same initial weights
    teacher_loaded = load_model(teacher, **build) if teacher else None
    if parse_student(student) is not None:  # a student made from the teacher, by its family
        if teacher_loaded is None:
            raise BadInput(f"--student {student}: a student made from the teacher needs --teacher")
        made = family_for(model=teacher_loaded.model, data=dataset, label=f"--teacher {teacher}").make_student(
            student, channel_multiple=1, prune_settings=PruneSection(), seed=config.seed)
        source = LoadedModel(made.model, teacher_loaded.ref, teacher_loaded.transforms + [made.transform], {})
    else:
        source = load_model(student, **build)
    reference = teacher_loaded or source
    family = family_for(model=reference.model, data=dataset, label=teacher or student)
    if teacher_loaded is not None:  # a teacher made for other data fails here, naming both
        family.check_model_takes_data(f"--teacher {teacher}", f"--data '{data}'")
    if not config.kd and not family.trains_without_teacher():
        raise BadInput(f"--no-kd with --data {dataset.name}: unlabeled data gives no training signal without the "
                       "teacher")
    config = family.distill_config(settings, source=source_name, student=source.model)
    result = run_distill(student=source.model, teacher=teacher_loaded.model if teacher_loaded else None,
                         assistant=load_model(assistant, **build).model if assistant else None, data=dataset,
                         config=config, out_dir=out, resume=resume)
    save_checkpoint(out / "student.pt", result.model, ref=source.ref, transforms=source.transforms,
                    meta={"best_epoch": result.best_epoch, "metrics": result.metrics})
    write_json(out / "distill.json", {"history": result.history, "metrics": result.metrics})
    console.print(f"best epoch {result.best_epoch}: {result.metrics}")
    console.print(f"wrote {out / 'student.pt'}")


@app.command()
def prune(
    model: str = typer.Argument(..., help="module:factory or checkpoint to prune."),
    ratio: float = typer.Option(..., "--ratio", help="Fraction of channels/heads/neurons to remove, in (0, 1)."),
    data: str = typer.Option(..., "--data", help="Data for input shapes, Taylor importance and KD recovery."),
    out: Path = typer.Option(Path("runs/prune/pruned.pt"), "--out", "-o", help="Output checkpoint (.pt)."),
    target: Optional[str] = typer.Option(None, "--target", help="Round channels to this profile's channel_multiple."),
    channel_multiple: Optional[int] = typer.Option(None, "--channel-multiple", help="Override the rounding."),
    importance: str = typer.Option("magnitude", "--importance", help="magnitude | bn_scale | taylor."),
    global_pruning: bool = typer.Option(False, "--global", help="One global ranking instead of per-layer ratios."),
    steps: int = typer.Option(1, "--steps", help="Iterative pruning steps."),
    recovery_epochs: int = typer.Option(0, "--recovery-epochs", help="KD epochs against the unpruned model per step."),
    ignore: List[str] = typer.Option([], "--ignore", help="Layer to leave unpruned (repeatable)."),
    trust_factory: List[str] = _trust_option(),
):
    """Structured pruning (+ optional KD recovery): a smaller model, saved as a checkpoint and a .pt2 program."""
    from edgekd.checkpoint import load_model, save_checkpoint
    from edgekd.data import load_data
    from edgekd.io import write_json
    from edgekd.families import family_for
    from edgekd.prune import save_program
    from pydantic import ValidationError

    from edgekd.recipe import PruneSection
    from edgekd.targets import load_target, validation_message

    _output_file(out, "--out")
    if channel_multiple is not None and channel_multiple < 1:
        raise BadInput(f"--channel-multiple {channel_multiple}: must be a whole number >= 1")
    if recovery_epochs < 0:
        raise BadInput(f"--recovery-epochs {recovery_epochs}: must be >= 0")
    if not 0 < ratio < 1:
        raise BadInput(f"--ratio {ratio:g}: the fraction of channels/heads/neurons to remove must be in (0, 1)")
    dataset = load_data(data)  # cheap checks first: a missing file before any model is built
    source = load_model(model, trusted_factories=_trusted(trust_factory, model))
    family = family_for(model=source.model, data=dataset, label=model)
    try:
        settings = PruneSection(importance=importance, global_pruning=global_pruning, steps=steps,
                                recovery_epochs=recovery_epochs, ignore_layers=list(ignore))
    except ValidationError as err:
        raise BadInput(validation_message("command line", err).replace("key '", "option '--").replace("_", "-"))
    result = family.make_student(f"prune:{ratio}", prune_settings=settings, seed=0,
                                 channel_multiple=channel_multiple or (load_target(target).channel_multiple if target else 1))
    example = family.example_input()
    save_checkpoint(out, result.model, ref=source.ref, transforms=source.transforms + [result.transform],
                    meta={"prune": result.report})
    program = save_program(model=result.model, example_inputs=example, path=out.with_suffix(".pt2"))
    write_json(out.with_suffix(".json"), result.report)
    before, after = result.report["before"], result.report["after"]
    console.print(f"params {before['params']:,} -> {after['params']:,} ({result.report['params_ratio']:.2f}x), "
                  f"MACs {before['macs']:,} -> {after['macs']:,} ({result.report['macs_ratio']:.2f}x)")
    console.print(f"wrote {out} (checkpoint), {program} (code-free program), {out.with_suffix('.json')} (report)")


@app.command()
def quantize(
    model: str = typer.Argument(..., help="module:factory or checkpoint of the FP32 model."),
    data: str = typer.Option(..., "--data", help="Calibration / QAT data."),
    target: str = typer.Option("x86-cpu-onnxruntime", "--target", help="Profile whose INT8 scheme to follow."),
    out: Path = typer.Option(Path("runs/quantize/quantized.pt"), "--out", "-o", help="Output checkpoint (.pt)."),
    mode: str = typer.Option("qat", "--mode", help="qat (QAT+KD) or ptq (calibration only)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="KD teacher for QAT (default: the FP32 model)."),
    epochs: int = typer.Option(4, "--epochs", help="QAT epochs."),
    lr: float = typer.Option(1e-4, "--lr", help="QAT learning rate."),
    observer: str = typer.Option("minmax", "--observer", help="minmax | percentile | mse."),
    latency_aware: bool = typer.Option(True, "--latency-aware/--no-latency-aware",
                                       help="Keep float the layer kinds INT8 slows down on the target."),
    resume: bool = typer.Option(False, "--resume"),
    trust_factory: List[str] = _trust_option(),
):
    """PTQ or QAT+KD to the target's INT8 scheme; writes a fake-quant checkpoint."""
    from edgekd.checkpoint import load_model, save_checkpoint
    from edgekd.data import load_data
    from edgekd.distill import evaluate
    from edgekd.families import family_for
    from edgekd.quant import QuantConfig, checkpoint_transform, qat_distill_config
    from edgekd.targets import availability, load_target
    from edgekd.tune import quantize as run_quantize

    if mode not in ("qat", "ptq"):
        raise BadInput(f"--mode '{mode}': expected qat or ptq")
    _output_file(out, "--out")
    profile = load_target(target)
    trusted = _trusted(trust_factory, model, teacher)
    dataset = load_data(data)  # cheap checks first: a missing file before any model is built
    source = load_model(model, trusted_factories=trusted)
    teacher_model = load_model(teacher, trusted_factories=trusted).model if teacher else None
    family = family_for(model=source.model, data=dataset, label=model)
    measurable = latency_aware and availability(profile)[0] and family.times_layer_choices()
    kd = family.qat_distill_config(qat_distill_config(epochs=epochs, lr=lr, collate=family.collate()),
                                   student=source.model)
    config = QuantConfig.for_target(profile, mode=mode, observer=observer, latency_aware=measurable, distill=kd)
    result = run_quantize(model=source.model, data=dataset, config=config, teacher=teacher_model,
                          target=profile if measurable else None, example_inputs=family.example_input(),
                          out_dir=out.parent / f"{out.stem}-work", resume=resume)
    kept = [] if result.kept_float else [checkpoint_transform(result.model)]
    metrics = evaluate(result.model, dataset.x_val, dataset.y_val, task=dataset.task, collate=family.collate(),
                       teacher=teacher_model or source.model)  # recorded for the export gate's check
    save_checkpoint(out, result.model, ref=source.ref, transforms=source.transforms + kept,
                    meta={"quantization": result.report.as_dict(), "kept_float": result.kept_float, "metrics": metrics})
    console.print(result.report.summary())
    if result.kept_float:
        console.print(f"INT8 was slower than float for every layer kind on {profile.name}: the model stays float "
                      "(--no-latency-aware quantizes anyway)")
    console.print(f"wrote {out}")


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="An edgekd checkpoint (.pt)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    data: str = typer.Option(..., "--data", help="Held-out data for the parity gate (and the input shape)."),
    formats: str = typer.Option("onnx,openvino", "--format", help="Comma-separated: onnx, openvino."),
    target: Optional[str] = typer.Option(None, "--target",
                                         help="Use this profile's static_shapes setting (and fp16 precision)."),
    static_shapes: bool = typer.Option(False, "--static-shapes", help="Fix every input shape."),
    name: str = typer.Option("model", "--name", help="Artifact file stem."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="fp32 or fp16 for a float model (default: fp16 if the --target profile runs fp16)."),
    trust_factory: List[str] = _trust_option(),
):
    """ONNX (QDQ where quantized, FP16 on request) and OpenVINO IR, each parity-checked; exit 1 if a gate fails."""
    from edgekd.checkpoint import load_checkpoint
    from edgekd.data import load_data
    from edgekd.export import export as run_export
    from edgekd.families import family_for
    from edgekd.quant import FakeQuantizer
    from edgekd.targets import load_target

    _output_dir(out, "--out")
    wanted = tuple(f.strip() for f in formats.split(",") if f.strip())
    unknown = [f for f in wanted if f not in ("onnx", "openvino")]
    if unknown or not wanted:
        raise BadInput(f"--format '{formats}': expected a comma-separated list of onnx, openvino")
    dataset = load_data(data)
    profile = load_target(target) if target else None
    static = static_shapes or (profile.static_shapes if profile else False)
    loaded = load_checkpoint(checkpoint, trusted_factories=_trusted(trust_factory))
    model = loaded.model
    if precision is None:  # an fp16 profile asks for FP16, of a float model; a fake-quant one exports INT8
        quantized = any(isinstance(m, FakeQuantizer) for m in model.modules())
        precision = "fp16" if profile and profile.precision == "fp16" and not quantized else "fp32"
    family = family_for(model=model, data=dataset, label=str(checkpoint))
    result = run_export(model=family.export_view(model), out_dir=out, formats=wanted, name=name, precision=precision,
                        recorded_accuracy=_recorded_accuracy(loaded.meta), **family.export_inputs(static_shapes=static))
    for runtime, figures in result.parity.items():
        top1 = f"top-1 agreement {figures['top1_agreement']:.4f}, " if "top1_agreement" in figures else ""
        console.print(f"{runtime}: {top1}cosine {figures['cosine']:.6f}, INT8 executed: {result.int8_executed.get(runtime)}")
    console.print(f"wrote {result.onnx}" + (f" and {result.openvino_xml}" if result.openvino_xml else "")
                  + (" (FP16)" if result.precision == "fp16" else ""))


def _recorded_accuracy(meta: dict) -> Optional[float]:
    """The validation accuracy training recorded in a checkpoint (edgekd distill / quantize write it)."""
    value = (meta.get("metrics") or {}).get("accuracy") if isinstance(meta.get("metrics"), dict) else None
    return float(value) if isinstance(value, (int, float)) and 0 <= value <= 1 else None


@app.command()
def profile(
    model: str = typer.Argument(..., help="The teacher: module:factory, checkpoint, or HF model dir."),
    target: List[str] = typer.Option(..., "--target", "-t", help="Target profile name or YAML (repeatable)."),
    data: str = typer.Option("digits16", "--data", help="Data the model takes (shapes, calibration, text)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the profile as JSON to this file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder for profile.json and budget.png."),
    margin: float = typer.Option(0.10, "--margin", help="Share of each SLO a choice keeps spare."),
    slo: List[str] = _slo_option(),
    trust_factory: List[str] = _trust_option(),
):
    """The most capable student that fits each target's SLOs, from latency measured on its runtime; exit 1 if none fits."""
    from edgekd.checkpoint import load_model
    from edgekd.data import load_data
    from edgekd.profile import profile as run_profile, write_profile
    from edgekd.report.plots import plot_budget
    from edgekd.targets import apply_slo_overrides, load_target, parse_slo_flags

    if json_out is not None:
        _output_file(json_out, "--json")
    if out is not None:
        _output_dir(out, "--out")
    profiles = apply_slo_overrides([load_target(name) for name in target], parse_slo_flags(slo), source="--slo")
    dataset = load_data(data)  # cheap checks first: a missing file before any model is built
    teacher = load_model(model, trusted_factories=_trusted(trust_factory, model))
    result = run_profile(teacher=teacher, data=dataset, targets=profiles, margin=margin, model_name=model)
    _print_profile(result)
    if json_out is not None:
        write_profile(result, json_out)
    if out is not None:
        write_profile(result, out / "profile.json")
        plot_budget(path=out / "budget.png", targets=result.as_dict()["targets"])
        console.print(f"wrote {out / 'profile.json'} and {out / 'budget.png'}")
    if not result.all_fit:
        raise typer.Exit(1)


def _print_profile(result) -> None:
    fmt = (lambda v: "-" if v is None else f"{v:.3f}")
    for entry in result.targets:
        title = f"{entry.name}: " + (", ".join(f"{k} {'>=' if k.startswith('min_') else '<='} {v:g}"
                                               for k, v in entry.budget["limits"].items()) or "no SLO")
        table = Table(title=title + ("" if entry.available else f"  (estimated: {entry.reason})"))
        for col in ("student", "precision", "params", "MACs", "p50 ms", "p50 IQR", "p95 ms", "speed-up", "peak MB",
                    "size MB", "fits"):
            table.add_column(col, justify="left" if col in ("student", "precision", "fits") else "right")
        for c in entry.candidates:
            verdict = "yes" if c.fits else ("estimate" if c.estimated else "no: " + ", ".join(c.misses))
            marker = " *" if c.student == entry.chosen else ""
            band = "-" if c.latency_spread_ms is None else "-".join(f"{v:.3f}" for v in c.latency_spread_ms)
            table.add_row(c.student + marker, c.precision, f"{c.params:,}", f"{c.macs:,}", fmt(c.latency_p50_ms), band,
                          fmt(c.latency_p95_ms), "-" if c.speedup is None else f"{c.speedup:.2f}x",
                          fmt(c.peak_memory_mb), f"{c.model_size_mb:.3f}", verdict)
        console.print(table)
        console.print(f"{entry.name}: {entry.why}", markup=False)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="A finished run directory (holds report.json).")):
    """Re-render report.md / report.html / plots from report.json."""
    from edgekd.report import render_report

    for path in render_report(run_dir=run_dir).values():
        console.print(f"wrote {path}")


@app.command()
def check(run_dir: Path = typer.Argument(..., help="A finished run directory (holds manifest.json)."),
          teacher: Optional[str] = typer.Option(
              None, "--teacher", help="Re-check the teacher: the model reference to load (never read from the manifest)."),
          as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
          trust_factory: List[str] = _trust_option()):
    """Verify artifact hashes against manifest.json; 'stale' if the teacher or data changed.

    Nothing the manifest names is imported or called: a downloaded run is checked without running
    its code. The teacher is re-checked only when you name it with --teacher."""
    from edgekd.checkpoint import load_model, model_sha256
    from edgekd.data import load_data
    from edgekd.report import check_run, read_manifest

    manifest = read_manifest(run_dir=run_dir)
    teacher_sha = data_sha = None
    if teacher is None:
        err_console.print("teacher not re-checked: name it with --teacher (edgekd never loads the model a "
                          "manifest names)", markup=False)
    else:
        teacher_sha = model_sha256(load_model(teacher, trusted_factories=_trusted(trust_factory, teacher)).model)
    data_ref = manifest["data"].get("ref") or manifest["data"].get("name")
    try:
        data_sha = load_data(str(data_ref)).sha256 if data_ref else None
    except BadInput as err:
        err_console.print(f"data not re-checked: {err}", markup=False)
    result = check_run(run_dir=run_dir, current_teacher_sha256=teacher_sha, current_data_sha256=data_sha)
    if as_json:
        print(json.dumps(result.as_dict(), indent=2))
    else:
        colour = {"ok": "green", "stale": "yellow"}.get(result.status, "red")
        unchecked = f"; {' and '.join(result.unchecked_inputs)} NOT re-checked" if result.unchecked_inputs else ""
        console.print(f"[bold {colour}]{result.status}[/]: {len(result.verified)} artifacts verified{unchecked}")
        for problem in result.problems:
            console.print(f"  - {problem}", markup=False)
    raise typer.Exit(result.exit_code)


@app.command()
def compress(
    recipe: Optional[Path] = typer.Argument(None, help="Recipe YAML (default: the embedded example)."),
    teacher: Optional[str] = typer.Option(None, "--teacher", help="module:factory, checkpoint, or HF model dir."),
    student: Optional[str] = typer.Option(None, "--student", help="module:factory, checkpoint, prune:R, "
                                                                  "layers:N[,ffn:F][,heads:H] or auto."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset spec name/YAML, .npz, or text file."),
    target: List[str] = typer.Option([], "--target", "-t", help="Target profile name or YAML (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Run directory."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override distill.epochs."),
    qat_epochs: Optional[int] = typer.Option(None, "--qat-epochs", help="Override quant.epochs."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Override the seed."),
    labeled_fraction: Optional[float] = typer.Option(None, "--labeled-fraction",
                                                     help="Keep labels on this fraction; the rest trains by KD alone."),
    slo: List[str] = _slo_option(),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    trust_factory: List[str] = _trust_option(),
):
    """The whole pipeline: prune, distill, QAT+KD, export, benchmark per target, report."""
    from edgekd.pipeline import compress as run_compress
    from edgekd.recipe import load_recipe
    from edgekd.targets import parse_slo_flags

    resolved = load_recipe(recipe, teacher=teacher, student=student, data=data, targets=list(target), out=out,
                           seed=seed, labeled_fraction=labeled_fraction, distill_epochs=epochs,
                           quant_epochs=qat_epochs, slo_flags=parse_slo_flags(slo))
    if trust_factory:
        _trusted(trust_factory)  # validates the refs
        resolved = resolved.model_copy(update={"trust_factories": [*resolved.trust_factories, *trust_factory]})
    _output_dir(Path(resolved.out), "--out")
    result = run_compress(recipe=resolved, resume=resume, console=err_console)
    _print_summary(result.report)
    console.print(f"run directory: {result.out}  (report.md, report.html, report.json, manifest.json)")
    raise typer.Exit(result.exit_code)


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)  # a baseline the export gate rejected has no figure


def _print_summary(report: dict) -> None:
    targets = [name for name in report["ablation"][0]["latency_p50_ms"]]
    table = Table(title="Ablation (exported artifacts, same held-out data)")
    table.add_column("variant")
    table.add_column(report["ablation"][0]["metric"]["name"], justify="right")
    table.add_column("params", justify="right")
    table.add_column("size MB", justify="right")
    generative = any("generation" in entry for entry in report["targets"])  # a causal LM: per decoded token
    for name in targets:
        table.add_column(f"{'ms/token' if generative else 'p50 ms'} {name}", justify="right")
    for index, row in enumerate(report["ablation"] + report.get("deployables", [])):
        if index == len(report["ablation"]):
            table.add_section()  # below: students made for particular targets (FP16, another INT8 scheme)
        table.add_row(row["variant"] + (" (gate failed)" if row.get("verdict") == "failed" else ""),
                      _cell(row["metric"]["value"], ".4f"), f"{row['params']:,}", _cell(row["size_mb"], ".3f"),
                      *[_cell(row["latency_p50_ms"].get(t), ".3f") for t in targets])
    console.print(table)
    verdicts = Table(title="Deployable student against each target's SLOs")
    mixed = len({entry.get("variant") for entry in report["targets"]}) > 1  # then say who each target deploys
    timing = ("TTFT p95 ms", "tokens/s", "speed-up") if generative else ("p50 ms", "p95 ms")
    for col in ("target", *(("deploys",) if mixed else ()), *timing, "peak MB", "verdict"):
        verdicts.add_column(col)
    for entry in report["targets"]:
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")
        if generative:
            gen = entry.get("generation") or {}
            figures = [fmt((gen.get("ttft_ms") or {}).get("p95")), fmt(gen.get("decode_tokens_per_s")),
                       fmt(entry.get("decode_speedup_vs_teacher"))]
        else:
            lat = entry.get("latency_ms") or {}
            figures = [fmt(lat.get("p50")), fmt(lat.get("p95"))]
        verdicts.add_row(entry["name"], *((entry.get("variant") or "-",) if mixed else ()),
                         *figures, fmt(entry.get("peak_memory_mb")),
                         entry["slo"]["verdict"] + (f" ({entry['reason']})" if not entry["available"] else
                                                    f" ({entry['slo']['reason']})" if entry["slo"]["verdict"] == "fail"
                                                    else ""))
    console.print(verdicts)
    for note in report.get("notes") or []:
        console.print(f"note: {note}", markup=False)


# A path the system refuses (a directory where a file goes, no permission, ...): the user's to fix.
_PATH_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.ENAMETOOLONG}


def _error(message: str) -> None:
    """One line on stderr; the message is printed verbatim (shapes like [batch, 1, 8, 8] are not markup)."""
    err_console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


def _interrupted() -> int:
    err_console.print("interrupted: nothing half-written is kept; compress, distill and quantize continue from "
                      "their finished stages and checkpoints when re-run with --resume", markup=False)
    return 130


def _crashed(err: BaseException) -> int:
    """Exit 3: neither "bad input" (2) nor "a gate failed" (1). An environment fault (a full disk) is
    named as such; anything else is edgekd's own bug."""
    detail = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
    if isinstance(err, (OSError, MemoryError)):
        _error(f"the system failed: {detail} (rerun with --debug for the traceback)")
    else:
        _error(f"internal error: {detail}. This is a bug in edgekd; rerun with --debug for the traceback "
               "and report it")
    return CRASH_EXIT


CRASH_EXIT = 3


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
        _error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as err:
        if debug:
            raise
        if err.errno not in _PATH_ERRORS:  # a full disk or an I/O fault is not bad input
            return _crashed(err)
        _error(f"{err.filename}: {err.strerror}" if err.filename else str(err))
        return 2
    except (typer.Exit, SystemExit) as stop:
        code = getattr(stop, "exit_code", None)
        code = code if code is not None else getattr(stop, "code", 0)
        if isinstance(code, str):  # sys.exit("message"), e.g. from a user's factory: not a gate verdict
            _error(f"stopped: {code}")
            return CRASH_EXIT
        return int(code or 0)
    except Exception as err:
        # Typer's (vendored) click reports usage errors as exceptions with show() and exit_code.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            return 2
        if type(err).__name__ == "Abort":  # click's form of Ctrl-C
            return _interrupted()
        if debug:
            raise
        return _crashed(err)
    if returned == 130:  # click turned a Ctrl-C into this code without a word
        return _interrupted()
    return returned if isinstance(returned, int) else 0


if __name__ == "__main__":
    sys.exit(main())
