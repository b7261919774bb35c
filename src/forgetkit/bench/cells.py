"""One function per kind of bench cell, each filling the cell's result: a reference row (the target before
unlearning, or the oracle never trained on the split), ``retrain`` on a prepared run (the run's oracle stage,
timed when it was built), a sharded exact deletion, or an unlearning request (a method or an editor). Each
evaluates the model it leaves (``bench.evaluation``) and, but for the references, attacks it
(``attacks.attack_cell``). Results hold numbers, ids and hashes only; never a record's text.
"""

from __future__ import annotations

import json
from pathlib import Path

from forgetkit.bench import attacks
from forgetkit.bench.grid import Cell, failure, from_oracle
from forgetkit.errors import ForgetkitError
from forgetkit.exact.sharded import load_sharded
from forgetkit.registry import SHARDED, unlearner
from forgetkit.summaries import COST_FIELDS

CRITERION_KEPT = ("criterion", "stopped", "reached", "tolerance", "chosen", "rolled_back", "checks_s")


def compute_cell(bench, cell: Cell) -> dict:
    """Compute a cell by its kind into ``BENCH/cells/<id>/``; its result."""
    cell_dir = bench.out / "cells" / cell.id
    cell_dir.mkdir(parents=True, exist_ok=True)
    result = {"cell": cell.describe(), "status": "done", "metrics": {}, "cost": {}, "attacks": {}, "curve": []}
    if cell.kind == "reference":
        compute = reference
    elif from_oracle(bench.config, cell):
        compute = oracle_stage
    elif unlearner(cell.method).kind == SHARDED:
        compute = sharded
    else:
        compute = request
    return compute(bench, cell, cell_dir, result)


def reference(bench, cell: Cell, cell_dir: Path, result: dict) -> dict:
    """The target (before unlearning) or the oracle (never trained on the split), evaluated."""
    ref = bench.source.target() if cell.method == "target" else bench.source.oracle(cell.split)
    if ref is None:
        return {**result, "status": "refused", "reason": f"no oracle for {cell.split}"}
    model, tokenizer = bench.load(ref)
    result["metrics"] = bench.evaluation.evaluate(model, tokenizer, cell, cell_dir / "eval")
    if cell.method == "oracle" and ref.train:  # the cost of retraining: the ratios' denominator
        result["cost"] = cost(ref.train)
    return result


def oracle_stage(bench, cell: Cell, cell_dir: Path, result: dict) -> dict:
    """``retrain`` on a prepared run: the run's oracle stage, the same recipe on the retain split."""
    ref = bench.source.oracle(cell.split)
    if ref is None:
        return {**result, "status": "refused", "reason": f"no oracle stage for {cell.split}"}
    model, tokenizer = bench.load(ref)
    result["metrics"] = bench.evaluation.evaluate(model, tokenizer, cell, bench.evaluation.oracle_eval_dir(cell.split))
    result["cost"] = cost(ref.train or {})
    result["note"] = "the run's oracle stage (retrain_from_oracle)"
    result["attacks"] = attacks.attack_cell(bench, cell, model, tokenizer, cell_dir / "attacks")
    return result


def request(bench, cell: Cell, cell_dir: Path, result: dict) -> dict:
    """A method or editor: its request on the split, the result evaluated (the model it left in memory, or
    rebuilt when the request had finished before) and attacked."""
    unlearn_dir = cell_dir / "unlearn"
    try:
        done = bench.finished_or_run(bench.request(cell, unlearn_dir))
    except ForgetkitError as exc:
        return {**result, **failure(exc)}
    model, tokenizer = done.load_model(bench.device)
    result["metrics"] = bench.evaluation.evaluate(model, tokenizer, cell, cell_dir / "eval")
    result["cost"] = done.summary.cost()
    result["curve"] = curve(unlearn_dir)
    if done.summary.criterion is not None:  # --until: the oracle-free criterion's chosen check
        c = done.summary.criterion.to_dict()
        result["criterion"] = {k: c[k] for k in CRITERION_KEPT if k in c}
    if (certificate := done.summary.certificate) is not None:  # a certified method's (ε, δ) and its noise
        result["certificate"] = {k: certificate[k] for k in ("epsilon", "delta", "sigma")}
    if cell.edits:
        result["metrics"].update(bench.evaluation.edit_success(model, tokenizer, cell))
    result["attacks"] = attacks.attack_cell(bench, cell, model, tokenizer, cell_dir / "attacks")
    return result


def sharded(bench, cell: Cell, cell_dir: Path, result: dict) -> dict:
    """Exact unlearning on a shard set: the shards trained once per seed and settings (not charged to the
    cell, like the target's fine-tune), the split deleted from them (the cell's cost), the routed (or
    averaged: ``params.serving``) shards evaluated. Of the attacks only the prompt attack applies: the
    others act on one set of weights."""
    unlearn_dir = cell_dir / "unlearn"
    try:
        shards = bench.shards(cell)
        summary = bench.finished_or_run(bench.request(cell, unlearn_dir, adapter=str(shards),
                                                      **bench.source.request_kwargs(cell.split))).summary
    except ForgetkitError as exc:
        return {**result, **failure(exc)}
    model, tokenizer = load_sharded(unlearn_dir / "shards", cell.unlearn["params"].get("serving", "route"),
                                    device=bench.device)
    result["metrics"] = bench.evaluation.evaluate(model, tokenizer, cell, cell_dir / "eval")
    result["cost"] = {**summary.cost(), "shards_retrained": summary.retrained, "shards": summary.shards}
    result["attacks"] = attacks.attack_cell(bench, cell, model, tokenizer, cell_dir / "attacks", shard_set=True)
    result["note"] = (f"retrained {len(summary.retrained)} of {summary.shards} shards; quantization, "
                      "relearning and sequential attacks do not apply to a shard set")
    return result


def cost(stats: dict) -> dict:
    """A training stage's cost columns (a request's: its summary's ``cost()``)."""
    return {name: stats.get(name) for name in COST_FIELDS}


CURVE_KEYS = ("loss", "grad_norm", "weight_norm", "forget_quality", "model_utility")


def curve(unlearn_dir: Path) -> list[dict]:
    """The request's step log, per logged step: its loss, gradient norm (before clipping) and adapter weight
    norm, and the quick evaluation's Forget Quality and Model Utility at the steps that had one
    (``MethodEntry.eval_every``)."""
    from forgetkit.train import LOG_FILE

    path = unlearn_dir / LOG_FILE
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{"step": r["step"], **{k: r[k] for k in CURVE_KEYS if r.get(k) is not None}} for r in rows if "loss" in r]
