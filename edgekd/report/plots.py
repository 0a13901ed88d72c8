"""The report's figures, drawn with matplotlib's object API on the Agg canvas.

No pyplot: figures are plain objects, nothing global is switched (a library must not change
its caller's matplotlib backend), and nothing is left open. PNGs carry no version metadata so
the same report.json renders to the same bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from edgekd.io import atomic_path
from edgekd.report.schema import VARIANTS

_VARIANT_COLOURS = dict(zip(VARIANTS, ("#4e79a7", "#76b7b2", "#e15759", "#f28e2b", "#59a14f")))
_FALLBACK_COLOURS = ("#b07aa1", "#9c755f", "#bab0ac", "#edc948", "#ff9da7")
_LAYER_LABEL_CHARS = 42


def variant_colour(variant: str, index: int = 0) -> str:
    return _VARIANT_COLOURS.get(variant, _FALLBACK_COLOURS[index % len(_FALLBACK_COLOURS)])


def _new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", metadata={"Software": None})
    return path


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, metric) points no other point beats on both axes, by latency.

    A point is dominated when another is at least as fast and at least as accurate, and
    strictly better on one of the two.
    """
    front = []
    for i, (lat_i, met_i) in enumerate(points):
        dominated = any(
            lat_j <= lat_i and met_j >= met_i and (lat_j < lat_i or met_j > met_i)
            for j, (lat_j, met_j) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def plot_pareto(
    *,
    path: Path,
    target: str,
    metric_name: str,
    points: Sequence[tuple[str, float, float]],
    metric_floor: float | None = None,
    latency_p50_limit: float | None = None,
) -> Path:
    """Metric vs p50 latency, one point per variant `(variant, latency_ms, metric)`, front joined."""
    figure = _new_figure(7.5, 4.8)
    ax = figure.add_subplot()
    coords = [(latency, metric) for _, latency, metric in points]
    front = pareto_front(coords)
    for index, (variant, latency, metric) in enumerate(points):
        on_front = index in front
        ax.scatter(latency, metric, s=110 if on_front else 60, color=variant_colour(variant, index),
                   edgecolors="black" if on_front else "none", linewidths=1.2, zorder=3)
    if front:
        ax.plot([coords[i][0] for i in front], [coords[i][1] for i in front], drawstyle="steps-post",
                linestyle="--", color="black", linewidth=1, zorder=2, label="Pareto front (black rim)")
    if metric_floor is not None:
        ax.axhline(metric_floor, color="#cf222e", linestyle=":", linewidth=1.2, label="retention floor (SLO)")
    if latency_p50_limit is not None:
        ax.axvline(latency_p50_limit, color="#cf222e", linestyle="-.", linewidth=1.2, label="p50 latency SLO")
    ax.margins(x=0.25, y=0.2)
    ax.set_xlabel("p50 latency per inference (ms) — lower is better")
    ax.set_ylabel(f"{metric_name} — higher is better")
    ax.set_title(f"{metric_name} vs latency on {target}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _label_points(figure, ax, [(variant, (latency, metric), index in front)
                               for index, (variant, latency, metric) in enumerate(points)])
    return _save(figure, path)


# Label positions tried in turn, as (dx, dy) in points and the text's alignment.
_LABEL_SPOTS = ((8, 6, "left", "bottom"), (8, -6, "left", "top"), (-8, 6, "right", "bottom"),
                (-8, -6, "right", "top"), (0, 11, "center", "bottom"), (0, -11, "center", "top"))


def _label_points(figure: Figure, ax, labels: Sequence[tuple[str, tuple[float, float], bool]]) -> None:
    """Put each label at the first spot that overlaps no marker, legend or earlier label.

    Variants often sit close together (an FP32 and an INT8 student of similar speed), so
    fixed offsets print names over each other; a greedy search over a few spots does not.
    """
    figure.draw_without_rendering()  # settle limits and layout so pixel boxes are final
    renderer = figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = [Bbox.from_bounds(*(ax.transData.transform(xy) - 6), 12, 12) for _, xy, _ in labels]
    legend = ax.get_legend()
    if legend is not None:
        taken.append(legend.get_window_extent(renderer))
    for text, xy, bold in labels:
        best = None
        for dx, dy, ha, va in _LABEL_SPOTS:
            note = ax.annotate(text, xy, xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8.5,
                               fontweight="bold" if bold else "normal",
                               bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none",
                                     "alpha": 0.8})
            box = note.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            clashes = sum(box.overlaps(other) for other in taken) + (0 if inside else 1)
            if best is None or clashes < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clashes, note, box)
            else:
                note.remove()
            if clashes == 0:
                break
        taken.append(best[2])


def plot_layers(*, path: Path, targets: Sequence[dict], top: int = 12) -> Path:
    """Per target: the slowest layers, their running total, the measured p95 and the p95 SLO.

    Bars alone cannot be compared with a whole-inference budget; the cumulative line can: it
    shows how much of the p95 the top layers explain and how far the total is from the SLO.
    Each entry of `targets` is `{"name", "layers", "p95_ms", "slo_p95_ms"}`.
    """
    heights = [max(2.6, 0.32 * min(top, len(t["layers"])) + 1.4) for t in targets]
    figure = _new_figure(9.5, sum(heights))
    axes = figure.subplots(len(targets), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, target in zip(axes, targets):
        layers = sorted(target["layers"], key=lambda layer: layer.get("time_ms") or 0.0, reverse=True)
        shown = layers[:top]
        times = [layer.get("time_ms") or 0.0 for layer in shown]
        labels = []
        for layer in shown:
            label = f"{layer.get('name', '?')} [{layer.get('op', '?')}]"
            # ONNX names are paths (/encoder/layer.3/attention/MatMul): their tail tells layers apart.
            labels.append(label if len(label) <= _LAYER_LABEL_CHARS else "…" + label[-(_LAYER_LABEL_CHARS - 1):])
        positions = list(range(len(shown)))
        ax.barh(positions, times, color="#4e79a7", label="layer time")
        running, cumulative = 0.0, []
        for value in times:
            running += value
            cumulative.append(running)
        ax.plot(cumulative, positions, marker="o", markersize=3.5, color="#f28e2b", label="running total")
        for pos, layer, value in zip(positions, shown, times):
            share = layer.get("share")
            text = f"{value:.3g} ms" + (f" ({share:.0%})" if isinstance(share, (int, float)) else "")
            ax.annotate(text, (value, pos), xytext=(7, 0), textcoords="offset points", va="center", fontsize=7.5)
        if cumulative:
            ax.annotate(f"top {len(shown)}: {cumulative[-1]:.3g} ms", (cumulative[-1], positions[-1]), xytext=(6, -4),
                        textcoords="offset points", va="top", fontsize=7.5, color="#c46f1a")
        if target.get("p95_ms") is not None:
            ax.axvline(target["p95_ms"], color="black", linestyle="--", linewidth=1.2,
                       label=f"measured p95 {target['p95_ms']:.3g} ms")
        if target.get("slo_p95_ms") is not None:
            ax.axvline(target["slo_p95_ms"], color="#cf222e", linestyle=":", linewidth=1.6,
                       label=f"p95 SLO {target['slo_p95_ms']:.3g} ms")
        ax.set_yticks(positions, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(left=0)
        ax.margins(x=0.12)
        ax.set_xlabel("ms per inference")
        ax.set_title(f"{target['name']}: slowest {len(shown)} of {len(layers)} layers", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=7.5)
    return _save(figure, path)


def plot_training(*, path: Path, training: dict, metric_name: str) -> Path:
    """Validation metric and loss per epoch for each trained variant."""
    figure = _new_figure(10, 4)
    metric_ax, loss_ax = figure.subplots(1, 2)
    for index, (variant, epochs) in enumerate(training.items()):
        colour = variant_colour(variant, index)
        for ax, key, style, suffix in ((metric_ax, "val_metric", "-", ""), (loss_ax, "train_loss", "-", " train"),
                                       (loss_ax, "val_loss", "--", " val")):
            series = [(e.get("epoch", i), e[key]) for i, e in enumerate(epochs) if isinstance(e.get(key), (int, float))]
            if series:
                ax.plot([x for x, _ in series], [y for _, y in series], style, marker="o", markersize=3,
                        color=colour, label=variant + suffix)
    metric_ax.set_title(f"validation {metric_name}")
    loss_ax.set_title("loss")
    for ax in (metric_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend(fontsize=7.5)
    return _save(figure, path)


def plot_per_class(*, path: Path, audit: dict, limit: int = 30) -> Path:
    """Teacher vs student accuracy per class (agreement per teacher class when unlabeled)."""
    rows = audit["per_class"]
    if len(rows) > limit:  # too many bars to read: keep the worst classes, in class order
        worst = sorted(rows, key=lambda r: (r.get("delta", r["agreement"] - 1), r["class"]))[:limit]
        rows = sorted(worst, key=lambda r: r["class"])
    regressed = {r["class"] for r in audit.get("regressed", [])}
    figure = _new_figure(min(14.0, max(6.0, 0.4 * len(rows) + 2)), 4.4)
    ax = figure.add_subplot()
    positions = list(range(len(rows)))
    names = [str(r.get("name", r["class"])) for r in rows]
    if audit.get("labeled"):
        width = 0.4
        ax.bar([p - width / 2 for p in positions], [r["teacher"] for r in rows], width, color="#9aa5b1", label="teacher")
        ax.bar([p + width / 2 for p in positions], [r["student"] for r in rows], width, label="student",
               color=["#cf222e" if r["class"] in regressed else "#4e79a7" for r in rows])
        ax.set_ylabel("accuracy")
        title = "per-class accuracy, teacher vs student (red: most regressed)"
    else:
        ax.bar(positions, [r["agreement"] for r in rows], 0.6, color="#4e79a7", label="student agrees with teacher")
        ax.set_ylabel("agreement")
        title = "student agreement with the teacher, per teacher-predicted class (no labels)"
    if len(rows) < len(audit["per_class"]):
        title += f" — worst {len(rows)} of {len(audit['per_class'])}"
    long_names = max(map(len, names)) > 3
    ax.set_xticks(positions, names, rotation=45 if long_names else 0, ha="right" if long_names else "center",
                  fontsize=8)
    low = min([r.get("teacher", 1.0) for r in rows] + [r.get("student", r["agreement"]) for r in rows])
    ax.set_ylim(max(0.0, low - 0.1), 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    figure.legend(fontsize=8, loc="outside upper right", ncols=2)
    return _save(figure, path)


def plot_budget(*, path: Path, targets: Sequence[dict]) -> Path:
    """p95 latency vs parameters of every profiled candidate, one panel per target: the SLO line
    (with the margin the choice keeps) and the chosen student ringed. Estimated figures are hollow."""
    figure = _new_figure(6.5 * max(1, len(targets)), 4.6)
    for index, entry in enumerate(targets, start=1):
        ax = figure.add_subplot(1, len(targets), index)
        for candidate in entry["candidates"]:
            if candidate["latency_p95_ms"] is None:
                continue
            chosen = candidate["student"] == entry["chosen"]
            teacher = candidate["student"] == "teacher"
            colour = "#4e79a7" if teacher else ("#59a14f" if candidate["fits"] else "#e15759")
            ax.scatter(candidate["params"], candidate["latency_p95_ms"], s=120 if chosen else 50,
                       color="none" if candidate["estimated"] else colour, edgecolors="black" if chosen else colour,
                       linewidths=1.5 if chosen else 1.0, zorder=3)
            ax.annotate(candidate["student"], (candidate["params"], candidate["latency_p95_ms"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
        limit = entry["budget"]["limits"].get("latency_p95_ms")
        if limit is not None:
            ax.axhline(limit, color="#cf222e", linestyle=":", linewidth=1.2, label="p95 SLO")
            ax.axhline(limit * (1 - entry["budget"]["margin"]), color="#cf222e", linestyle="--", linewidth=0.8,
                       label=f"with {entry['budget']['margin']:.0%} margin")
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xlabel("parameters")
        ax.set_ylabel("p95 latency (ms)")
        ax.set_yscale("log")  # candidates sit far below a loose budget: a linear axis flattens them
        ax.set_title(f"{entry['name']}{'' if entry['available'] else ' (estimated)'}", fontsize=10)
        ax.grid(alpha=0.3)
    return _save(figure, path)
