"""``--until indistinguishable`` for gradient methods: the training loop's hook that checks, every k steps and
whenever the method's forget term has moved by ``move_share`` since the last check, whether the forget set can
still be told from the calibration set (:mod:`forgetkit.eval.calibration`), and stops the loop when it cannot.
When the run overshoots or the utility guard fires, it goes back to the best check's weights and lets the loop
go on with a smaller learning rate (``backtracks`` times at most; one process only), then stops there; the
trained weights end as the check closest to indistinguishable.

The best check's trainable weights are kept in memory and in ``OUT/criterion_best.safetensors`` (written
atomically when a check improves on it), and every check is a line of ``train_log.jsonl``
(``criterion``), so an interrupted run resumes with its trace and its best weights.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from forgetkit.data.records import QARecord
from forgetkit.eval.calibration import (
    CONTINUE,
    EXHAUSTED,
    OVERSHOT,
    UTILITY,
    Check,
    CriterionRecord,
    CriterionSets,
    CriterionSettings,
)
from forgetkit.io import atomic_path
from forgetkit.train import CHECKPOINT_DIR, LOG_FILE, trainable

BEST_FILE = "criterion_best.safetensors"


class StoppingHook:
    """An ``on_step`` hook for :func:`forgetkit.train.train_loop` (call :meth:`start` before training and
    :meth:`finish` after)."""

    def __init__(self, settings: CriterionSettings, tokenizer, forget: list[QARecord], calibration: list[QARecord],
                 retain: list[QARecord], max_length: int, out: Path, forget_term: str | None = None,
                 can_backtrack: bool = True) -> None:
        self.settings, self.out = settings, Path(out)
        self.sets = CriterionSets(settings, tokenizer, forget, calibration, retain, max_length)
        self.criterion = self.sets.criterion
        self.last: Check | None = None
        self._best_weights: dict[str, torch.Tensor] | None = None
        self.forget_term = forget_term  # the name of the method's forget term among a step's logged losses
        self.anchor: float | None = None  # its value at the last check (None: the next step's value)
        self.backtracks_left = settings.backtracks if can_backtrack else 0
        self.backtracked: list[dict] = []
        self.check_s = 0.0  # the time the checks took (scoring, and keeping the best weights)

    def check(self, step: int, model) -> Check:
        t0 = time.perf_counter()
        check = self.sets.check(step, model)
        if self.criterion.best is check:
            self._best_weights = {n: p.detach().cpu().clone() for n, p in trainable(model).items()}
            with atomic_path(self.out / BEST_FILE) as tmp:
                save_file({n: t.contiguous() for n, t in self._best_weights.items()}, str(tmp),
                          metadata={"step": str(step)})
        self.last = check
        self.check_s += time.perf_counter() - t0
        return check

    def start(self, model) -> None:
        """The check before training (step 0); resuming from a checkpoint at step S, the trace up to S and the best
        weights, when the best check is among them (a best found after S is gone with the steps after S)."""
        log = self.out / LOG_FILE
        progress = self.out / CHECKPOINT_DIR / "progress.json"
        resumed_at = json.loads(progress.read_text())["step"] if progress.is_file() else None
        if resumed_at is None:
            log.unlink(missing_ok=True)  # a fresh run: no trace of an earlier attempt
            self.out.mkdir(parents=True, exist_ok=True)
            check = self.check(0, model)
            with log.open("a") as fh:
                fh.write(json.dumps({"step": 0, "criterion": {**check.to_dict(), "best": True}}) + "\n")
            return
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else []
        best_step = None
        if (self.out / BEST_FILE).is_file():
            with safe_open(str(self.out / BEST_FILE), "pt") as f:
                best_step = int((f.metadata() or {}).get("step", -1))
        for row in rows:
            r = row.get("criterion")
            if r is None or row["step"] > resumed_at:
                continue
            c = Check(r["step"], r["auc"], r["ks_pvalue"], r["retain_loss"], r["verdict"],
                      r.get("calibration_loss", math.nan), r.get("retain_probability", math.nan))
            self.criterion.checks.append(c)
            if c.step == best_step:
                self.criterion.best = c
                self._best_weights = load_file(str(self.out / BEST_FILE))
        self.last = self.criterion.checks[-1] if self.criterion.checks else None

    def _forget_value(self, losses: dict | None) -> float | None:
        """The method's forget term among a step's logged losses (None: not logged, or no term named)."""
        return (losses or {}).get(self.forget_term) if self.forget_term else None

    def _moved(self, losses: dict | None) -> bool:
        """Whether the forget term has moved by ``move_share`` of its value at the last check."""
        value = self._forget_value(losses)
        if value is None or not self.settings.move_share:
            return False
        if self.anchor is None:
            self.anchor = value
            return False
        return abs(value - self.anchor) > self.settings.move_share * max(abs(self.anchor), 1e-8)

    def __call__(self, step: int, model, losses: dict | None = None) -> dict | None:
        if step % self.settings.every and not self._moved(losses):
            return None
        check = self.check(step, model)
        self.anchor = self._forget_value(losses)
        record = {"criterion": {**check.to_dict(), "best": self.criterion.best is check}}
        if check.verdict in (OVERSHOT, UTILITY) and self.backtracks_left and self._best_weights is not None:
            self._restore(model)  # back to the best check; the loop goes on with a smaller step from here
            self.backtracks_left -= 1
            self.anchor = None
            back = {"step": step, "verdict": check.verdict, "to_step": self.criterion.best.step,
                    "lr_scale": self.settings.backtrack_scale}
            self.backtracked.append(back)
            record["criterion"]["backtracked_to"] = back["to_step"]
            record["backtrack"] = self.settings.backtrack_scale
        elif check.verdict != CONTINUE:
            record["stop"] = check.verdict
        return record

    def _restore(self, model) -> None:
        params = trainable(model)
        with torch.no_grad():
            for name, value in self._best_weights.items():
                params[name].copy_(value.to(params[name].device))

    def finish(self, model, final_step: int) -> CriterionRecord:
        """After training: a last check when the run ended between checks without stopping, then the roll-back to
        the best check's weights when the run ended elsewhere; what the summary and the audit record keep."""
        if self.last is None or (self.last.verdict == CONTINUE and self.last.step != final_step):
            self.check(final_step, model)
        stopped = self.last.verdict if self.last.verdict != CONTINUE else EXHAUSTED
        best = self.criterion.best
        rolled_back = best is not None and self._best_weights is not None and best is not self.last
        if rolled_back:
            self._restore(model)
        (self.out / BEST_FILE).unlink(missing_ok=True)
        return replace(self.criterion.summary(stopped), rolled_back=rolled_back, backtracked=self.backtracked,
                       checks_s=self.check_s)
