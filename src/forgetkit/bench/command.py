"""``forgetkit bench --config NAME``: run (or reuse) the grid, then write the leaderboard, plots and report."""

from __future__ import annotations

import platform
from datetime import datetime, timezone

from forgetkit.bench.config import BenchConfig
from forgetkit.bench.runner import Bench, add_cost_ratios
from forgetkit.data.records import records_hash
from forgetkit.io import write_json


def run_bench(config: BenchConfig, quiet: bool = False) -> dict:
    """Compute the missing cells, write every output into the bench directory; return paths and rows."""
    from forgetkit.bench.leaderboard import leaderboard, write_leaderboard
    from forgetkit.bench.plots import write_plots
    from forgetkit.bench.report import write_report

    bench = Bench(config, quiet=quiet)
    results = bench.run()
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
            "refused or diverged": sum(r["status"] != "done" for r in results),
            "forget sets": {split: _identify(bench.source.forget(split)) for split in config.splits}}
    report = write_report(f"forgetkit bench: {config.name}", results, rows, plots, out / "report.html", meta)
    return {"out": out, "rows": rows, "results": results, "files": {**files, "report": report}, "plots": plots,
            "meta": meta}


def _identify(records) -> str:
    """A forget set as the report names it: count and content hash, never text."""
    return f"{len(records)} records, sha256 {records_hash(records)}"


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
