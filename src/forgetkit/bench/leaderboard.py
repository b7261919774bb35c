"""The benchmark leaderboard: per method variant and forget split, the mean ± sample std of every column over seeds.

Input are the grid's cell results (each cell's ``result.json`` as a dict); output are rows (plain, JSON-able
dicts) and their Markdown, CSV and JSON files. The plots and the HTML report format the same rows with the
same functions (`table`, `format_stat`), so every view shows the same numbers.
"""

from __future__ import annotations

import csv
import math
import re
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from forgetkit.io import atomic_path, write_json, write_text

FORGET_QUALITY = "metrics.forget_quality"
REFERENCE_ORDER = ("target", "oracle")
MISSING = "–"
TEXT_COLUMNS = ("split", "variant", "n", "status")


def cell_value(cell: dict, key: str) -> object:
    """Column ``key`` of one cell result: a derived column's function, else a dotted path (None if absent)."""
    if key in DERIVED:
        return DERIVED[key](cell)
    value: object = cell
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _relearn_recovery(cell: dict) -> float | None:
    """How much forget probability relearning brought back: after − before (positive: the forgetting was shallow)."""
    before = cell_value(cell, "attacks.relearn.before.forget_probability")
    after = cell_value(cell, "attacks.relearn.after.forget_probability")
    if not (_is_number(before) and _is_number(after)):
        return None
    return after - before


def _sequential_final_utility(cell: dict) -> float | None:
    """Model utility after the last of the sequential forget requests."""
    requests = cell_value(cell, "attacks.sequential")
    if not requests:
        return None
    return requests[-1].get("model_utility")


def _worst_jailbreak(cell: dict) -> float | None:
    """The forget ROUGE-L of the jailbreak that drew most of the answers out (the worst case for the defender)."""
    values = [v.get("forget_rouge_l") for k, v in (cell.get("attacks") or {}).items()
              if k.startswith("jailbreak_") and isinstance(v, dict)]
    values = [v for v in values if _is_number(v)]
    return max(values) if values else None


def _curve_points(cell: dict, key: str) -> list[tuple[int, float]]:
    return [(p["step"], p[key]) for p in cell.get("curve") or [] if _is_number(p.get(key))]


def _best_in_training(cell: dict) -> dict | None:
    """The curve's quick evaluation with the highest Forget Quality (the first such step)."""
    evals = [p for p in cell.get("curve") or [] if _is_number(p.get("forget_quality"))]
    return max(evals, key=lambda p: p["forget_quality"]) if evals else None


def _best_value(key: str) -> Callable[[dict], float | None]:
    """A column: ``key`` of the curve's best quick evaluation."""
    def value(cell: dict) -> float | None:
        best = _best_in_training(cell)
        return None if best is None else best.get(key)

    return value


def _grad_norm_growth(cell: dict) -> float | None:
    """The largest gradient norm of the run over its first step's: how far the objective ran away."""
    norms = [n for _, n in _curve_points(cell, "grad_norm")]
    return max(norms) / norms[0] if norms and norms[0] > 0 else None


def _final_weight_norm(cell: dict) -> float | None:
    norms = _curve_points(cell, "weight_norm")
    return norms[-1][1] if norms else None


DERIVED: dict[str, Callable[[dict], float | None]] = {
    "curve.best_forget_quality": _best_value("forget_quality"),
    "curve.model_utility_at_best": _best_value("model_utility"),
    "curve.best_step": _best_value("step"),
    "curve.grad_norm_growth": _grad_norm_growth,
    "curve.final_weight_norm": _final_weight_norm,
    "attacks.relearn.recovery": _relearn_recovery,
    "attacks.jailbreak.worst_rouge_l": _worst_jailbreak,
    "attacks.sequential.final_model_utility": _sequential_final_utility,
}

COLUMNS: list[tuple[str, str]] = [
    (FORGET_QUALITY, "FQ"),
    ("metrics.model_utility", "MU"),
    ("metrics.forget_probability", "forget prob"),
    ("metrics.forget_rouge_l", "forget ROUGE-L"),
    ("metrics.forget_truth_ratio", "truth ratio"),
    ("metrics.mia_auc", "MIA AUC"),
    ("metrics.privleak", "PrivLeak"),
    ("metrics.paraphrase_probability", "paraphrase prob"),
    ("criterion.chosen.step", "stop step"),
    ("metrics.calibration_auc", "calibration AUC"),
    ("metrics.weat.weat6_career_family", "WEAT 6 d"),
    ("metrics.weat.weat7_math_arts", "WEAT 7 d"),
    ("metrics.weat.weat8_science_arts", "WEAT 8 d"),
    ("metrics.toxic_rate", "toxic rate"),
    ("metrics.smoothed_emission_bound", "smoothed emission bound"),
    ("metrics.edit_success_before", "edit success (target)"),
    ("metrics.edit_success", "edit success"),
    ("metrics.edit_old_answer_rate", "old answer rate"),
    ("certificate.epsilon", "ε"),
    ("certificate.sigma", "σ per step"),
    ("curve.best_forget_quality", "best FQ in training"),
    ("curve.best_step", "best step"),
    ("curve.model_utility_at_best", "MU at best"),
    ("curve.grad_norm_growth", "grad norm growth"),
    ("curve.final_weight_norm", "final weight norm"),
    ("cost.wall_time_s", "time s"),
    ("cost.time_vs_retrain", "× retrain time"),
    ("cost.peak_memory_mb", "peak MB"),
    ("cost.memory_vs_retrain", "× retrain mem"),
    ("cost.trainable_parameters", "trainable"),
    ("attacks.relearn.recovery", "relearn recovery"),
    ("attacks.quantize_8.forget_probability", "8-bit forget prob"),
    ("attacks.quantize_4.forget_probability", "4-bit forget prob"),
    ("attacks.prompt.forget_rouge_l", "prompt forget ROUGE-L"),
    ("attacks.jailbreak_roleplay.forget_rouge_l", "roleplay ROUGE-L"),
    ("attacks.jailbreak_ignore_instructions.forget_rouge_l", "ignore-instructions ROUGE-L"),
    ("attacks.jailbreak_multi_turn.forget_rouge_l", "multi-turn ROUGE-L"),
    ("attacks.jailbreak_completion.forget_rouge_l", "completion ROUGE-L"),
    ("attacks.jailbreak.worst_rouge_l", "worst jailbreak ROUGE-L"),
    ("attacks.sequential.final_model_utility", "sequential final MU"),
]

# The attacks table of the report and the bars of attacks.png: forget probability after each attack.
ATTACK_COLUMNS: list[tuple[str, str]] = [
    ("metrics.forget_probability", "after unlearning"),
    ("attacks.relearn.before.forget_probability", "relearn: before"),
    ("attacks.relearn.after.forget_probability", "relearn: after"),
    ("attacks.quantize_8.forget_probability", "8-bit"),
    ("attacks.quantize_4.forget_probability", "4-bit"),
    ("attacks.prompt.forget_probability", "prompt attack"),
    ("attacks.jailbreak_roleplay.forget_probability", "roleplay"),
    ("attacks.jailbreak_ignore_instructions.forget_probability", "ignore instructions"),
    ("attacks.jailbreak_multi_turn.forget_probability", "multi-turn"),
    ("attacks.jailbreak_completion.forget_probability", "completion (rest of answer)"),
]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def summarise(values: Iterable[object]) -> dict:
    """Mean, sample standard deviation (ddof=1; None for fewer than two values) and count of the numbers given.

    None and non-finite values count as missing and are left out.
    """
    numbers = [float(v) for v in values if _is_number(v)]
    if not numbers:
        return {"mean": None, "std": None, "n": 0}
    # statistics computes in exact rational arithmetic: equal seeds give a std of exactly 0, not 1e-17.
    std = statistics.stdev(numbers) if len(numbers) > 1 else None
    return {"mean": statistics.mean(numbers), "std": std, "n": len(numbers)}


def leaderboard(cells: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> list[dict]:
    """One row per (variant, split): seeds, status counts, and `summarise` of each column over the done cells.

    A group none of whose cells is done keeps its status and reason and has no numbers. Rows are sorted by
    split, then the references (target, oracle), then the methods by mean forget quality, best first, None last.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell in cells:
        info = cell["cell"]
        groups.setdefault((info["variant"], info["split"]), []).append(cell)
    keyed = []
    for group in groups.values():
        done = [c for c in group if c["status"] == "done"]
        row = _row(group, done, columns)
        keyed.append((_order(row, summarise(cell_value(c, FORGET_QUALITY) for c in done)["mean"]), row))
    return [row for _, row in sorted(keyed, key=lambda pair: pair[0])]


def _row(group: list[dict], done: list[dict], columns: list[tuple[str, str]]) -> dict:
    info = group[0]["cell"]
    counts = Counter(c["status"] for c in group)
    reasons = list(dict.fromkeys(c["reason"] for c in group if c.get("reason")))
    return {
        "split": info["split"],
        "variant": info["variant"],
        "method": info.get("method"),
        "kind": info.get("kind", "method"),
        "n": len(group),
        "seeds": sorted(c["cell"]["seed"] for c in group),
        "status": "done" if done else counts.most_common(1)[0][0],
        "status_counts": dict(counts),
        "reason": "; ".join(reasons) or None,
        "columns": {key: summarise(cell_value(c, key) for c in done) for key, _ in columns},
    }


def _order(row: dict, forget_quality: float | None) -> tuple:
    if row["kind"] == "reference":
        variant = row["variant"]
        rank = REFERENCE_ORDER.index(variant) if variant in REFERENCE_ORDER else len(REFERENCE_ORDER)
        return (row["split"], 0, rank, 0.0, variant)
    if forget_quality is None:
        return (row["split"], 1, 1, 0.0, row["variant"])
    return (row["split"], 1, 0, -forget_quality, row["variant"])


def format_number(value: float | None) -> str:
    """3 significant digits; scientific notation below 1e-3 in magnitude; ``–`` when missing."""
    if value is None:
        return MISSING
    if value != 0 and abs(value) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3g}"


def format_stat(summary: dict) -> str:
    """``mean ± std`` (std left out when None), or ``–`` when there is no mean."""
    if summary["mean"] is None:
        return MISSING
    if summary["std"] is None:
        return format_number(summary["mean"])
    return f"{format_number(summary['mean'])} ± {format_number(summary['std'])}"


def status_text(row: dict) -> str:
    """``done`` when every seed is done, else the status counts and the reasons, e.g. ``refused 3: too big``."""
    counts = row["status_counts"]
    if set(counts) == {"done"}:
        return "done"
    text = ", ".join(f"{status} {count}" for status, count in counts.items())
    return f"{text}: {row['reason']}" if row["reason"] else text


def table(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> tuple[list[str], list[list[str]]]:
    """Header and body (formatted strings) of a leaderboard table: the `TEXT_COLUMNS`, then one per column."""
    header = [*TEXT_COLUMNS, *(label for _, label in columns)]
    body = [
        [row["split"], row["variant"], str(row["n"]), status_text(row),
         *(format_stat(row["columns"][key]) for key, _ in columns)]
        for row in rows
    ]
    return header, body


def _markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def format_markdown(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """The rows as a Markdown table (for leaderboard.md and the terminal); numbers right-aligned."""
    header, body = table(rows, columns)
    rule = ["---"] * len(TEXT_COLUMNS) + ["---:"] * len(columns)
    return "\n".join([_markdown_line(header), _markdown_line(rule), *map(_markdown_line, body)]) + "\n"


def csv_name(label: str) -> str:
    """A column label as a CSV name stem: ``FQ`` → ``fq``, ``× retrain time`` → ``x_retrain_time``."""
    return re.sub(r"[^0-9a-z]+", "_", label.lower().replace("×", "x")).strip("_")


def write_leaderboard(rows: list[dict], out_dir: Path) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.csv (``<name>_mean``, ``<name>_std`` per column) and leaderboard.json.

    Each file is written atomically. Returns the paths by format (``markdown``, ``csv``, ``json``).
    """
    out_dir = Path(out_dir)
    paths = {
        "markdown": out_dir / "leaderboard.md",
        "csv": out_dir / "leaderboard.csv",
        "json": out_dir / "leaderboard.json",
    }
    write_text(paths["markdown"], format_markdown(rows))
    header = ["split", "variant", "method", "kind", "n", "seeds", "status", "status_counts", "reason"]
    for _, label in COLUMNS:
        header += [f"{csv_name(label)}_mean", f"{csv_name(label)}_std"]
    with atomic_path(paths["csv"]) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            stats = [row["columns"][key][part] for key, _ in COLUMNS for part in ("mean", "std")]
            writer.writerow([
                row["split"], row["variant"], row["method"], row["kind"], row["n"],
                ";".join(map(str, row["seeds"])), row["status"],
                ";".join(f"{status}={count}" for status, count in row["status_counts"].items()),
                row["reason"], *stats,
            ])
    write_json(paths["json"], rows)
    return paths


def attack_rows(cells: list[dict]) -> list[dict]:
    """Leaderboard rows over `ATTACK_COLUMNS`, only for the groups with at least one attack result."""
    return [
        row for row in leaderboard(cells, ATTACK_COLUMNS)
        if any(row["columns"][key]["n"] for key, _ in ATTACK_COLUMNS[1:])
    ]


def criterion_tracking(cells: list[dict]) -> dict | None:
    """Does the oracle-free signal track the oracle's? Over every finished cell with both numbers: Spearman's rank
    correlation between the distance of the forget-vs-calibration AUC from 0.5 and Forget Quality (negative:
    the closer to indistinguishable, the higher the Forget Quality). None with fewer than three cells."""
    from scipy.stats import spearmanr

    pairs = [(abs(c["metrics"]["calibration_auc"] - 0.5), c["metrics"]["forget_quality"]) for c in cells
             if c.get("status") == "done" and _is_number(c["metrics"].get("calibration_auc"))
             and _is_number(c["metrics"].get("forget_quality"))]
    if len(pairs) < 3:
        return None
    rho, p_value = spearmanr([d for d, _ in pairs], [fq for _, fq in pairs])
    return {"cells": len(pairs), "spearman_rho": float(rho), "p_value": float(p_value)}
