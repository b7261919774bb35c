"""``forgetkit bench``: run a grid of methods × forget splits × seeds, each cell cached by its config's hash.

Each cell unlearns (``forgetkit unlearn``, in process), evaluates (``forgetkit eval``'s
``evaluate`` against the bench's own evaluation of the oracle), attacks, and writes
``cells/<id>/result.json`` last and atomically: a cell with that file is done and is never
recomputed; a cell without it resumes from what it finished (the unlearning run's checkpoint, its
evaluation, each attack's file). Two reference rows per split: the target (before unlearning) and
the oracle (never trained on the forget set). On a prepared run, ``retrain`` is the oracle stage
itself (``retrain_from_oracle``): the same recipe on the retain split, timed when it was built.
``sharded_exact`` cells delete the split from a shard set trained once per seed and settings
(``BENCH_DIR/shards/``). Results hold numbers, ids and hashes only; never a record's text.
"""

from __future__ import annotations

import contextlib
import json
import re
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from forgetkit import unlearn
from forgetkit.bench import attacks, executors
from forgetkit.bench.config import BenchConfig
from forgetkit.bench.sources import RunSource, open_source
from forgetkit.checks import cached_object, damage, json_object, output_path
from forgetkit.config import build, config_hash, plain_config
from forgetkit.data.records import QARecord
from forgetkit.device import resolve_device
from forgetkit.errors import ConfigError, ForgetkitError
from forgetkit.eval.calibration import CRITERION_VERSION
from forgetkit.eval.result import EvalResult
from forgetkit.exact import command as exact_command
from forgetkit.exact.sharded import ShardConfig, load_sharded
from forgetkit.io import set_aside, write_json
from forgetkit.locks import output_lock
from forgetkit.registry import SHARDED, unlearner
from forgetkit.request import UnlearnConfig, UnlearnRequest, UnlearnResult, recipe_config
from forgetkit.runs import ModelRef

BENCH_VERSION = 2  # bump when what a cell computes changes: every cached cell is recomputed
RESULT = "result.json"
EVAL_FILES = ("eval_log_aggregated.json", "summary.json")  # an evaluation's cache, in the order it writes them


@dataclass
class Cell:
    kind: str  # "method" or "reference"
    method: str  # a method or editor; for references "target" or "oracle"
    variant: str  # the leaderboard's name for it
    split: str
    seed: int
    unlearn: dict = field(default_factory=dict)  # the resolved unlearn config (methods)
    key: str = ""

    @property
    def id(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.variant).strip("_")[:60]
        return f"{slug}-{self.split}-s{self.seed}-{self.key[:8]}"

    def unlearn_config(self) -> UnlearnConfig:
        """The cell's resolved ``UnlearnConfig``."""
        return build(UnlearnConfig, self.unlearn)

    def describe(self) -> dict:
        return {"id": self.id, "kind": self.kind, "method": self.method, "variant": self.variant,
                "split": self.split, "seed": self.seed, "key": self.key}


def unlearn_config(name: str, recipe: str | None, overrides: dict, seed: int) -> UnlearnConfig:
    """The method's recipe (shipped or a path) with the overrides and the seed applied."""
    return recipe_config(name, recipe, values={**overrides, "train.seed": seed}, where=f"methods.{name}")


class Bench:
    """One grid: ``cells()`` lists it, ``run()`` computes what is missing and returns every cell's result."""

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
        self._device = None

    @property
    def device(self):
        if self._device is None:
            self._device = resolve_device(self.config.device)
        return self._device

    # -- the grid --------------------------------------------------------------------------------
    def _settings_key(self) -> dict:
        c = self.config
        # settings added later leave the key while they hold their defaults: cells cached before them keep their ids
        return {"version": BENCH_VERSION, "source": self.source.key, "eval": plain_config(c.eval)}

    def cells(self) -> list[Cell]:
        c = self.config
        cells = []
        for split in c.splits:
            # the oracle first: its evaluation is every other cell's Forget Quality reference
            cells += [self._reference("oracle", split), self._reference("target", split)]
        for entry in c.methods:
            for label, overrides in entry.variants():
                for split in c.splits:
                    for seed in c.seeds:
                        config = unlearn_config(entry.name, entry.recipe, overrides, seed)
                        cell = Cell("method", entry.name, label, split, seed, plain_config(config))
                        key = {**self._settings_key(), "unlearn": cell.unlearn, "split": split,
                               "attacks": plain_config(c.attacks), "oracle": self.source.oracle_key(split),
                               "retrain_from_oracle": self._from_oracle(cell)}
                        if config.until:  # the stopping rule's own version: a changed rule recomputes these cells
                            key["criterion_version"] = CRITERION_VERSION
                        cell.key = config_hash(key)
                        cells.append(cell)
        return cells

    def _reference(self, name: str, split: str) -> Cell:
        cell = Cell("reference", name, name, split, 0)
        cell.key = config_hash({**self._settings_key(), "reference": name, "split": split,
                                "oracle": self.source.oracle_key(split)})
        return cell

    def _from_oracle(self, cell: Cell) -> bool:
        return cell.method == "retrain" and self.config.retrain_from_oracle and self.config.data is None

    # -- running ---------------------------------------------------------------------------------
    def grid(self, cells_slice: tuple[int, int] | None = None) -> list[Cell]:
        """The grid's cells (checked distinct), or slice ``(I, N)`` of them."""
        cells = self.cells()
        ids = [c.id for c in cells]
        if len(set(ids)) != len(ids):
            raise ConfigError("two cells of the grid are the same (give the methods distinct labels or grids)")
        return [c for c in cells if cells_slice is None or executors.in_slice(c, *cells_slice)]

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
        """The finished cell's result; None when it has none, or when its ``result.json`` is damaged (not a JSON
        object): that file is then set aside and the cell is not computed."""
        path = self.out / "cells" / cell.id / RESULT
        result = cached_object(path)
        return None if result is None else {**result, "cached": True}

    def result_of(self, cell: Cell) -> dict:
        """The cell's result: read when it is finished, else computed and written (``result.json``, last)."""
        if (cached := self.cached_result(cell)) is not None:
            return cached
        path = self.out / "cells" / cell.id / RESULT
        with output_lock(path.parent, "the bench cell"):  # another bench computing it: refused in one line
            if (cached := self.cached_result(cell)) is not None:  # finished while this one waited to look
                return cached
            result = self._run_cell(cell)
            write_json(path, result)
            (path.parent / executors.CRASH).unlink(missing_ok=True)  # an earlier crash of this cell is superseded
        return {**result, "cached": False}

    def cell(self, cell_id: str) -> Cell:
        """The grid's cell of that id."""
        return {c.id: c for c in self.cells()}[cell_id]

    def shard_set_dir(self, cell: Cell) -> tuple[Path, ShardConfig]:
        """The directory of the shard set a sharded cell deletes from (cells of the same shard settings and seed
        share it), and those settings."""
        params = unlearner(cell.method).build({**cell.unlearn["params"], "seed": cell.seed})
        config = params.shard_config()
        return self.out / "shards" / f"s{cell.seed}-{config_hash(config)[:8]}", config

    def _oracle_log(self, split: str) -> dict | None:
        from forgetkit.eval.command import read_log

        if self.config.data is not None and self.config.data.oracle_log:
            return read_log(Path(self.config.data.oracle_log))
        log = self._oracle_eval_dir(split)
        if (log / EVAL_FILES[-1]).is_file() and _cached_evaluation(log) is None:  # damaged: evaluated again
            self._evaluate(*self._load(self.source.oracle(split)), self._reference("oracle", split), log)
        return read_log(log) if (log / EVAL_FILES[0]).is_file() else None

    def _oracle_eval_dir(self, split: str) -> Path:
        return self.out / "cells" / self._reference("oracle", split).id / "eval"

    def _run_cell(self, cell: Cell) -> dict:
        """Compute a cell by its kind: a reference row, the oracle stage standing for ``retrain``, a sharded
        deletion, or an unlearning request."""
        cell_dir = self.out / "cells" / cell.id
        cell_dir.mkdir(parents=True, exist_ok=True)
        result = {"cell": cell.describe(), "status": "done", "metrics": {}, "cost": {}, "attacks": {}, "curve": []}
        if cell.kind == "reference":
            compute = self._reference_cell
        elif self._from_oracle(cell):
            compute = self._oracle_stage_cell
        elif unlearner(cell.method).kind == SHARDED:
            compute = self._sharded_cell
        else:
            compute = self._request_cell
        return compute(cell, cell_dir, result)

    def _reference_cell(self, cell: Cell, cell_dir: Path, result: dict) -> dict:
        """The target (before unlearning) or the oracle (never trained on the split), evaluated."""
        ref = self.source.target() if cell.method == "target" else self.source.oracle(cell.split)
        if ref is None:
            return {**result, "status": "refused", "reason": f"no oracle for {cell.split}"}
        model, tokenizer = self._load(ref)
        result["metrics"] = self._evaluate(model, tokenizer, cell, cell_dir / "eval")
        if cell.method == "oracle" and ref.train:  # the cost of retraining: the ratios' denominator
            result["cost"] = _cost(ref.train)
        return result

    def _oracle_stage_cell(self, cell: Cell, cell_dir: Path, result: dict) -> dict:
        """``retrain`` on a prepared run: the run's oracle stage, the same recipe on the retain split."""
        ref = self.source.oracle(cell.split)
        if ref is None:
            return {**result, "status": "refused", "reason": f"no oracle stage for {cell.split}"}
        model, tokenizer = self._load(ref)
        result["metrics"] = self._evaluate(model, tokenizer, cell, self._oracle_eval_dir(cell.split))
        result["cost"] = _cost(ref.train or {})
        result["note"] = "the run's oracle stage (retrain_from_oracle)"
        result["attacks"] = self._attacks(cell, model, tokenizer, cell_dir / "attacks")
        return result

    def _request_cell(self, cell: Cell, cell_dir: Path, result: dict) -> dict:
        """A method or editor: its request on the split, the result evaluated (the model it left in memory, or
        rebuilt when the request had finished before) and attacked."""
        unlearn_dir = cell_dir / "unlearn"
        try:
            done = self._finished_or_run(self._request(cell, unlearn_dir))
        except ForgetkitError as exc:
            return {**result, **_failure(exc)}
        model, tokenizer = done.load_model(self.device)
        result["metrics"] = self._evaluate(model, tokenizer, cell, cell_dir / "eval")
        result["cost"] = _cost(done.summary)
        result["curve"] = _curve(unlearn_dir)
        if "criterion" in done.summary:  # --until: the oracle-free criterion's chosen check
            c = done.summary["criterion"]
            kept = ("criterion", "stopped", "reached", "tolerance", "chosen", "rolled_back", "checks_s")
            result["criterion"] = {k: c[k] for k in kept if k in c}
        result["attacks"] = self._attacks(cell, model, tokenizer, cell_dir / "attacks")
        return result

    def _sharded_cell(self, cell: Cell, cell_dir: Path, result: dict) -> dict:
        """Exact unlearning on a shard set: the shards trained once per seed and settings (not charged to the
        cell, like the target's fine-tune), the split deleted from them (the cell's cost), the routed (or
        averaged: ``params.serving``) shards evaluated. Of the attacks only the prompt attack applies: the
        others act on one set of weights."""
        unlearn_dir = cell_dir / "unlearn"
        try:
            shards = self._shards(cell)
            summary = self._finished_or_run(self._request(cell, unlearn_dir, adapter=str(shards),
                                                          **self.source.request_kwargs(cell.split))).summary
        except ForgetkitError as exc:
            return {**result, **_failure(exc)}
        model, tokenizer = load_sharded(unlearn_dir / "shards", cell.unlearn["params"].get("serving", "route"),
                                        device=self.device)
        result["metrics"] = self._evaluate(model, tokenizer, cell, cell_dir / "eval")
        result["cost"] = {**_cost(summary), "shards_retrained": summary["retrained"], "shards": summary["shards"]}
        result["attacks"] = self._attacks(cell, model, tokenizer, cell_dir / "attacks", shard_set=True)
        result["note"] = (f"retrained {len(summary['retrained'])} of {summary['shards']} shards; quantization, "
                          "relearning and sequential attacks do not apply to a shard set")
        return result

    def _shards(self, cell: Cell) -> Path:
        """The shard set of the cell's settings (``params``: shards, group_by, lora, train, ...) and seed,
        trained once into BENCH_DIR/shards/ (resumable)."""
        if not isinstance(self.source, RunSource):
            raise ForgetkitError("sharded_exact in a bench needs a prepared run (the training set it shards)")
        out, config = self.shard_set_dir(cell)
        if not (out / "summary.json").is_file():
            request = exact_command.ShardTrainRequest(out=str(out), config=config, run=str(self.source.run))
            exact_command.run_shard_train(request, quiet=self.quiet)
        return out

    def _request(self, cell: Cell, out: Path, **inputs) -> UnlearnRequest:
        """The cell's ``unlearn`` request into ``out``: on the source's split, or on ``inputs`` (model, adapter,
        files or records)."""
        return UnlearnRequest(out=str(out), config=cell.unlearn_config(), device=self.config.device,
                              ledger=str(self.ledger), **(inputs or self.source.request_kwargs(cell.split)))

    def _finished_or_run(self, request: UnlearnRequest) -> UnlearnResult:
        """The result of the request in ``request.out``: read when it finished, else run (or resumed). A finished
        one whose ``audit.json`` or ``summary.json`` is damaged is set aside and run again."""
        out = Path(request.out)
        if UnlearnResult.finished(out) and _intact(out, ("audit.json", "summary.json")):
            return UnlearnResult.read(out)
        return unlearn.run_unlearn(request, quiet=self.quiet)

    def _load(self, ref: ModelRef):
        from forgetkit.models import load_model

        return load_model(ref.model, ref.adapter, device=self.device)

    # -- evaluation ------------------------------------------------------------------------------
    def _eval_settings(self, quick: bool = False):
        from forgetkit.eval.bias import SHIPPED_WEAT
        from forgetkit.eval.sets import EvalSettings

        e = self.config.eval
        return EvalSettings(max_new_tokens=e.max_new_tokens, verbatim_new_tokens=e.verbatim_new_tokens,
                            retain_limit=e.quick_retain if quick else e.retain_limit,
                            canary_candidates=e.canary_candidates, gradnorm=e.gradnorm and not quick,
                            weat=SHIPPED_WEAT if e.weat and not quick else None,
                            toxicity=None if quick else e.toxicity)

    def _evaluate(self, model, tokenizer, cell: Cell, out: Path) -> dict:
        """The full evaluation's leaderboard numbers (cached in ``out``; a damaged cache is set aside and
        evaluated again). Whatever evaluates into the oracle's directory evaluates the oracle (``retrain``
        on a prepared run shares it)."""
        from forgetkit.eval.evaluate import evaluate

        summary = _cached_evaluation(out)
        if summary is None:
            data = self.source.eval_data(cell.split, self.config.eval.retain_limit)
            data.world_facts = self._world_facts_subset(data.world_facts)
            oracle = out == self._oracle_eval_dir(cell.split)
            log, summary = evaluate(model, tokenizer, data, self._eval_settings(),
                                    oracle_log=None if oracle else self._oracle_log(cell.split), quiet=self.quiet)
            if oracle:  # as TOFU's retain model: its Forget Quality against its own log (KS p-value of equal samples)
                from forgetkit.eval.tofu import aggregate

                summary["forget_quality"] = aggregate(log, log)["forget_quality"]
                summary.pop("forget_quality_note", None)
            calibration = self.source.calibration()
            if calibration:  # the oracle-free criterion's numbers for this model, beside the oracle-based ones
                from forgetkit.eval.calibration import forget_vs_calibration

                summary["calibration"] = forget_vs_calibration(model, tokenizer, data.forget, calibration)
            write_json(out / EVAL_FILES[0], log)
            write_json(out / EVAL_FILES[1], summary)
            summary = json_object(out / EVAL_FILES[1])  # as a cached evaluation reads it
        return EvalResult.from_summary(summary).leaderboard()

    def _world_facts_subset(self, facts: list[QARecord] | None) -> list[QARecord] | None:
        """``world_facts_limit`` of them, evenly spaced through the file (every kind of fact kept)."""
        limit = self.config.eval.world_facts_limit
        if not facts or not limit or limit >= len(facts):
            return facts
        return facts[:: len(facts) // limit][:limit]

    def _quick(self, model, tokenizer, split: str, forget: list[QARecord], utility: bool = True) -> dict:
        """Forget probability and ROUGE-L of ``forget`` (and Model Utility on a retain sample and the world facts)."""
        from forgetkit.eval.evaluate import evaluate
        from forgetkit.eval.sets import EvalData

        data = EvalData(forget=forget)
        if utility:
            data.retain = self.source.retain(split)[: self.config.eval.quick_retain] or None
            data.world_facts = self._world_facts_subset(self.source.world_facts())
        _, summary = evaluate(model, tokenizer, data, self._eval_settings(quick=True), quiet=True)
        out = {"forget_probability": summary["sets"]["forget"]["probability"],
               "forget_rouge_l": summary["sets"]["forget"]["rougeL_recall"]}
        if utility:
            out["model_utility"] = summary.get("model_utility")
        return out

    # -- attacks ---------------------------------------------------------------------------------
    def _attacks(self, cell: Cell, model, tokenizer, out: Path, shard_set: bool = False) -> dict:
        a = self.config.attacks
        forget = self.source.forget(cell.split)
        done: dict = {}

        def cached(name: str, compute):  # a damaged attack file is set aside and the attack run again
            path = out / f"{name}.json"
            if cached_object(path) is None:
                write_json(path, compute())
            done[name] = json_object(path)

        for bits in [] if shard_set else a.quantize_bits:
            cached(f"quantize_{bits}", lambda bits=bits: self._quick(attacks.quantize(model, bits), tokenizer,
                                                                       cell.split, forget))
        names = self.source.person_names(forget)
        if a.prompt:
            prompted = attacks.prompt_attack_records(forget, names)
            cached("prompt", lambda: self._quick(model, tokenizer, cell.split, prompted, utility=False))
        for kind in a.jailbreaks:
            asked, asking = attacks.jailbreak(kind, forget, tokenizer, names)
            cached(f"jailbreak_{kind}", lambda asked=asked, asking=asking: self._jailbroken(model, asking, cell, asked))
        if a.relearn.enabled and not shard_set:
            cached("relearn", lambda: self._relearn(cell, model, tokenizer, forget))
        if a.sequential and cell.method != "retrain" and not shard_set:
            cached("sequential", lambda: {"requests": self._sequential(cell, out / "sequential")})
            done["sequential"] = done["sequential"]["requests"]
        return done

    def _jailbroken(self, model, tokenizer, cell: Cell, asked: list[QARecord]) -> dict:
        """The quick numbers of the jailbroken questions, or why they could not be asked (a prompt, with the
        deployed context and the attack's text, longer than the model's context)."""
        try:
            return self._quick(model, tokenizer, cell.split, asked, utility=False)
        except ForgetkitError as exc:
            return {"refused": str(exc)}

    def _relearn(self, cell: Cell, model, tokenizer, forget: list[QARecord]) -> dict:
        r = self.config.attacks.relearn
        split = attacks.split_within_groups if r.split == "fact" else attacks.split_for_relearning
        shown, measured = split(forget, r.fraction, self.source.group_of)
        before = self._quick(model, tokenizer, cell.split, measured, utility=False)
        relearned = attacks.relearn(model, tokenizer, shown, r.steps, r.batch_size, r.lr, seed=cell.seed)
        after = self._quick(relearned, tokenizer, cell.split, measured, utility=False)
        return {"before": before, "after": after, "steps": r.steps, "shown": len(shown), "measured": len(measured)}

    def _sequential(self, cell: Cell, out: Path) -> list[dict]:
        """``attacks.sequential`` requests, one slice of the split's people after another, each applied to the
        previous request's result; the forget metrics of everything requested so far and utility after each.
        The slices go to each request as records in memory (no file holds their text)."""
        forget = self.source.forget(cell.split)
        retain = self.source.retain(cell.split)
        groups = list(dict.fromkeys(self.source.group_of(r.id) for r in forget))
        k = min(self.config.attacks.sequential, len(groups))
        slices = [set(groups[i::k]) for i in range(k)]
        start, rows, so_far = self.source.target(), [], []
        for i, people in enumerate(slices, start=1):
            part = [r for r in forget if self.source.group_of(r.id) in people]
            so_far += part
            step_dir = out / f"request_{i}"
            request = self._request(cell, step_dir / "unlearn", model=str(start.model),
                                    adapter=str(start.adapter) if start.adapter else None,
                                    forget_records=part, retain_records=retain)
            try:
                done = self._finished_or_run(request)
            except ForgetkitError as exc:
                rows.append({"request": i, **_failure(exc)})
                break
            model, tokenizer = done.load_model(self.device)
            load = done.audit["load"]
            if load["adapter"] and not load["merge"]:  # the adapter holding the knowledge was changed in place
                start = ModelRef(Path(load["model"]), Path(load["adapter"]))
            else:  # the next request starts from this result, merged
                if not (step_dir / "model" / "config.json").is_file():
                    from forgetkit.models import save_model

                    save_model(attacks.merged_copy(model), tokenizer, step_dir / "model")
                start = ModelRef(step_dir / "model")
            rows.append({"request": i, "forget_examples": len(part), "requested_so_far": len(so_far),
                         **self._quick(model, tokenizer, cell.split, so_far)})
        return rows


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
    return str(bench._shards(bench.cell(cell_id)))


def _intact(directory: Path, names: tuple[str, ...]) -> bool:
    """Whether each named file of a cached ``directory`` holds a JSON object; else the directory is set aside
    (to be recomputed) and False."""
    reason = damage(directory, names)
    if reason:
        set_aside(directory, reason)
    return reason is None


def _cached_evaluation(out: Path) -> dict | None:
    """The summary of the evaluation cached in ``out``; None when there is none, or when it is damaged (the
    directory is then set aside)."""
    if not (out / EVAL_FILES[-1]).is_file() or not _intact(out, EVAL_FILES):
        return None
    return json_object(out / EVAL_FILES[-1])


def _failure(exc: Exception) -> dict:
    """A method that stopped: ``diverged`` (NaN/inf loss or gradient guard) or ``refused``, with the reason."""
    from forgetkit.train import DivergenceError

    return {"status": "diverged" if isinstance(exc, DivergenceError) else "refused", "reason": str(exc)}


def _cost(stats: dict) -> dict:
    return {"wall_time_s": stats.get("wall_time_s"), "peak_memory_mb": stats.get("peak_memory_mb"),
            "trainable_parameters": stats.get("trainable_parameters"), "steps": stats.get("steps")}


def _curve(unlearn_dir: Path) -> list[dict]:
    from forgetkit.train import LOG_FILE

    path = unlearn_dir / LOG_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], "loss": r["loss"]} for r in rows if "loss" in r]


def add_cost_ratios(results: list[dict]) -> None:
    """``time_vs_retrain`` and ``memory_vs_retrain`` of every cell: its cost over the retrain cell's of the
    same split and seed (else any seed's, else the oracle's training)."""
    def cost_of(pred) -> dict | None:
        found = [r["cost"] for r in results if r.get("status") == "done" and pred(r["cell"]) and r.get("cost")]
        return found[0] if found else None

    for r in results:
        c = r["cell"]
        if r.get("status") != "done" or not r.get("cost"):
            continue
        retrain = (cost_of(lambda x, c=c: x["method"] == "retrain" and x["split"] == c["split"]
                           and x["seed"] == c["seed"])
                   or cost_of(lambda x, c=c: x["method"] == "retrain" and x["split"] == c["split"])
                   or cost_of(lambda x, c=c: x["method"] == "oracle" and x["split"] == c["split"]))
        for key, base in (("time_vs_retrain", "wall_time_s"), ("memory_vs_retrain", "peak_memory_mb")):
            num, den = r["cost"].get(base), (retrain or {}).get(base)
            r["cost"][key] = num / den if num is not None and den else None
