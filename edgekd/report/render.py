"""Render a run's report.json into report.md, a self-contained report.html and plots/*.png.

Everything here is read from report.json (and manifest.json, if present) alone, so a copy of
the run directory re-renders on any machine without the models, the data or a runtime.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Callable

from edgekd.errors import BadInput
from edgekd.io import atomic_path
from edgekd.report import plots
from edgekd.report.document import Block, Bullets, Heading, Image, Paragraph, Table, to_html, to_markdown
from edgekd.report.manifest import MANIFEST_NAME, read_manifest
from edgekd.report.schema import DEPLOYABLE, TEACHER_FP32, parse_report

REPORT_NAME = "report.json"
_MISSING = "—"
_TOP_LAYERS_EXPLAINED = 5
_MAX_CLASS_ROWS = 50


# ---------------------------------------------------------------- loading and shape checks

def load_report(*, run_dir: Path) -> dict:
    """Read run_dir/report.json and check it against the typed schema the writer used (BadInput names
    the key); the renderer then reads the checked dict."""
    source = Path(run_dir) / REPORT_NAME
    if not source.is_file():
        raise BadInput(f"{source}: not found; `edgekd report` re-renders the report.json of a finished run")
    try:
        report = json.loads(source.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadInput(f"{source}: not valid JSON ({err})") from None
    parse_report(report, source=str(source))
    return report


# ---------------------------------------------------------------- formatting

def _num(value) -> str:
    """Human-scaled number: 9,000 / 12.3 / 1.25 / 0.0213; '—' for missing."""
    if value is None:
        return _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return "0" if value == 0 else f"{value:.3g}"


def _metric(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _num(value)


def _precise(value) -> str:
    """Four significant digits: agreement 0.9998 must not round to 1."""
    return f"{value:.4g}" if isinstance(value, float) else _num(value)


def _pct(value) -> str:
    return f"{value:.1%}" if isinstance(value, (int, float)) and not isinstance(value, bool) else _num(value)


def _unit(key: str) -> str:
    return " ms" if key.endswith("_ms") else " MB" if key.endswith("_mb") else ""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_margin(check: dict) -> str:
    """How far a check is from its limit, in the direction that matters ("min_" keys are floors)."""
    key, limit, value = check["key"], check.get("limit"), check.get("value")
    if not (_is_number(limit) and _is_number(value)):
        return _MISSING
    unit = _unit(key)
    if key.startswith("min_"):
        return f"{_num(value - limit)}{unit} above floor" if value >= limit else f"short by {_num(limit - value)}{unit}"
    if value <= limit:
        return f"{(limit - value) / limit:.0%} headroom" if limit else "at limit"
    over = f"over by {_num(value - limit)}{unit}"
    return over + (f" ({(value - limit) / limit:.0%})" if limit else "")


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _flatten(mapping: dict, prefix: str = "") -> list[str]:
    items = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append(f"{prefix}{key}: {_num(value)}")
    return items


def _generic(value) -> list[Block]:
    """Blocks for a section whose shape the renderer does not know: scalars as bullets, lists of objects as tables."""
    if isinstance(value, dict):
        scalars = {k: v for k, v in value.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        blocks: list[Block] = [Bullets(_flatten(scalars))] if scalars else []
        for key, rows in value.items():
            if key not in scalars:
                blocks += [Paragraph(f"{key}:"), *_generic(rows)]
        return blocks
    if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
        headers = list(dict.fromkeys(key for row in value for key in row))
        return [Table(headers, [[_num(row.get(h)) for h in headers] for row in value])]
    return [Paragraph(str(value))]


# ---------------------------------------------------------------- derived figures

def _generates(report: dict) -> bool:
    """A report of a model that generates text (causal LMs): its targets carry generation figures."""
    return any(t.get("generation") for t in report["targets"])


def _ablation_row(report: dict, variant: str) -> dict | None:
    return next((row for row in report["ablation"] if row["variant"] == variant), None)


def _retention(report: dict) -> float | None:
    """report["retention"], or the INT8 student's metric over the FP32 teacher's from the ablation."""
    if _is_number(report.get("retention")):
        return report["retention"]
    teacher, student = _ablation_row(report, TEACHER_FP32), _ablation_row(report, DEPLOYABLE)
    if teacher and student and _is_number(teacher["metric"]["value"]) and _is_number(student["metric"]["value"]) \
            and teacher["metric"]["value"]:
        return student["metric"]["value"] / teacher["metric"]["value"]
    return None


def _own_retention(report: dict, variant: str) -> float | None:
    """A student made for particular targets (report["deployables"]): its metric over the FP32 teacher's."""
    teacher = _ablation_row(report, TEACHER_FP32)
    row = next((r for r in report.get("deployables") or [] if r["variant"] == variant), None)
    if teacher and row and _is_number(teacher["metric"]["value"]) and _is_number(row["metric"]["value"]) \
            and teacher["metric"]["value"] and "@" in variant:
        return row["metric"]["value"] / teacher["metric"]["value"]
    return None


def _speedups(report: dict) -> dict[str, float]:
    """report["speedup_vs_teacher"], or teacher p50 / student p50 per target from the ablation."""
    if isinstance(report.get("speedup_vs_teacher"), dict):
        return {k: v for k, v in report["speedup_vs_teacher"].items() if _is_number(v)}
    teacher, student = _ablation_row(report, TEACHER_FP32), _ablation_row(report, DEPLOYABLE)
    if not (teacher and student):
        return {}
    t_lat, s_lat = teacher.get("latency_p50_ms") or {}, student.get("latency_p50_ms") or {}
    return {name: t_lat[name] / s_lat[name] for name in t_lat
            if _is_number(t_lat[name]) and _is_number(s_lat.get(name)) and s_lat[name] > 0}


def _runs_as(report: dict, variant: str) -> tuple[str | None, str | None] | None:
    """What a deployed student really runs, from its ablation / deployables row, as (precision, detail):
    ("INT8", None), ("FP32", None), ("INT8", "18 of 20 layers INT8"), or (None, "mostly float: 2 of 20 layers
    INT8"): a quantized student that keeps most layers float is never called INT8. None without a row."""
    row = next((r for r in report["ablation"] + (report.get("deployables") or []) if r["variant"] == variant), None)
    if not row or not row.get("precision"):
        return None
    precision = str(row["precision"]).upper()
    layers = row.get("int8_layers") or {}
    int8, total = layers.get("int8"), layers.get("total")
    if precision != "INT8" or not (_is_number(int8) and _is_number(total)) or int8 >= total:
        return precision, None
    if 2 * int8 < total:
        return None, f"mostly float: {int8} of {total} layers INT8"
    return precision, f"{int8} of {total} layers INT8"


def _student(report: dict, variant: str) -> str:
    """"The INT8 student (student-kd-qat-int8)", "The student (student-kd-qat-int8, mostly float: 2 of 20 layers
    INT8)", or "The deployed student (name)" when the report has no row for it."""
    runs = _runs_as(report, variant)
    if runs is None:
        return f"The deployed student ({variant})"
    precision, detail = runs
    return f"The {precision + ' ' if precision else ''}student ({', '.join(x for x in (variant, detail) if x)})"


def _label(report: dict, variant: str) -> str:
    """"student-kd-qat-int8: INT8", one of a list of deployed students."""
    runs = _runs_as(report, variant)
    return f"{variant}: {', '.join(x for x in runs if x)}" if runs else variant


def _latency_targets(report: dict) -> list[str]:
    """Target names with ablation latencies, in report["targets"] order, then any others."""
    names = [t["name"] for t in report["targets"]]
    for row in report["ablation"]:
        names += list(row.get("latency_p50_ms") or {})
    return [name for name in dict.fromkeys(names)
            if any(_is_number((row.get("latency_p50_ms") or {}).get(name)) for row in report["ablation"])]


def _check(target: dict, key: str) -> dict | None:
    return next((c for c in target["slo"]["checks"] if c["key"] == key), None)


def _failed_checks(target: dict) -> list[dict]:
    return [c for c in target["slo"]["checks"] if c.get("ok") is False]


# ---------------------------------------------------------------- sections

class _Renderer:
    """Builds the document blocks and writes the plots they show."""

    def __init__(self, report: dict, run_dir: Path, source: Path):
        self.report = report
        self.run_dir = run_dir
        self.source = source
        self.pending_plots: list[tuple[str, str, Callable[..., Path], dict]] = []  # (section, relative, draw, kwargs)
        self.current_section = ""
        teacher = _ablation_row(report, TEACHER_FP32) or (report["ablation"][0] if report["ablation"] else None)
        self.metric_name = teacher["metric"]["name"] if teacher else "metric"

    def plot(self, name: str, draw: Callable[..., Path], **kwargs) -> str:
        """Queue a figure; it is drawn only once the whole document has been built without error."""
        relative = f"plots/{name}"
        self.pending_plots.append((self.current_section, relative, draw, kwargs))
        return relative

    def section(self, key: str, build: Callable[[], object]):
        """Run a section step; malformed content becomes BadInput naming the report key at fault."""
        self.current_section = key
        try:
            return build()
        except BadInput:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
            raise BadInput(f"{self.source}: key '{key}' is malformed ({type(err).__name__}: {err})") from err

    def draw_plots(self) -> dict[str, Path]:
        written = {}
        for key, relative, draw, kwargs in self.pending_plots:
            written[relative] = self.section(key, functools.partial(draw, path=self.run_dir / relative, **kwargs))
        return written

    # -- headline
    def headline(self) -> list[Block]:
        report = self.report
        measured = [t for t in report["targets"] if t["available"]]
        absent = [t for t in report["targets"] if not t["available"]]
        meets, does, it = "meets", "does", "It"
        root = report.get("deployed") or DEPLOYABLE
        deployed = sorted({t["variant"] for t in (measured or report["targets"]) if t.get("variant")}) \
            or ([DEPLOYABLE] if _ablation_row(report, DEPLOYABLE) else [])
        if len(deployed) > 1:  # targets of different precisions or INT8 schemes deploy different students
            who = f"The deployed students ({'; '.join(_label(report, v) for v in deployed)})"
            meets, does, it = "meet", "do", root
        elif deployed:
            who = _student(report, deployed[0])
        else:
            who = "The student"
        if not measured:
            verdict = f"{who} was not measured on any target here, so no SLO verdict is given."
        else:
            failed = [t for t in measured if t["slo"]["verdict"] != "pass"]
            if not failed:
                verdict = (f"{who} {meets} every SLO on all {len(measured)} measured target(s) "
                           f"({', '.join(t['name'] for t in measured)}).")
            else:
                detail = "; ".join(f"{t['name']}: {t['slo']['verdict']}"
                                   + (f" on {', '.join(c['key'] for c in _failed_checks(t))}" if _failed_checks(t) else "")
                                   for t in failed)
                verdict = f"{who} {does} NOT meet every SLO: {len(failed)} of {len(measured)} measured target(s) fail ({detail})."
        sentences = [verdict]
        retention = _retention(report)
        own = {v: _own_retention(report, v) for v in deployed if v != root}
        if retention is not None and any(r is not None for r in own.values()):  # students of different sizes
            sentences.append(f"Of the FP32 teacher's {self.metric_name}, {root} keeps {_pct(retention)}, " + ", ".join(
                f"{v} {_pct(r)}" for v, r in own.items() if r is not None) + ".")
        elif retention is not None:
            sentences.append(f"{it} keeps {_pct(retention)} of the FP32 teacher's {self.metric_name}.")
        speedups = _speedups(report)
        if speedups:
            tie = set(report.get("speedup_within_noise") or [])
            what = "Decode tokens/s" if _generates(report) else "p50"
            sentences.append(f"{what} speed-up vs the FP32 teacher: " + ", ".join(
                f"{v:.2f}x on {k}" + (" (within timing noise)" if k in tie else "") for k, v in speedups.items()) + ".")
        blocks: list[Block] = [Paragraph(" ".join(sentences), emphasis=True)]
        if report.get("notes"):
            blocks.append(Bullets([f"Note: {note}" for note in report["notes"]]))
        if absent:
            blocks.append(Paragraph("Not measured (verdict not-measured, never pass): "
                                    + "; ".join(f"{t['name']} ({t.get('reason') or 'device absent'})" for t in absent)))
        return blocks

    # -- ablation + pareto
    def ablation(self) -> list[Block]:
        report = self.report
        names = _latency_targets(report)

        def table(variants: list[dict]) -> Table:
            rows = [[row["variant"] + (" (gate failed)" if row.get("verdict") == "failed" else ""),
                     str(row.get("precision", _MISSING)), _metric(row["metric"]["value"]),
                     _num(row.get("params")), _num(row.get("size_mb")),
                     *(_num((row.get("latency_p50_ms") or {}).get(n)) for n in names)] for row in variants]
            per = "ms/token" if _generates(report) else "p50 ms"  # a causal LM's latency: per decoded token
            return Table(["variant", "precision", self.metric_name, "params", "size MB",
                          *(f"{per} {n}" for n in names)], rows)

        if not report["ablation"]:
            return [Heading(2, "Ablation"), Paragraph("No ablation variant was recorded.")]
        blocks: list[Block] = [
            Heading(2, "Ablation"),
            Paragraph("Each variant is measured as an exported artifact on every available target, "
                      "on the same held-out data."),
            table(report["ablation"]),
        ]
        failed = [row for row in report["ablation"] if row.get("verdict") == "failed"]
        if failed:  # a baseline only: the deployable's own gate failure stops the run before any report
            blocks += [Paragraph("Baselines the export gate rejected in part or whole (comparison rows, never "
                                 "deployed; the run went on without what failed):"),
                       Bullets([f"{row['variant']}: {row.get('reason') or 'no reason recorded'}" for row in failed])]
        if report.get("deployables"):
            blocks += [Paragraph("Students made for particular targets (FP16, another INT8 scheme), measured the "
                                 "same way:"), table(report["deployables"])]
        teacher = _ablation_row(report, TEACHER_FP32)
        targets = {t["name"]: t for t in report["targets"]}
        for name in names:
            points = [(row["variant"], row["latency_p50_ms"][name], row["metric"]["value"]) for row in report["ablation"]
                      if _is_number((row.get("latency_p50_ms") or {}).get(name)) and _is_number(row["metric"]["value"])]
            if not points:
                continue
            target = targets.get(name)
            retention_check = _check(target, "min_metric_retention") if target else None
            p50_check = _check(target, "latency_p50_ms") if target else None
            floor = None
            if retention_check and _is_number(retention_check.get("limit")) and teacher \
                    and _is_number(teacher["metric"]["value"]):
                floor = retention_check["limit"] * teacher["metric"]["value"]
            relative = self.plot(f"pareto_{_safe_name(name)}.png", plots.plot_pareto, target=name,
                                 metric_name=self.metric_name, points=points, metric_floor=floor,
                                 latency_p50_limit=p50_check.get("limit") if p50_check else None)
            blocks.append(Image(relative, f"Pareto view on {name}: {self.metric_name} vs p50 latency per variant"))
        return blocks

    # -- targets
    def targets(self) -> list[Block]:
        rows = []
        for t in self.report["targets"]:
            lat = t.get("latency_ms") or {}
            state = "yes" if t["available"] else ("estimated" if t.get("estimated") else "no")
            rows.append([t["name"], str(t.get("variant") or _MISSING), state, _num(lat.get("p50")), _num(lat.get("p95")), _num(lat.get("p99")),
                         _num(t.get("throughput_per_s")), _num(t.get("peak_memory_mb")), _num(t.get("model_size_mb")),
                         str(t.get("executed_precision") or _MISSING), t["slo"]["verdict"]])
        if not rows:
            return [Heading(2, "Targets (deployed student)"), Paragraph("No target was recorded.")]
        if _generates(self.report):  # causal LMs: one weight-quantized student everywhere, timed by generation
            return [Heading(2, "Targets (deployed student)"),
                    Paragraph("Every target deploys the weight-quantized KD student (the run root's model.onnx and "
                              "OpenVINO IR); its generation figures are below."),
                    Table(["target", "deploys", "measured", "peak mem MB", "size MB", "SLO"],
                          [[t["name"], str(t.get("variant") or _MISSING), "yes" if t["available"] else "no",
                            _num(t.get("peak_memory_mb")), _num(t.get("model_size_mb")), t["slo"]["verdict"]]
                           for t in self.report["targets"]]), *self._target_checks()]
        blocks: list[Block] = [
            Heading(2, "Targets (deployed student)"),
            Paragraph("Each target deploys the student in its precision: INT8 targets a QAT student in the scheme "
                      "their kernels want, fp16 targets the KD student in FP16, fp32 targets the FP32 KD student; "
                      "an INT8 target whose INT8 student ran clearly slower than the FP32 KD student (interleaved "
                      "rounds whose spreads do not overlap) deploys the FP32 KD student. "
                      "The run root's model.onnx is what the first target deploys."),
            Table(["target", "deploys", "measured", "p50 ms", "p95 ms", "p99 ms", "throughput /s", "peak mem MB", "size MB",
                   "executed precision", "SLO"], rows),
        ]
        blocks += self._target_checks()
        with_layers = [t for t in self.report["targets"] if t["available"] and t.get("layers")]
        if with_layers:
            layer_targets = [{"name": t["name"], "layers": t["layers"], "p95_ms": (t.get("latency_ms") or {}).get("p95"),
                              "slo_p95_ms": (_check(t, "latency_p95_ms") or {}).get("limit")} for t in with_layers]
            relative = self.plot("layers.png", plots.plot_layers, targets=layer_targets)
            blocks.append(Image(relative, "Slowest layers of the deployed student against the measured p95 and the SLO"))
        return blocks

    def _target_checks(self) -> list[Block]:
        """Per target: its verdict, why it was not measured, each SLO check with its margin, warnings."""
        blocks: list[Block] = []
        for t in self.report["targets"]:
            blocks.append(Heading(3, f"{t['name']}: {t['slo']['verdict']}"))
            if t.get("note"):
                blocks.append(Paragraph(str(t["note"])))
            if not t["available"]:
                blocks.append(Paragraph(f"Not measured: {t.get('reason') or 'device absent'}."))
                estimate = t.get("estimate")
                if isinstance(estimate, dict) and estimate:
                    blocks.append(Paragraph("Estimate (estimated: true, not a measurement): "
                                            + ", ".join(f"{k} {_num(v)}" for k, v in estimate.items() if k != "estimated")))
            if t["slo"]["checks"]:
                blocks.append(Table(["check", "limit", "value", "margin", "ok"],
                                    [[c["key"], _num(c.get("limit")), _num(c.get("value")), _check_margin(c),
                                      {True: "ok", False: "FAIL"}.get(c.get("ok"), _MISSING)]
                                     for c in t["slo"]["checks"]]))
            if t.get("precision_mismatch") and t["available"]:
                blocks.append(Paragraph(f"Warning: INT8 kernels did not execute; the runtime ran "
                                        f"{t.get('executed_precision') or 'another precision'}."))
            if t.get("warnings"):
                blocks.append(Bullets([str(w) for w in t["warnings"]]))
        return blocks

    # -- SLO failures
    def failures(self) -> list[Block]:
        blocks: list[Block] = [Heading(2, "SLO failures explained")]
        failing = [t for t in self.report["targets"] if t["available"] and _failed_checks(t)]
        if not failing:
            return blocks + [Paragraph("No SLO check failed on a measured target.")]
        for t in failing:
            items = []
            for c in _failed_checks(t):
                unit = _unit(c["key"])
                items.append(f"{c['key']}: {_num(c.get('value'))}{unit} against a limit of {_num(c.get('limit'))}{unit}, "
                             f"{_check_margin(c)}.")
                if c["key"].startswith("latency") and t.get("layers"):
                    slowest = sorted(t["layers"], key=lambda layer: layer.get("time_ms") or 0.0, reverse=True)
                    items.append("Time goes to: " + ", ".join(
                        f"{layer.get('name')} [{layer.get('op')}] {_num(layer.get('time_ms'))} ms ({_pct(layer.get('share'))})"
                        for layer in slowest[:_TOP_LAYERS_EXPLAINED]) + ".")
                    if t.get("precision_mismatch"):
                        items.append(f"INT8 kernels did not execute (ran {t.get('executed_precision')}); "
                                     "the quantized speed-up is missing on this target.")
                if c["key"] == "min_metric_retention":
                    regressed = (self.report.get("audit") or {}).get("regressed") or []
                    if regressed:
                        items.append("Most regressed classes: " + ", ".join(
                            f"{r.get('name', r['class'])} ({_pct(r['teacher'])} -> {_pct(r['student'])})"
                            for r in regressed) + ".")
            blocks += [Heading(3, t["name"]), Bullets(items)]
        return blocks

    # -- parity
    def parity(self) -> list[Block]:
        parity = self.report["parity"]
        runtimes = {k: v for k, v in parity.items() if isinstance(v, dict)}
        blocks: list[Block] = [Heading(2, "Parity (exported vs PyTorch)")]
        if not runtimes:
            return blocks + [Paragraph("No parity figures recorded.")]
        keys = list(dict.fromkeys(k for v in runtimes.values() for k in v))
        return blocks + [Table(["runtime", *keys], [[name, *(_precise(v.get(k)) for k in keys)]
                                                    for name, v in runtimes.items()])]

    # -- training
    def training(self) -> list[Block]:
        training = {variant: epochs for variant, epochs in (self.report.get("training") or {}).items()
                    if isinstance(epochs, list)
                    and any(_is_number(e.get(k)) for e in epochs for k in ("val_metric", "train_loss", "val_loss"))}
        if not training:
            return []
        rows = []
        for variant, epochs in training.items():
            scored = [e for e in epochs if _is_number(e.get("val_metric"))]
            best = max(scored, key=lambda e: e["val_metric"]) if scored else None
            rows.append([variant, str(len(epochs)), _num(epochs[-1].get("train_loss")),
                         _metric(best["val_metric"]) if best else _MISSING, _num(best.get("epoch")) if best else _MISSING])
        relative = self.plot("training.png", plots.plot_training, training=training, metric_name=self.metric_name)
        return [Heading(2, "Training"),
                Table(["variant", "epochs", "final train loss", f"best val {self.metric_name}", "best epoch"], rows),
                Image(relative, f"Validation {self.metric_name} and loss per epoch")]

    # -- audit
    def audit(self) -> list[Block]:
        audit = self.report.get("audit")
        if not audit:
            return []
        blocks: list[Block] = [Heading(2, "Per-class audit (teacher vs student)")]
        facts = [f"teacher-student disagreement: {_pct(audit['disagreement_rate'])} of {audit['n_samples']} samples"]
        if audit["labeled"]:
            facts += [f"accuracy on {audit['n_labeled']} labeled samples: teacher {_pct(audit['teacher_accuracy'])}, "
                      f"student {_pct(audit['student_accuracy'])}",
                      f"samples the student fixed: {audit['fixed']}, broke: {audit['broken']}"]
        else:
            facts.append("no labels: grouped by the teacher's predicted class, agreement only")
        blocks.append(Bullets(facts))
        rows = audit["per_class"]
        if audit["labeled"]:
            regressed = audit.get("regressed") or []
            blocks.append(Paragraph("Most regressed classes: " + (", ".join(
                f"{r['name']} ({r['delta']:+.1%})" for r in regressed) if regressed else "none regressed.")))
            shown = sorted(rows, key=lambda r: (r["delta"], r["class"]))[:_MAX_CLASS_ROWS]
            table = Table(["class", "support", "teacher", "student", "delta", "agreement"],
                          [[r["name"], str(r["support"]), _pct(r["teacher"]), _pct(r["student"]), f"{r['delta']:+.1%}",
                            _pct(r["agreement"])] for r in shown])
        else:
            shown = sorted(rows, key=lambda r: (r["agreement"], r["class"]))[:_MAX_CLASS_ROWS]
            table = Table(["teacher class", "support", "student agreement"],
                          [[r["name"], str(r["support"]), _pct(r["agreement"])] for r in shown])
        if len(shown) < len(rows):
            blocks.append(Paragraph(f"The {len(shown)} worst of {len(rows)} classes:"))
        blocks.append(table)
        if rows:
            relative = self.plot("per_class.png", plots.plot_per_class, audit=audit)
            blocks.append(Image(relative, "Per-class metric, teacher vs student"))
        return blocks

    # -- quantization, pruning
    def quantization(self) -> list[Block]:
        quant = self.report.get("quantization")
        if not quant:
            return []
        blocks: list[Block] = [Heading(2, "Quantization decisions")]
        if isinstance(quant.get("scheme"), dict):
            blocks += [Paragraph("Scheme:"), Bullets(_flatten(quant["scheme"]))]
        float_layers = quant.get("float_layers")
        if float_layers:
            blocks += [Paragraph("Layers kept in floating point:"),
                       Table(["layer", "why"], [[str(f["name"]), str(f.get("reason", _MISSING))] for f in float_layers])]
        elif "float_layers" in quant:
            blocks.append(Paragraph("Every quantizable layer runs in INT8."))
        kept = quant.get("kept_calibrated_start")
        if kept is not None:  # None: no QAT ran (PTQ, or the model stayed float)
            blocks.append(Paragraph(
                "QAT+KD kept its calibrated start: no QAT epoch beat the post-training-quantized model on "
                "validation, so this INT8 model is PTQ (calibration only), not QAT-trained." if kept else
                "QAT+KD beat its calibrated (PTQ) start on validation: this INT8 model is the best QAT epoch."))
        rest = {k: v for k, v in quant.items() if k not in ("scheme", "float_layers", "kept_calibrated_start")}
        return blocks + (_generic(rest) if rest else [])

    def prune(self) -> list[Block]:
        prune = self.report.get("prune")
        return [Heading(2, "Pruning"), *_generic(prune)] if prune else []

    # -- manifest, host
    def manifest(self) -> list[Block]:
        blocks: list[Block] = [Heading(2, "Manifest")]
        if not (self.run_dir / MANIFEST_NAME).is_file():
            return blocks + [Paragraph(f"No {MANIFEST_NAME} in this run directory.")]
        try:
            manifest = read_manifest(run_dir=self.run_dir)
        except BadInput as err:
            return blocks + [Paragraph(f"{MANIFEST_NAME} is unreadable: {err}")]
        teacher, data = manifest["teacher"], manifest["data"]
        versions = manifest.get("versions") or {}
        items = [f"teacher: {teacher.get('ref', _MISSING)} (sha256 {teacher['sha256'][:16]}…)",
                 f"data: {data.get('name', _MISSING)} (sha256 {data['sha256'][:16]}…)",
                 f"seed: {manifest.get('seed', _MISSING)}; created {manifest.get('created', _MISSING)}",
                 f"{len(manifest['artifacts'])} artifacts hashed: " + ", ".join(manifest["artifacts"]),
                 "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)]
        if manifest.get("hyperparameters"):
            items.append("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in manifest["hyperparameters"].items()))
        return blocks + [Bullets(items), Paragraph("edgekd check RUN_DIR verifies these hashes and flags a changed "
                                                   "teacher or data snapshot as stale.")]

    def generation(self) -> list[Block]:
        """Causal LMs: time to first token and decode rate of what each target deploys, speculative decoding
        with the student drafting for the FP32 teacher, and the audit of greedy generations."""
        report = self.report
        measured = [t for t in report["targets"] if t["available"] and t.get("generation")]
        if not measured:
            return []
        rows = [[t["name"], str(t["generation"]["prompt_tokens"]), str(t["generation"]["new_tokens"]),
                 _num(t["generation"]["ttft_ms"]["p50"]), _num(t["generation"]["ttft_ms"]["p95"]),
                 _num(t["generation"]["decode_tokens_per_s"]), _num(t.get("decode_speedup_vs_teacher")),
                 ", ".join(f"{k} {v}" for k, v in (t.get("weights_in_runtime") or {}).items() if k != "runtime")]
                for t in measured]
        blocks: list[Block] = [
            Heading(2, "Generation (deployed student)"),
            Paragraph("Greedy decoding of held-out prompts through the exported KV-cache decoder; time to first token "
                      "is the prompt's prefill and the first token; the speed-up is of decode tokens/s over the FP32 "
                      "teacher on the same target; weights are the MatMuls the runtime keeps integer."),
            Table(["target", "prompt tokens", "new tokens", "TTFT p50 ms", "TTFT p95 ms", "decode tokens/s",
                   "speed-up", "weights in the runtime"], rows)]
        speculative = {name: spec for name, spec in (report.get("speculative_by_target") or {}).items() if spec}
        if speculative:
            blocks += [Heading(3, "Speculative decoding"),
                       Table(["target", "draft", "k", "acceptance", "tokens/s", "teacher tokens/s", "identical output"],
                             [[name, s["draft"], str(s["k"]), _num(s["acceptance_rate"]), _num(s["tokens_per_s"]),
                               _num(s["teacher_tokens_per_s"]), str(s["identical_output"])]
                              for name, s in speculative.items()])]
        audit = report.get("generation_audit")
        if audit:
            blocks += [Heading(3, "Audit of greedy generations"),
                       Table(["variant", "outputs", "mean new tokens", "repeated 4-grams", "empty"],
                             [[name, str(a["outputs"]), _num(a["mean_new_tokens"]), _pct(a["repetition_rate"])
                               if a["repetition_rate"] is not None else "-", str(a["empty_outputs"])]
                              for name, a in audit.items()])]
        return blocks

    def budget(self) -> list[Block]:
        """`student: auto`: which student the measured budget chose, per target, with the plot."""
        budget = self.report.get("budget")
        if not budget:
            return []
        sentences = [f"{entry['target']}: {entry['reason']}" for entry in budget["targets"]]
        plot = self.plot("budget.png", plots.plot_budget, targets=[
            {"name": e["target"], "available": e["available"], "chosen": e["chosen"], "budget": e["budget"],
             "candidates": e["candidates"]} for e in budget["targets"]])
        return [Heading(2, "Budget (student: auto)"), Paragraph(f"Chosen: {budget['reason']}."), Bullets(sentences),
                Image(plot, "p95 latency vs parameters of every candidate, per target")]

    def host(self) -> list[Block]:
        host = self.report.get("host")
        if not host:
            return []
        items = [f"{host.get('arch', _MISSING)}: {host.get('cpu', _MISSING)}",
                 "ISA: " + (" ".join(host.get("isa") or []) or "no SIMD flags read")]
        for key in ("cores", "ort_providers", "openvino_devices"):
            if host.get(key):
                value = host[key]
                items.append(f"{key}: {', '.join(value) if isinstance(value, list) else value}")
        return [Heading(2, "Host (where the figures were measured)"), Bullets(items)]

    def build(self) -> tuple[str, list[Block]]:
        report = self.report
        run = report.get("run") or {}
        title = "edgekd report"
        if run.get("teacher"):
            title += f": {run['teacher']} -> {run.get('student', '?')} on {run.get('data', '?')}"
        meta = ", ".join(f"{k} {report[k]}" for k in ("created", "edgekd_version", "task") if report.get(k))
        blocks: list[Block] = [Heading(1, title)] + ([Paragraph(meta)] if meta else [])
        for key, build in (("headline", self.headline), ("ablation", self.ablation), ("targets", self.targets),
                           ("targets", self.generation),
                           ("targets", self.failures), ("parity", self.parity), ("training", self.training),
                           ("audit", self.audit), ("quantization", self.quantization), ("budget", self.budget),
                           ("prune", self.prune),
                           ("manifest", self.manifest), ("host", self.host)):
            blocks += self.section(key, build)
        return title, blocks


def render_report(*, run_dir: Path) -> dict[str, Path]:
    """Write report.md, report.html and plots/*.png from run_dir/report.json.

    Returns every written file keyed by its path relative to `run_dir`.
    """
    run_dir = Path(run_dir)
    report = load_report(run_dir=run_dir)
    renderer = _Renderer(report, run_dir, run_dir / REPORT_NAME)
    title, blocks = renderer.build()
    written = renderer.draw_plots()
    outputs = {"report.md": to_markdown(blocks), "report.html": to_html(blocks, title=title, run_dir=run_dir)}
    for name, text in outputs.items():
        with atomic_path(run_dir / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written[name] = run_dir / name
    return written
