"""The human view of a BenchResult: figures, SLO checks, slowest layers, warnings."""

from __future__ import annotations

from typing import Optional

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgekd.bench.core import BenchResult

_VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "not-measured": "bold yellow"}


def _num(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_bench(result: BenchResult, console: Console) -> None:
    """Print `result` as rich tables on `console`."""
    title = escape(f"{result.model} on {result.name} ({result.runtime} / {result.runtime_device})")
    figures = Table(title=title, show_header=False, title_justify="left")
    figures.add_column("figure", style="bold")
    figures.add_column("value")
    if not result.available:
        figures.add_row("available", f"[red]no[/]: {escape(result.reason or '')}")
    else:
        lat = result.latency_ms
        figures.add_row("latency p50 / p90 / p95 / p99",
                        " / ".join(_num(lat[k]) for k in ("p50", "p90", "p95", "p99")) + " ms")
        figures.add_row("latency mean ± std", f"{_num(lat['mean'])} ± {_num(lat['std'])} ms "
                                              f"({result.iterations} sync runs)")
        figures.add_row("throughput", f"{_num(result.throughput_per_s, 1)} samples/s (batch {result.batch_size})")
        if result.memory:
            figures.add_row("peak memory (model)", f"{_num(result.memory.model_mb, 1)} MB "
                                                   f"(process peak {_num(result.memory.process_peak_mb, 1)} MB)")
        else:
            figures.add_row("peak memory (model)", "not measured")
    figures.add_row("model size", f"{_num(result.model_size_mb, 3)} MB")
    if result.precision:
        p = result.precision
        executed = p.executed or "unknown"
        flag = "  [bold red]RUNS FP, NOT INT8[/]" if p.mismatch else ""
        figures.add_row("precision executed", f"{executed} (expected {p.expected}){flag}")
    figures.add_row("inputs", escape(", ".join(f"{n} {v['shape']} {v['dtype']}" for n, v in result.inputs.items())
                                         + f" ({result.input_source})"))
    if result.runtime_settings:
        figures.add_row("runtime settings", escape(", ".join(f"{k}={v}" for k, v in result.runtime_settings.items())))
    figures.add_row("host", escape(result.host))
    if result.estimate:
        est = result.estimate
        figures.add_row("[yellow]ESTIMATE[/] latency",
                        f"[yellow]{est['latency_ms']:.3g} ms, {est['bound']}-bound "
                        f"({est['macs']:,} MACs) — estimated, not measured, not used for the verdict[/]")
    console.print(figures)

    if result.slo.checks:
        slo = Table(title="SLO", title_justify="left")
        for column in ("check", "limit", "value", "result"):
            slo.add_column(column)
        for check in result.slo.checks:
            outcome = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: "[yellow]not measured[/]"}[check.ok]
            slo.add_row(check.key, _num(check.limit), _num(check.value), outcome)
        console.print(slo)
    verdict = result.slo.verdict
    reason = escape(f" ({result.slo.reason})") if result.slo.reason else ""
    console.print(f"SLO verdict: [{_VERDICT_STYLE[verdict]}]{verdict}[/]{reason}")

    if result.layers:
        layers = Table(title=f"Slowest {len(result.layers)} layers", title_justify="left")
        for column in ("layer", "op", "kernel / provider", "ms", "share"):
            layers.add_column(column)
        for layer in result.layers:
            layers.add_row(escape(layer["name"]), escape(layer["op"]), escape(layer["exec_type"]), _num(layer["time_ms"], 4),
                           f"{layer['share']:.1%}")
        console.print(layers)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
