"""Bench executors: the same micro grid serially, as Ray tasks on a local runtime of 2 CPUs, and as two
``--cells`` slices gathered by ``--report-only`` gives the same leaderboard (timings aside); a cell whose
Ray worker dies is recorded as crashed, the grid finishes, and a rerun computes only that cell."""

from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import pytest

from forgetkit.bench import executors, runner
from forgetkit.bench.command import run_bench
from forgetkit.bench.config import load_bench_config
from forgetkit.bench.runner import Bench, compute_cell, train_shard_set, worker_config
from forgetkit.cli import main
from forgetkit.errors import ConfigError, ForgetkitError

TIMING = ("cost.wall_time_s", "cost.time_vs_retrain", "cost.peak_memory_mb", "cost.memory_vs_retrain")


def _config(path: Path, run: Path, out: Path, methods: tuple[str, ...] = ("npo", "graddiff"),
            seeds: str = "[0, 1]") -> Path:
    entries = "".join(f"\n  - {{name: {m}, overrides: {{train.epochs: 1, train.batch_size: 8}}}}" for m in methods)
    path.write_text(textwrap.dedent(f"""
        name: grid
        run: {run}
        out: {out}
        methods:""") + entries + textwrap.dedent(f"""
        seeds: {seeds}
        attacks: {{relearn: {{steps: 2, batch_size: 4}}, quantize_bits: [4], prompt: true}}
        eval: {{retain_limit: 10, quick_retain: 5, max_new_tokens: 8, verbatim_new_tokens: 8,
               canary_candidates: 10}}
    """))
    return path


def _numbers(out: Path) -> dict:
    rows = json.loads((out / "leaderboard.json").read_text())
    return {(r["split"], r["variant"], key, part): value for r in rows for key, stats in r["columns"].items()
            if key not in TIMING for part, value in stats.items()}


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, x in a.items():
        y = b[key]
        if isinstance(x, float) and isinstance(y, float):
            assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6), (key, x, y)
        else:
            assert x == y, (key, x, y)


@pytest.fixture(scope="module")
def ray_runtime():
    """One local Ray runtime of 2 CPUs for the module (the executor joins it instead of starting its own)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_serial_ray_and_slices_give_the_same_leaderboard(unlearn_run, tmp_path, ray_runtime, capsys):
    outs = {name: tmp_path / name for name in ("serial", "ray", "sliced")}
    configs = {name: _config(tmp_path / f"{name}.yaml", unlearn_run, out) for name, out in outs.items()}
    assert main(["--quiet", "bench", "--config", str(configs["serial"])]) == 0
    assert main(["--quiet", "bench", "--config", str(configs["ray"]), "--executor", "ray"]) == 0
    for part in ("1/2", "2/2"):
        assert main(["--quiet", "bench", "--config", str(configs["sliced"]), "--cells", part]) == 0
    assert not (outs["sliced"] / "leaderboard.json").exists()  # a slice reports nothing
    capsys.readouterr()
    assert main(["--quiet", "bench", "--config", str(configs["sliced"]), "--report-only", "--columns",
                 "MU,FQ,time s"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header == "| split | variant | n | status | MU | FQ | time s |"  # the columns asked for, in that order

    serial = _numbers(outs["serial"])
    assert len({k[1] for k in serial}) == 4  # npo, graddiff, target, oracle
    _same(serial, _numbers(outs["ray"]))
    _same(serial, _numbers(outs["sliced"]))
    cell_dirs = sorted((outs["ray"] / "cells").iterdir())
    assert len(cell_dirs) == 6 and all((d / executors.CELL_LOG).is_file() for d in cell_dirs)
    # each cell ran in its own worker process: the peak memory of a method cell is its own
    peaks = [json.loads((d / "result.json").read_text())["cost"].get("peak_memory_mb") for d in cell_dirs]
    assert all(p is None or p > 0 for p in peaks)


def test_a_crashed_worker_is_recorded_the_grid_finishes_and_a_rerun_computes_only_it(unlearn_run, tmp_path,
                                                                                   ray_runtime):
    config = _config(tmp_path / "g.yaml", unlearn_run, tmp_path / "out", methods=("npo",), seeds="[0]")
    bench = Bench(load_bench_config(str(config)), quiet=True)
    cells = bench.grid()
    victim = next(c for c in cells if c.method == "npo").id

    def dies_on_the_victim(config_data: dict, cell_id: str) -> dict:  # pickled by value into the workers
        if cell_id == victim:
            os._exit(1)
        return compute_cell(config_data, cell_id)

    worker = {"config": worker_config(bench), "cell": dies_on_the_victim, "shard_set": train_shard_set}
    results = executors.run_ray(bench, cells, None, worker)
    status = {r["cell"]["id"]: r["status"] for r in results}
    assert status.pop(victim) == "crashed" and set(status.values()) == {"done"}
    crash = json.loads((tmp_path / "out" / "cells" / victim / executors.CRASH).read_text())
    assert "crashed" == crash["status"] and crash["reason"]
    assert not (tmp_path / "out" / "cells" / victim / "result.json").exists()

    report = run_bench(bench.config, quiet=True, report_only=True)  # the crash shows in the report
    assert report["meta"]["crashed"] == 1
    again = bench.run("ray")
    assert [r["cell"]["id"] for r in again if not r["cached"]] == [victim]
    assert all(r["status"] == "done" for r in again)
    assert not (tmp_path / "out" / "cells" / victim / executors.CRASH).exists()


def test_an_error_inside_a_cell_is_recorded_with_its_traceback_in_the_cell_log(unlearn_run, tmp_path, monkeypatch):
    bench = Bench(load_bench_config(str(_config(tmp_path / "g.yaml", unlearn_run, tmp_path / "out"))), quiet=True)
    cell = next(c for c in bench.grid() if c.method == "graddiff")

    def broken(bench, cell):
        raise RuntimeError("a bug in a method")

    monkeypatch.setattr(runner, "compute", broken)
    result = compute_cell(worker_config(bench), cell.id)
    assert result["status"] == "crashed" and result["reason"] == "RuntimeError: a bug in a method"
    log = (tmp_path / "out" / "cells" / cell.id / executors.CELL_LOG).read_text()
    assert "Traceback" in log and "a bug in a method" in log


def test_slices_partition_the_grid_and_every_slice_has_the_oracle(unlearn_run, tmp_path):
    bench = Bench(load_bench_config(str(_config(tmp_path / "g.yaml", unlearn_run, tmp_path / "out"))), quiet=True)
    cells = bench.grid()
    slices = [bench.grid((i, 3)) for i in (1, 2, 3)]
    others = [{c.id for c in s if c.method != "oracle"} for s in slices]
    assert set().union(*others) == {c.id for c in cells if c.method != "oracle"}
    assert sum(map(len, others)) == len(cells) - 1  # disjoint
    assert all(any(c.method == "oracle" for c in s) for s in slices)
    assert [c.id for c in bench.grid((2, 3))] == [c.id for c in slices[1]]  # stable


def test_slice_and_resources_are_checked(tmp_path):
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(ConfigError):
            executors.parse_slice(bad)
    assert executors.parse_slice("2/4") == (2, 4)
    from forgetkit.bench.config import CellResources

    assert executors._task_options(CellResources(), {"CPU": 2}) == {"num_cpus": 1, "num_gpus": 0}
    assert executors._task_options(CellResources(), {"CPU": 16, "GPU": 4}) == {"num_cpus": 0, "num_gpus": 1}
    assert executors._task_options(CellResources(cpus=2, gpus=0), {"CPU": 16, "GPU": 4}) == {"num_cpus": 2,
                                                                                              "num_gpus": 0}
    with pytest.raises(ForgetkitError, match="exceeds what the Ray cluster has"):
        executors._task_options(CellResources(gpus=1), {"CPU": 2})


def test_a_bench_directory_a_worker_cannot_see_is_one_clear_error(tmp_path):
    marker = tmp_path / executors.VISIBILITY_FILE
    marker.write_text("token-a")
    assert executors._can_see(str(marker), "token-a")
    assert not executors._can_see(str(marker), "token-b")  # another machine's directory of the same name
    assert not executors._can_see(str(tmp_path / "elsewhere" / executors.VISIBILITY_FILE), "token-a")


def test_report_only_computes_nothing(unlearn_run, tmp_path, capsys):
    config = _config(tmp_path / "g.yaml", unlearn_run, tmp_path / "out")
    assert main(["--quiet", "bench", "--config", str(config), "--report-only"]) == 2
    assert "no finished cell to report" in capsys.readouterr().err
    assert not (tmp_path / "out" / "cells").exists() or not any((tmp_path / "out" / "cells").iterdir())
