"""How a bench evaluates its cells: the full evaluation of each cell's model (``eval.command.evaluate_into``, with
the bench's :class:`~forgetkit.bench.config.BenchEvalSettings`, against the bench's own evaluation of the
split's oracle), cached in the cell's ``eval/``; and the quick evaluation the attacks use.
"""

from __future__ import annotations

from pathlib import Path

from forgetkit.bench.config import BenchConfig
from forgetkit.bench.grid import Cell, intact, reference_cell
from forgetkit.checks import json_object
from forgetkit.data.records import QARecord
from forgetkit.eval.command import LOG_FILE, SUMMARY_FILE, evaluate_into, read_log
from forgetkit.eval.evaluate import evaluate
from forgetkit.eval.result import EvalResult
from forgetkit.eval.sets import EvalData

EVAL_FILES = (LOG_FILE, SUMMARY_FILE)  # an evaluation's cache, in the order it writes them


class CellEvaluation:
    """The bench's evaluations of one grid (``out``: the bench directory), with ``load(ModelRef)`` to load a
    model when the oracle's cached evaluation must be done again."""

    def __init__(self, config: BenchConfig, source, out: Path, load, quiet: bool) -> None:
        self.config, self.source, self.out, self.load, self.quiet = config, source, out, load, quiet
        self._target_edit_success: dict[Path, float] = {}  # an edit file's success on the target, once

    def oracle_eval_dir(self, split: str) -> Path:
        """Where the split's oracle is evaluated (``retrain`` on a prepared run shares it)."""
        return self.out / "cells" / reference_cell(self.config, self.source, "oracle", split).id / "eval"

    def oracle_log(self, split: str) -> dict | None:
        """The oracle's per-example log of the split: the user's ``data.oracle_log``, else the bench's own
        evaluation of the oracle (done again when its cache is damaged), else None."""
        if self.config.data is not None and self.config.data.oracle_log:
            return read_log(Path(self.config.data.oracle_log))
        log = self.oracle_eval_dir(split)
        if (log / EVAL_FILES[-1]).is_file() and cached_evaluation(log) is None:  # damaged: evaluated again
            oracle = reference_cell(self.config, self.source, "oracle", split)
            self.evaluate(*self.load(self.source.oracle(split)), oracle, log)
        return read_log(log) if (log / EVAL_FILES[0]).is_file() else None

    def evaluate(self, model, tokenizer, cell: Cell, out: Path) -> dict:
        """The full evaluation's leaderboard numbers (cached in ``out``; a damaged cache is set aside and
        evaluated again). Whatever evaluates into the oracle's directory evaluates the oracle."""
        summary = cached_evaluation(out)
        if summary is None:
            data = self.source.eval_data(cell.split, self.config.eval.retain_limit)
            data.world_facts = self.world_facts_subset(data.world_facts)
            own = out == self.oracle_eval_dir(cell.split)
            evaluate_into(out, model, tokenizer, data, None if own else self.oracle_log(cell.split),
                          self.quiet, self.config.eval, own_oracle=own,
                          calibration=self.source.calibration())
            summary = json_object(out / EVAL_FILES[-1])  # as a cached evaluation reads it
        return EvalResult.from_summary(summary).leaderboard()

    def world_facts_subset(self, facts: list[QARecord] | None) -> list[QARecord] | None:
        """``world_facts_limit`` of them, evenly spaced through the file (every kind of fact kept)."""
        limit = self.config.eval.world_facts_limit
        if not facts or not limit or limit >= len(facts):
            return facts
        return facts[:: len(facts) // limit][:limit]

    def quick(self, model, tokenizer, split: str, forget: list[QARecord], utility: bool = True) -> dict:
        """Forget probability and ROUGE-L of ``forget`` (and Model Utility on a retain sample and the world
        facts)."""
        data = EvalData(forget=forget)
        if utility:
            data.retain = self.source.retain(split)[: self.config.eval.quick_retain] or None
            data.world_facts = self.world_facts_subset(self.source.world_facts())
        _, summary = evaluate(model, tokenizer, data, self.config.eval.quick(), quiet=True)
        out = {"forget_probability": summary["sets"]["forget"]["probability"],
               "forget_rouge_l": summary["sets"]["forget"]["rougeL_recall"]}
        if utility:
            out["model_utility"] = summary.get("model_utility")
        return out


    def edit_success(self, model, tokenizer, cell: Cell) -> dict:
        """An edit request's success (greedy exact match, ``eval.edit_success``) after the edit and, as the
        baseline, on the target before it (once per edit file); and how often the edited model still gives the
        old answer."""
        from forgetkit.data.edits import read_edits
        from forgetkit.eval.edit_success import edit_success

        path = self.source.edit_file(cell.edits, cell.split)
        edits = read_edits(path)
        after = edit_success(model, tokenizer, edits)
        if path not in self._target_edit_success:
            self._target_edit_success[path] = edit_success(*self.load(self.source.target()), edits)["success"]
        return {"edit_success": after["success"], "edit_success_before": self._target_edit_success[path],
                "edit_old_answer_rate": after["old_answer_rate"]}


def cached_evaluation(out: Path) -> dict | None:
    """The summary of the evaluation cached in ``out``; None when there is none, or when it is damaged (the
    directory is then set aside)."""
    if not (out / EVAL_FILES[-1]).is_file() or not intact(out, EVAL_FILES):
        return None
    return json_object(out / EVAL_FILES[-1])
