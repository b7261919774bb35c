"""``forgetkit bench --config NAME``: run (or reuse) the grid, then write the leaderboard, plots and report.

``--executor ray`` spreads the cells over Ray; ``--cells I/N`` computes slice I of N only (one job of a
job array: no leaderboard), and ``--report-only`` gathers what the cells hold into the leaderboard,
plots and report without computing anything.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone

from forgetkit.bench.config import BenchConfig
from forgetkit.bench.grid import add_cost_ratios
from forgetkit.bench.runner import Bench
from forgetkit.data.records import records_hash
from forgetkit.errors import ConfigError, ForgetkitError
from forgetkit.io import write_json


def run_bench(config: BenchConfig, quiet: bool = False, executor: str = "serial", ray_address: str | None = None,
              cells_slice: tuple[int, int] | None = None, report_only: bool = False) -> dict:
    """Compute the missing cells (of the slice), write every output into the bench directory; return paths and
    rows. A slice writes no leaderboard; ``report_only`` computes nothing and reports what is there."""
    from forgetkit.bench.leaderboard import criterion_tracking, leaderboard, write_leaderboard
    from forgetkit.bench.plots import write_plots
    from forgetkit.bench.report import write_report

    if report_only and cells_slice:
        raise ConfigError("--report-only gathers every slice: give it without --cells")
    bench = Bench(config, quiet=quiet, build_source=not report_only)
    missing: list[str] = []
    if report_only:
        results, missing = bench.collect()
        if not results:
            raise ForgetkitError(f"{bench.out}: no finished cell to report (run the grid, or its slices, first)")
    else:
        results = bench.run(executor, cells_slice, ray_address)
    if cells_slice:
        return {"out": bench.out, "results": results, "slice": cells_slice, "missing": []}
    add_cost_ratios(results)
    out = bench.out
    write_json(out / "cells.json", results)
    rows = leaderboard(results)
    files = write_leaderboard(rows, out)
    plots = write_plots(results, rows, out / "plots")
    meta = {"config": config.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {_cpu_count()} cores, {platform.system()}",
            "starting point": str(getattr(bench.source, "run", None) or config.data.model),
            "grid": f"{len(config.methods)} methods × {len(config.splits)} splits × {len(config.seeds)} seeds",
            "cells": len(results), "computed now": sum(not r["cached"] for r in results),
            "done": sum(r["status"] == "done" for r in results),
            "refused or diverged": sum(r["status"] in ("refused", "diverged") for r in results),
            "crashed": sum(r["status"] == "crashed" for r in results), "missing": len(missing),
            "forget sets": {split: _identify(bench.source.forget(split)) for split in config.splits}}
    tracking = criterion_tracking(results)
    if tracking:
        meta["oracle-free criterion vs Forget Quality"] = (
            f"Spearman ρ = {tracking['spearman_rho']:.3f} (p = {tracking['p_value']:.2g}) between |calibration AUC − "
            f"0.5| and FQ over {tracking['cells']} cells")
    report = write_report(f"forgetkit bench: {config.name}", results, rows, plots, out / "report.html", meta)
    return {"out": out, "rows": rows, "results": results, "files": {**files, "report": report}, "plots": plots,
            "meta": meta, "missing": missing}


def _identify(records) -> str:
    """A forget set as the report names it: count and content hash, never text."""
    return f"{len(records)} records, sha256 {records_hash(records)}"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
