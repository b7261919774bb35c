"""``forgetkit bench``: run a grid of methods × forget splits × seeds, each cell cached by its config's hash.

:class:`Bench` holds one grid: its starting point (``bench.sources``), its cells and cache (``bench.grid``), how
each kind of cell is computed (``bench.cells``), evaluated (``bench.evaluation``) and attacked
(``bench.attacks``), and the executors that compute the missing ones (``bench.executors``). A cell without a
result resumes from what it finished (the unlearning run's checkpoint, its evaluation, each attack's file).
``sharded_exact`` cells delete the split from a shard set trained once per seed and settings
(``BENCH_DIR/shards/``).
"""

from __future__ import annotations

import contextlib
import traceback
from dataclasses import asdict
from pathlib import Path

from forgetkit import unlearn
from forgetkit.bench import executors
from forgetkit.bench.cells import compute_cell as compute
from forgetkit.bench.config import BenchConfig
from forgetkit.bench.evaluation import CellEvaluation
from forgetkit.bench.grid import RESULT, Cell, cached_result, grid_cells, intact, reference_cell
from forgetkit.bench.sources import RunSource, open_source
from forgetkit.checks import output_path
from forgetkit.config import build, config_hash
from forgetkit.device import resolve_device
from forgetkit.errors import ConfigError, ForgetkitError
from forgetkit.exact import command as exact_command
from forgetkit.exact.sharded import ShardConfig
from forgetkit.io import write_json
from forgetkit.locks import output_lock
from forgetkit.registry import unlearner
from forgetkit.request import UnlearnRequest, UnlearnResult
from forgetkit.runs import ModelRef


class Bench:
    """One grid: ``grid()`` lists it, ``run()`` computes what is missing and returns every cell's result."""

    def __init__(self, config: BenchConfig, quiet: bool = False, build_source: bool = True) -> None:
        for entry in config.methods:
            try:
                unlearner(entry.name)
            except ConfigError as exc:
                raise ConfigError(f"methods: {exc}") from None
            if entry.name == "retrain" and config.data is not None:
                raise ConfigError("methods: retrain starts from the base model, which data: does not name; give "
                                  "data.oracle_model (fine-tuned on the retain set only): it is the oracle row")
        self.config, self.quiet = config, quiet
        if config.out:  # before a prepare that may take minutes
            output_path(config.out, "the bench's out")
        self.source = open_source(config, quiet, build=build_source)
        default_out = (Path(config.run or getattr(self.source, "run", "runs")) / "bench" / config.name
                       if config.data is None else Path("runs/bench") / config.name)
        self.out = output_path(config.out or default_out, "the bench's out", self.source.inputs())
        self.ledger = self.out / "ledger.sqlite"  # the grid's requests, apart from the run's real ones
        self.evaluation = CellEvaluation(config, self.source, self.out, self.load, quiet)
        self._device = None

    @property
    def device(self):
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    def grid(self, cells_slice: tuple[int, int] | None = None) -> list[Cell]:
        """The grid's cells (checked distinct), or slice ``(I, N)`` of them."""
        cells = grid_cells(self.config, self.source)
        return [c for c in cells if cells_slice is None or executors.in_slice(c, *cells_slice)]

    def cell(self, cell_id: str) -> Cell:
        """The grid's cell of that id."""
        return {c.id: c for c in self.grid()}[cell_id]

    def run(self, executor: str = "serial", cells_slice: tuple[int, int] | None = None,
            ray_address: str | None = None) -> list[dict]:
        """Compute the missing cells of the grid (or of its slice) with ``executor``; every cell's result."""
        if executor not in executors.EXECUTORS:
            raise ConfigError(f"--executor must be one of {', '.join(executors.EXECUTORS)}, got '{executor}'")
        cells = self.grid(cells_slice)
        (self.out / "cells").mkdir(parents=True, exist_ok=True)
        if executor == "ray":
            return executors.run_ray(self, cells, ray_address, {"config": worker_config(self), "cell": compute_cell,
                                                                 "shard_set": train_shard_set})
        return executors.run_serial(self, cells)

    def collect(self) -> tuple[list[dict], list[str]]:
        """What the grid's cells hold now, computing nothing: the results (crashed cells as such), and the ids
        of the cells that have neither (``--report-only``; a damaged result is set aside: the cell has none)."""
        results, missing = [], []
        for cell in self.grid():
            cell_dir = self.out / "cells" / cell.id
            if (result := self.cached_result(cell)) is not None:
                results.append(result)
            elif (crash := executors.read_crash(cell_dir)) is not None:
                results.append({**crash, "cell": cell.describe(), "cached": True})
            else:
                missing.append(cell.id)
        return results, missing

    def cached_result(self, cell: Cell) -> dict | None:
        """The finished cell's result, else None (``grid.cached_result``)."""
        return cached_result(self.out, cell)

    def result_of(self, cell: Cell) -> dict:
        """The cell's result: read when it is finished, else computed and written (``result.json``, last)."""
        if (cached := self.cached_result(cell)) is not None:
            return cached
        path = self.out / "cells" / cell.id / RESULT
        with output_lock(path.parent, "the bench cell"):  # another bench computing it: refused in one line
            if (cached := self.cached_result(cell)) is not None:  # finished while this one waited to look
                return cached
            result = compute(self, cell)
            write_json(path, result)
            (path.parent / executors.CRASH).unlink(missing_ok=True)  # an earlier crash of this cell is superseded
        return {**result, "cached": False}

    # -- what the cells share: requests, shard sets, models ------------------------------------------------
    def request(self, cell: Cell, out: Path, **inputs) -> UnlearnRequest:
        """The cell's ``unlearn`` request into ``out``: on the source's split, or on ``inputs`` (model, adapter,
        files or records)."""
        config = cell.unlearn_config()
        inputs = inputs or self.source.request_kwargs(cell.split)
        if config.criterion.reference == "twins":  # the stop's reference is built from the records: no file read
            inputs = {k: v for k, v in inputs.items() if k != "calibration"}
        if cell.eval_every:  # the quick evaluations' Forget Quality: against the bench's own oracle evaluation
            inputs["oracle_log"] = str(self.oracle_evaluated(cell.split))
        return UnlearnRequest(out=str(out), config=config, device=self.config.device, ledger=str(self.ledger),
                              edits=cell.edits, eval_every=cell.eval_every, **inputs)

    def oracle_evaluated(self, split: str) -> Path:
        """The directory of the split's oracle evaluation, computing its cell first where it is not done."""
        if self.evaluation.oracle_log(split) is None:
            self.result_of(reference_cell(self.config, self.source, "oracle", split))
        return self.evaluation.oracle_eval_dir(split)

    def finished_or_run(self, request: UnlearnRequest) -> UnlearnResult:
        """The result of the request in ``request.out``: read when it finished, else run (or resumed). A finished
        one whose ``audit.json`` or ``summary.json`` is damaged is set aside and run again."""
        out = Path(request.out)
        if UnlearnResult.finished(out) and intact(out, ("audit.json", "summary.json")):
            return UnlearnResult.read(out)
        return unlearn.run_unlearn(request, quiet=self.quiet)

    def shard_set_dir(self, cell: Cell) -> tuple[Path, ShardConfig]:
        """The directory of the shard set a sharded cell deletes from (cells of the same shard settings and seed
        share it), and those settings."""
        params = unlearner(cell.method).build({**cell.unlearn["params"], "seed": cell.seed})
        config = params.shard_config()
        return self.out / "shards" / f"s{cell.seed}-{config_hash(config)[:8]}", config

    def shards(self, cell: Cell) -> Path:
        """The shard set of the cell's settings (``params``: shards, group_by, lora, train, ...) and seed,
        trained once into BENCH_DIR/shards/ (resumable)."""
        if not isinstance(self.source, RunSource):
            raise ForgetkitError("sharded_exact in a bench needs a prepared run (the training set it shards)")
        out, config = self.shard_set_dir(cell)
        if not (out / "summary.json").is_file():
            request = exact_command.ShardTrainRequest(out=str(out), config=config, run=str(self.source.run))
            exact_command.run_shard_train(request, quiet=self.quiet)
        return out

    def load(self, ref: ModelRef):
        from forgetkit.models import load_model

        return load_model(ref.model, ref.adapter, device=self.device)


def worker_config(bench) -> dict:
    """The bench config a worker rebuilds its ``Bench`` from: the prepared run and the bench directory by
    absolute path (a worker's working directory is not the driver's), and no prepare to repeat."""
    data = asdict(bench.config)
    data["out"] = str(bench.out.resolve())
    if bench.config.data is None:
        data.update(run=str(Path(bench.source.run).resolve()), prepare=None, prepare_overrides=[])
    else:
        data["data"] = {k: str(Path(v).resolve()) if isinstance(v, str) and v else v for k, v in data["data"].items()}
    return data


def compute_cell(config_data: dict, cell_id: str) -> dict:
    """Compute one cell in a worker (a fresh process): output into the cell's log, a crash caught and recorded."""
    config = build(BenchConfig, config_data)
    cell_dir = Path(config.out) / "cells" / cell_id
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / executors.CELL_LOG, "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        try:
            bench = Bench(config, quiet=True)
            return bench.result_of(bench.cell(cell_id))
        except Exception as exc:  # a crash is this cell's outcome, recorded; the grid goes on
            traceback.print_exc()
            return executors.crashed(cell_dir, cell_id, exc)


def train_shard_set(config_data: dict, cell_id: str) -> str:
    """Train (or find) the shard set a ``sharded_exact`` cell deletes from."""
    bench = Bench(build(BenchConfig, config_data), quiet=True)
    return str(bench.shards(bench.cell(cell_id)))
