"""The benchmark's plots (PNG): forget quality against utility (Pareto), cost, training curves, attacks, sequential
requests.

Drawn with matplotlib's object API on the Agg canvas: no pyplot, no display, and no global figure registry that
could keep figures alive. A plot with no data is not written.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from forgetkit.bench.leaderboard import (
    ATTACK_COLUMNS,
    FORGET_QUALITY,
    attack_rows,
    cell_value,
    criterion_tracking,
    summarise,
)
from forgetkit.io import atomic_path

MODEL_UTILITY = "metrics.model_utility"
TIME_VS_RETRAIN = "cost.time_vs_retrain"
ATTACK_BARS = [key for key, _ in ATTACK_COLUMNS]
BAR_LABELS = {
    "metrics.forget_probability": "after unlearning",
    "attacks.relearn.before.forget_probability": "held-out half, before relearning",
    "attacks.relearn.after.forget_probability": "held-out half, after relearning",
    "attacks.quantize_8.forget_probability": "8-bit quantized",
    "attacks.quantize_4.forget_probability": "4-bit quantized",
    "attacks.prompt.forget_probability": "prompt attack",
    "attacks.jailbreak_roleplay.forget_probability": "role-play jailbreak",
    "attacks.jailbreak_ignore_instructions.forget_probability": "ignore-instructions jailbreak",
    "attacks.jailbreak_multi_turn.forget_probability": "multi-turn jailbreak",
    "attacks.jailbreak_completion.forget_probability": "completion jailbreak (rest of answer)",
}
REFERENCE_STYLE = {
    "target": {"marker": "X", "color": "red", "s": 140},
    "oracle": {"marker": "*", "color": "green", "s": 220},
}
MARKERS = "osD^vP<>ph"
LINESTYLES = ("-", "--", ":", "-.")  # one per forget split where a plot overlays splits
CAPTIONS = {
    "pareto": "Forget quality (log scale) against model utility, mean over seeds (bars: sample std), per forget "
              "split. Red X: target (before unlearning); green star: oracle (retrained without the forget set); "
              "dashed: the Pareto front of the methods (higher is better on both axes).",
    "cost": "Forget quality against wall time relative to retraining (both log scale), mean over seeds. "
            "Left of the dotted line a method is cheaper than retraining.",
    "curves": "Per step of each method variant and split (seed 0, or the first cell with a curve): the training "
              "loss, the gradient norm before clipping, and Forget Quality where the variant had a quick evaluation "
              "every few steps (eval_every).",
    "attacks": "Forget probability after unlearning and under each attack, mean over seeds (bars: sample std). "
               "Relearning trains on half of the forget people and is measured on the other half, before and "
               "after. A bar that rises after an attack means the forgotten answers came back.",
    "sequential": "Forget probability and model utility after each of a sequence of forget requests, mean over seeds.",
    "scaling": "Forget quality (log scale) and model utility against the size of the forget set (forget01, 05, 10: "
               "the percentage of people forgotten), mean over seeds.",
    "criterion": "Does the oracle-free signal track the oracle's? Every cell's forget-vs-calibration AUC (no oracle "
                 "needed; 0.5 = indistinguishable; shaded: the tolerance of --until) against its Forget Quality (log "
                 "scale; the oracle-based test). Filled markers: variants run with until: indistinguishable.",
}


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points not dominated when maximising both coordinates, by ascending x (so descending y)."""
    front: list[tuple[float, float]] = []
    best_y = float("-inf")
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            front.append((x, y))
            best_y = y
    return front[::-1]


def _styles(rows: list[dict]) -> dict[str, dict]:
    """A colour and marker per method variant, the same in every plot."""
    variants = sorted({r["variant"] for r in rows if r["kind"] != "reference"})
    palette = colormaps["tab10" if len(variants) <= 10 else "tab20"]
    return {v: {"color": palette(i % palette.N), "marker": MARKERS[i % len(MARKERS)]} for i, v in enumerate(variants)}


def _name(variant: str, split: str, many_splits: bool) -> str:
    return f"{variant} ({split})" if many_splits else variant


def _positive(value: float | None) -> bool:
    return value is not None and value > 0


def _log_xerr(summary: dict) -> list[list[float]] | None:
    """Asymmetric x error bar on a log axis: a lower bar that would cross zero cannot be drawn, so it is left out."""
    std, mean = summary["std"], summary["mean"]
    if std is None:
        return None
    return [[std if mean - std > 0 else 0.0], [std]]


def _split_axes(splits: list[str], title: str) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(5.5 * len(splits), 4.8), layout="constrained")
    fig.suptitle(title)
    return fig, list(fig.subplots(1, len(splits), squeeze=False)[0])


def _pareto(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    shown = [r for r in rows if _positive(r["columns"][FORGET_QUALITY]["mean"])
             and r["columns"][MODEL_UTILITY]["mean"] is not None]
    if not shown:
        return None
    # Rows with results whose FQ is 0 or missing cannot sit on a log axis; the legend names them instead.
    hidden = [r for r in rows if r["status_counts"].get("done") and r not in shown]
    splits = sorted({r["split"] for r in shown + hidden})
    fig, axes = _split_axes(splits, "Forget quality vs model utility")
    for split, ax in zip(splits, axes, strict=True):
        front = []
        for row in (r for r in shown if r["split"] == split):
            fq, mu = row["columns"][FORGET_QUALITY], row["columns"][MODEL_UTILITY]
            if row["kind"] == "reference":
                style = REFERENCE_STYLE.get(row["variant"], {"marker": "P", "color": "black", "s": 100})
                ax.scatter(fq["mean"], mu["mean"], label=row["variant"], zorder=3, **style)
                continue
            front.append((fq["mean"], mu["mean"]))
            style = styles[row["variant"]]
            ax.errorbar(fq["mean"], mu["mean"], xerr=_log_xerr(fq), yerr=mu["std"], fmt=style["marker"],
                        color=style["color"], capsize=3, label=row["variant"])
        front = pareto_front(front)
        if len(front) > 1:
            ax.step(*zip(*front, strict=True), where="pre", color="grey", linestyle="--", label="Pareto front")
        missing = [r["variant"] for r in hidden if r["split"] == split]
        if missing:
            ax.plot([], [], " ", label=f"not shown (FQ 0 or missing): {', '.join(missing)}")
        ax.set_xscale("log")
        ax.set(title=split, xlabel="forget quality (log)", ylabel="model utility")
        ax.legend(fontsize="small")
    return fig


def _cost(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    shown = [r for r in rows if r["kind"] != "reference" and _positive(r["columns"][FORGET_QUALITY]["mean"])
             and _positive(r["columns"][TIME_VS_RETRAIN]["mean"])]
    if not shown:
        return None
    splits = sorted({r["split"] for r in shown})
    fig, axes = _split_axes(splits, "Forget quality vs cost")
    for split, ax in zip(splits, axes, strict=True):
        for row in (r for r in shown if r["split"] == split):
            style = styles[row["variant"]]
            ax.scatter(row["columns"][TIME_VS_RETRAIN]["mean"], row["columns"][FORGET_QUALITY]["mean"],
                       marker=style["marker"], color=style["color"], label=row["variant"])
        ax.axvline(1.0, color="grey", linestyle=":", label="retrain cost")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set(title=split, xlabel="wall time / retrain wall time (log)", ylabel="forget quality (log)")
        ax.legend(fontsize="small")
    return fig


CURVE_PANELS = (("loss", "training loss", "linear"), ("grad_norm", "gradient norm (before clipping)", "log"),
                ("forget_quality", "Forget Quality (quick evaluation)", "log"))


def _curves(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    chosen: dict[tuple[str, str], dict] = {}  # one curve per variant and split
    method_cells = [c for c in cells if c["cell"].get("kind", "method") != "reference"]
    # Seed 0 of a done cell first; a diverged cell's curve is shown when it is the variant's only one.
    for cell in sorted(method_cells, key=lambda c: (c["status"] != "done", c["cell"]["seed"], c["cell"]["split"])):
        if any(p.get("loss") is not None for p in cell.get("curve") or []):
            chosen.setdefault((cell["cell"]["variant"], cell["cell"]["split"]), cell)
    if not chosen:
        return None
    panels = [panel for panel in CURVE_PANELS
              if any(p.get(panel[0]) is not None for c in chosen.values() for p in c["curve"])]
    fig = Figure(figsize=(6 * len(panels), 5), layout="constrained")
    for ax, (key, title, scale) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        for (variant, _), cell in sorted(chosen.items()):
            points = [(p["step"], p[key]) for p in cell["curve"] if p.get(key) is not None]
            if not points:
                continue
            info = cell["cell"]
            status = "" if cell["status"] == "done" else f", {cell['status']}"
            ax.plot(*zip(*points, strict=True), color=styles.get(variant, {}).get("color"),
                    marker="o" if key == "forget_quality" else None, markersize=3,
                    label=f"{variant} ({info['split']}, seed {info['seed']}{status})")
        ax.set_yscale(scale)
        ax.set(title=title, xlabel="step", ylabel=key.replace("_", " "))
        ax.legend(fontsize="x-small")
    return fig


def _attacks(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    groups = attack_rows(cells)
    if not groups:
        return None
    many_splits = len({g["split"] for g in groups}) > 1
    width = 0.8 / len(ATTACK_BARS)
    fig = Figure(figsize=(max(6.0, 1.4 * len(groups) + 2), 5), layout="constrained")
    ax = fig.subplots()
    palette = colormaps["Set2"]
    for j, key in enumerate(ATTACK_BARS):
        xs, heights, errors = [], [], []
        for i, group in enumerate(groups):
            stat = group["columns"][key]
            if stat["mean"] is not None:
                xs.append(i + (j - (len(ATTACK_BARS) - 1) / 2) * width)
                heights.append(stat["mean"])
                errors.append(stat["std"] or 0.0)
        if xs:
            ax.bar(xs, heights, width, yerr=errors if any(errors) else None, capsize=2, color=palette(j),
                   label=BAR_LABELS[key])
    ax.set_xticks(range(len(groups)), [_name(g["variant"], g["split"], many_splits) for g in groups],
                  rotation=20, ha="right")
    ax.set(title="Forget probability under attacks", ylabel="forget probability")
    ax.legend(fontsize="small")
    return fig


def _sequential(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    groups: dict[tuple[str, str], dict[int, list[dict]]] = {}
    for cell in cells:
        for request in cell_value(cell, "attacks.sequential") or []:
            key = (cell["cell"]["variant"], cell["cell"]["split"])
            groups.setdefault(key, {}).setdefault(request["request"], []).append(request)
    if not groups:
        return None
    splits = sorted({split for _, split in groups})
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for (variant, split), by_request in sorted(groups.items()):
        requests = sorted(by_request)
        style = styles.get(variant, {"color": None, "marker": "o"})
        for ax, metric in zip(axes, ("forget_probability", "model_utility"), strict=True):
            means = [summarise(r.get(metric) for r in by_request[n])["mean"] for n in requests]
            ax.plot(requests, [float("nan") if m is None else m for m in means], marker=style["marker"],
                    color=style["color"], linestyle=LINESTYLES[splits.index(split) % len(LINESTYLES)],
                    label=_name(variant, split, len(splits) > 1))
    for ax, label in zip(axes, ("forget probability", "model utility"), strict=True):
        ax.set(title=f"{label} after each request", xlabel="request", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize="small")
    return fig


def _split_size(split: str) -> float | None:
    """``forget05`` → 5 (the percentage of people forgotten); None for a split without a number."""
    digits = split.removeprefix("forget")
    return float(digits) if digits.isdigit() else None


def _scaling(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    """Forget quality and model utility against the forget set's size, one line per variant (grids over several
    forget splits: forget01 → 05 → 10)."""
    sized = [r for r in rows if r["status"] == "done" and _split_size(r["split"]) is not None]
    if len({r["split"] for r in sized}) < 2:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    axes = fig.subplots(1, 2)
    for variant in sorted({r["variant"] for r in sized}):
        mine = sorted((r for r in sized if r["variant"] == variant), key=lambda r: _split_size(r["split"]))
        style = REFERENCE_STYLE.get(variant) or styles.get(variant, {"color": None, "marker": "o"})
        for ax, key in zip(axes, (FORGET_QUALITY, MODEL_UTILITY), strict=True):
            xs = [_split_size(r["split"]) for r in mine]
            ys = [r["columns"][key]["mean"] for r in mine]
            ax.plot(xs, [float("nan") if y is None else y for y in ys], marker=style["marker"], color=style["color"],
                    label=variant)
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("forget quality (log)", "model utility"), strict=True):
        ax.set(title=f"{label} against the forget set's size", xlabel="forget set (% of people)", ylabel=label)
        ax.legend(fontsize="small")
    return fig


def _criterion(cells: list[dict], rows: list[dict], styles: dict[str, dict]) -> Figure | None:
    """Every finished cell's forget-vs-calibration AUC against its Forget Quality; cells run with ``until`` filled."""
    points = [c for c in cells if c.get("status") == "done" and c["metrics"].get("calibration_auc") is not None
              and _positive(c["metrics"].get("forget_quality"))]
    if not points:
        return None
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    tolerances = [c["criterion"]["tolerance"] for c in points if c.get("criterion")]
    if tolerances:
        ax.axvspan(0.5 - max(tolerances), 0.5 + max(tolerances), color="0.9", zorder=0)
    ax.axvline(0.5, color="0.6", linestyle=":")
    for variant in sorted({c["cell"]["variant"] for c in points}):
        mine = [c for c in points if c["cell"]["variant"] == variant]
        style = REFERENCE_STYLE.get(variant) or styles.get(variant, {"color": None, "marker": "o"})
        until = bool(mine[0].get("criterion"))
        ax.scatter([c["metrics"]["calibration_auc"] for c in mine], [c["metrics"]["forget_quality"] for c in mine],
                   color=style["color"], marker=style["marker"], label=variant,
                   facecolors=style["color"] if until else "none")
    ax.set_yscale("log")
    tracking = criterion_tracking(cells)
    title = "oracle-free criterion against Forget Quality"
    if tracking:
        title += f"\nSpearman ρ(|AUC − 0.5|, FQ) = {tracking['spearman_rho']:.2f} over {tracking['cells']} cells"
    ax.set(xlabel="forget vs calibration AUC (0.5: indistinguishable)", ylabel="forget quality (log)", title=title)
    ax.legend(fontsize="small")
    return fig


PLOTS: dict[str, Callable[[list[dict], list[dict], dict[str, dict]], Figure | None]] = {
    "pareto": _pareto,
    "cost": _cost,
    "curves": _curves,
    "attacks": _attacks,
    "sequential": _sequential,
    "scaling": _scaling,
    "criterion": _criterion,
}


LEGEND_INSIDE = 12  # legend entries an axis keeps inside it; a longer legend would squeeze the axes away


def fit_legends(fig: Figure) -> None:
    """Where an axis' legend is longer than ``LEGEND_INSIDE`` entries (a grid of many variants), the axes' legends
    become one legend outside them, on the right, and the figure grows to hold it."""
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    if not legends or max(len(legend.get_texts()) for legend in legends) <= LEGEND_INSIDE:
        return
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    width, height = fig.get_size_inches()
    fig.set_size_inches(width + 4, max(height, 0.17 * len(entries) + 1))
    fig.legend(list(entries.values()), list(entries), loc="outside right upper", fontsize="x-small")


def write_plots(cells: list[dict], rows: list[dict], out_dir: Path) -> dict[str, Path]:
    """Write ``<name>.png`` into ``out_dir`` for each plot of `PLOTS` that has data (atomically); return their paths.

    ``rows`` are `forgetkit.bench.leaderboard.leaderboard(cells)`.
    """
    styles = _styles(rows)
    paths: dict[str, Path] = {}
    for name, draw in PLOTS.items():
        fig = draw(cells, rows, styles)
        if fig is None:
            continue
        fit_legends(fig)
        path = Path(out_dir) / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        paths[name] = path
    return paths
