"""The output side of ``forgetkit bench``: leaderboard arithmetic and files, plots, and the self-contained HTML report
(checked in headless Chromium when it is installed or can be installed)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from forgetkit.bench.leaderboard import (
    COLUMNS,
    csv_name,
    format_markdown,
    format_number,
    leaderboard,
    write_leaderboard,
)
from forgetkit.bench.plots import pareto_front, write_plots
from forgetkit.bench.report import PRIVACY_NOTE, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_cell(variant: str, split: str = "forget10", seed: int = 0, status: str = "done", *, kind: str = "method",
              reason: str | None = None, metrics: dict | None = None, cost: dict | None = None,
              attacks: dict | None = None, curve: list | None = None) -> dict:
    """One cell result as the runner writes it; refused and diverged cells have no numbers."""
    cell = {"cell": {"id": f"{variant}-{split}-s{seed}-0000abcd", "kind": kind, "method": variant.split("[")[0],
                     "variant": variant, "split": split, "seed": seed}, "status": status}
    if status != "done":
        return {**cell, "reason": reason, "metrics": {}, "cost": {}, "attacks": {}, "curve": []}
    return {**cell, "metrics": metrics or {}, "cost": cost or {}, "attacks": attacks or {}, "curve": curve or []}


def grid() -> list[dict]:
    """A small grid with every kind of result: references, methods over seeds, attacks, refusal, divergence."""
    cells = []
    for split in ("forget01", "forget10"):
        for name, fq, mu in (("target", 1e-6, 0.62), ("oracle", 0.9, 0.6)):
            cells.append(make_cell(name, split, kind="reference",
                                   metrics={"forget_quality": fq, "model_utility": mu, "forget_probability": 0.2}))
        for v, variant in enumerate(("npo", "npo[train.lr=0.01]", "graddiff")):
            for seed in range(3):
                base = 0.1 * (v + 1) + 0.01 * seed
                attacks = {
                    "relearn": {"before": {"forget_probability": base, "forget_rouge_l": 0.3},
                                "after": {"forget_probability": base + 0.3, "forget_rouge_l": 0.5}, "steps": 10},
                    "quantize_8": {"forget_probability": base + 0.01, "forget_rouge_l": 0.3, "model_utility": 0.5},
                    "quantize_4": {"forget_probability": base + 0.1, "forget_rouge_l": 0.35, "model_utility": 0.4},
                    "prompt": {"forget_probability": base + 0.05, "forget_rouge_l": 0.4},
                    "sequential": [{"request": r, "forget_probability": base / r, "forget_rouge_l": 0.3,
                                    "model_utility": 0.55 - 0.05 * r} for r in (1, 2, 3)],
                }
                cells.append(make_cell(
                    variant, split, seed,
                    metrics={"forget_quality": 10.0 ** -(v + 1) * (1 + seed), "model_utility": 0.4 + 0.05 * v,
                             "forget_probability": base, "forget_rouge_l": 0.3, "forget_truth_ratio": 0.6,
                             "mia_auc": 0.55, "privleak": None, "paraphrase_probability": 0.2},
                    cost={"wall_time_s": 12.0 + seed, "peak_memory_mb": 900.0, "time_vs_retrain": 0.1 * (v + 1),
                          "memory_vs_retrain": 1.1, "trainable_parameters": 4096, "steps": 20},
                    attacks=attacks, curve=[{"step": s, "loss": 3.0 - 0.1 * s - v} for s in range(20)]))
        cells.append(make_cell("rmu", split, metrics={"forget_quality": None, "model_utility": 0.3}))
        cells.append(make_cell("fast_ntk", split, 0, "refused", reason="needs 12.3 GB > max_memory_gb=4 <b>"))
        cells.append(make_cell("ga", split, 0, "diverged", reason="loss is NaN at step 7"))
    return cells


# ---------------------------------------------------------------- leaderboard arithmetic


def test_mean_and_sample_std_over_seeds():
    cells = [make_cell("npo", seed=s, metrics={"forget_quality": fq, "model_utility": mu})
             for s, (fq, mu) in enumerate([(1.0, 0.5), (2.0, None), (4.0, 0.7)])]
    (row,) = leaderboard(cells)
    fq, mu = row["columns"]["metrics.forget_quality"], row["columns"]["metrics.model_utility"]
    assert fq["mean"] == pytest.approx(7 / 3) and fq["std"] == pytest.approx(math.sqrt(7 / 3)) and fq["n"] == 3
    # the missing value is left out: mean and std of 0.5 and 0.7
    assert mu["mean"] == pytest.approx(0.6) and mu["std"] == pytest.approx(math.sqrt(0.02)) and mu["n"] == 2
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2] and row["status_counts"] == {"done": 3}
    assert "2.33 ± 1.53" in format_markdown([row])


def test_single_seed_has_no_std_and_missing_column_is_none():
    (row,) = leaderboard([make_cell("npo", metrics={"forget_quality": 0.25, "privleak": None})])
    assert row["columns"]["metrics.forget_quality"] == {"mean": 0.25, "std": None, "n": 1}
    assert row["columns"]["metrics.privleak"] == {"mean": None, "std": None, "n": 0}
    line = format_markdown([row]).splitlines()[2]
    assert "| 0.25 |" in line and "±" not in line and "–" in line


def test_refused_and_diverged_groups_keep_status_and_reason_without_numbers():
    cells = [make_cell("fast_ntk", seed=s, status="refused", reason="needs 12 GB") for s in range(2)]
    cells += [make_cell("ga", seed=0, status="diverged", reason="NaN loss"),
              make_cell("ga", seed=1, metrics={"forget_quality": 0.5})]
    rows = {r["variant"]: r for r in leaderboard(cells)}
    refused = rows["fast_ntk"]
    assert refused["status"] == "refused" and refused["reason"] == "needs 12 GB" and refused["n"] == 2
    assert all(c["mean"] is None for c in refused["columns"].values())
    mixed = rows["ga"]
    assert mixed["status"] == "done" and mixed["status_counts"] == {"diverged": 1, "done": 1}
    assert mixed["columns"]["metrics.forget_quality"] == {"mean": 0.5, "std": None, "n": 1}
    text = format_markdown(list(rows.values()))
    assert "refused 2: needs 12 GB" in text and "diverged 1, done 1: NaN loss" in text


def test_rows_sorted_by_split_references_first_then_forget_quality():
    cells = [
        make_cell("b", "forget10", metrics={"forget_quality": 0.2}),
        make_cell("a", "forget10", metrics={"forget_quality": 0.1}),
        make_cell("none", "forget10", metrics={}),
        make_cell("oracle", "forget10", kind="reference", metrics={"forget_quality": 1.0}),
        make_cell("target", "forget10", kind="reference", metrics={"forget_quality": 1e-9}),
        make_cell("c", "forget01", metrics={"forget_quality": 0.01}),
    ]
    assert [(r["split"], r["variant"]) for r in leaderboard(cells)] == [
        ("forget01", "c"), ("forget10", "target"), ("forget10", "oracle"), ("forget10", "b"), ("forget10", "a"),
        ("forget10", "none")]


def test_derived_attack_columns():
    relearn = {"before": {"forget_probability": 0.1}, "after": {"forget_probability": 0.6}, "steps": 5}
    sequential = [{"request": 1, "model_utility": 0.5}, {"request": 2, "model_utility": 0.4}]
    cells = [make_cell("npo", seed=0, attacks={"relearn": relearn, "sequential": sequential}),
             make_cell("npo", seed=1, attacks={"relearn": {"before": {"forget_probability": 0.2}}})]
    columns = leaderboard(cells)[0]["columns"]
    assert columns["attacks.relearn.recovery"]["mean"] == pytest.approx(0.5)
    assert columns["attacks.relearn.recovery"]["n"] == 1  # seed 1 has no "after": missing, not zero
    assert columns["attacks.sequential.final_model_utility"]["mean"] == pytest.approx(0.4)


def test_number_format():
    assert format_number(None) == "–"
    assert format_number(0.0) == "0"
    assert format_number(2 / 3) == "0.667"
    assert format_number(123.456) == "123"
    assert format_number(1.234e-5) == "1.23e-05"
    assert format_number(-0.0004) == "-4.00e-04"
    assert format_number(0.001) == "0.001"


def test_write_leaderboard_files(tmp_path):
    rows = leaderboard(grid())
    paths = write_leaderboard(rows, tmp_path / "out")
    assert set(paths) == {"markdown", "csv", "json"} and all(p.is_file() for p in paths.values())
    markdown = paths["markdown"].read_text(encoding="utf-8")
    header = markdown.splitlines()[0]
    assert all(f" {label} |" in header for _, label in COLUMNS)
    assert len(markdown.splitlines()) == 2 + len(rows)
    with paths["csv"].open(newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    names = [csv_name(label) for _, label in COLUMNS]
    assert len(set(names)) == len(names)
    assert {"fq_mean", "fq_std", "mu_mean", "x_retrain_time_mean", "relearn_recovery_std"} <= set(table[0])
    assert all(f"{n}_mean" in table[0] and f"{n}_std" in table[0] for n in names)
    npo = next(r for r in table if r["variant"] == "npo" and r["split"] == "forget10")
    assert float(npo["fq_mean"]) == pytest.approx(0.2) and float(npo["fq_std"]) == pytest.approx(0.1)
    assert npo["privleak_mean"] == "" and npo["seeds"] == "0;1;2"
    assert json.loads(paths["json"].read_text(encoding="utf-8")) == rows
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_pareto_front_maximises_both():
    points = [(0.1, 0.9), (0.5, 0.5), (0.4, 0.4), (1.0, 0.2), (0.05, 0.8)]
    assert pareto_front(points) == [(0.1, 0.9), (0.5, 0.5), (1.0, 0.2)]


# ---------------------------------------------------------------- plots and report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    """Leaderboard, plots and report of `grid`, written once for the tests below."""
    out = tmp_path_factory.mktemp("bench")
    cells = grid()
    rows = leaderboard(cells)
    plots = write_plots(cells, rows, out / "plots")
    meta = {"config": "micro", "date": "2025-01-01T00:00:00+00:00", "machine": "x86_64, 2 cores",
            "grid": "6 methods × 2 splits × 3 seeds", "cells": len(cells), "done": 24, "refused or diverged": 4}
    path = write_report("forgetkit bench: micro <test>", cells, rows, plots, out / "report.html", meta)
    return {"out": out, "cells": cells, "plots": plots, "path": path, "html": path.read_text(encoding="utf-8")}


def test_write_plots_writes_valid_pngs(report):
    assert set(report["plots"]) == {"pareto", "cost", "curves", "attacks", "sequential", "scaling"}
    for name, path in report["plots"].items():
        assert path == report["out"] / "plots" / f"{name}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_plots_without_data_are_skipped(tmp_path):
    cells = [make_cell("npo", metrics={"forget_quality": 0.3, "model_utility": 0.5}),
             make_cell("ga", status="refused", reason="no")]
    plots = write_plots(cells, leaderboard(cells), tmp_path)
    assert set(plots) == {"pareto"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png"]


def test_report_is_self_contained_html(report):
    page = report["html"]
    assert page.startswith("<!DOCTYPE html>") and page.count("<table") == 4  # meta, leaderboard, attacks, cells
    assert len(re.findall(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', page)) == len(report["plots"])
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert PRIVACY_NOTE in page
    # text is escaped, numbers formatted as in leaderboard.md
    assert "micro &lt;test&gt;" in page and "max_memory_gb=4 &lt;b&gt;" in page and "<b>" not in page
    assert "0.2 ± 0.1" in page and "relearn: after" in page


# ---------------------------------------------------------------- rendering in headless Chromium


def find_chromium() -> tuple[str | None, str]:
    """The Chromium executable (``make browser`` installs it; the tests never do): (path, "") or (None, why not)."""
    found = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    return (found, "") if found else (None, "chromium is not installed: run `make browser` (CI does, before the tests)")


@pytest.fixture(scope="module")
def chromium() -> str:
    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


def run_chromium(chromium: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               f"--user-data-dir={cwd / 'profile'}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    from PIL import Image

    url = report["path"].resolve().as_uri()
    dom = run_chromium(chromium, "--dump-dom", url, cwd=tmp_path)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count("<table") == 4 and dom.stdout.count("<tr>") > len(report["cells"])
    assert dom.stdout.count('<img src="data:image/png;base64,') == len(report["plots"])

    shot = tmp_path / "report.png"
    result = run_chromium(chromium, f"--screenshot={shot}", "--window-size=1200,2000", url, cwd=tmp_path)
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    with Image.open(shot) as image:
        rgb = image.convert("RGB")
        assert rgb.size == (1200, 2000)
        colours = rgb.getcolors(maxcolors=1 << 20)
        non_white = sum(count for count, colour in colours if colour != (255, 255, 255))
    assert len(colours) > 300 and non_white > 0.05 * 1200 * 2000


def test_every_attack_column_has_a_bar_label():
    from forgetkit.bench.leaderboard import ATTACK_COLUMNS
    from forgetkit.bench.plots import BAR_LABELS

    assert {key for key, _ in ATTACK_COLUMNS} <= set(BAR_LABELS)


def test_a_long_legend_moves_outside_the_axes_and_the_figure_grows():
    """A grid of many variants would squeeze the axes to nothing under their legends (matplotlib then drops the
    layout): past ``LEGEND_INSIDE`` entries the axes' legends become one figure legend beside them."""
    import warnings
    from io import BytesIO

    from matplotlib.figure import Figure

    from forgetkit.bench.plots import LEGEND_INSIDE, fit_legends

    def figure(lines: int) -> Figure:
        fig = Figure(figsize=(8, 4), layout="constrained")
        for ax in fig.subplots(1, 2):
            for i in range(lines):
                ax.plot([0, 1], [i, i + 1], label=f"variant {i}")
            ax.legend(fontsize="small")
        return fig

    few = figure(3)
    fit_legends(few)
    assert all(ax.get_legend() is not None for ax in few.axes) and not few.legends
    many = figure(LEGEND_INSIDE + 28)
    fit_legends(many)
    assert all(ax.get_legend() is None for ax in many.axes) and len(many.legends) == 1
    assert len(many.legends[0].get_texts()) == LEGEND_INSIDE + 28  # each label once, not once per axis
    assert many.get_size_inches()[1] > 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed"
        many.savefig(BytesIO(), format="png", dpi=50)
