"""When to stop unlearning without an oracle: the forget set against a calibration set of the same kind that
the model never trained on (``forgetkit unlearn --until indistinguishable``).

At each check the forget and calibration examples are scored teacher-forced (their per-example mean answer
NLL, no generation) and compared by the LOSS membership-inference AUC (forget = members; 0.5: cannot be told
apart) and a two-sample Kolmogorov–Smirnov test of the two loss samples. The AUC's tolerance is what the
sample sizes justify: under the null of one distribution the AUC's standard error is
√((n_f + n_c + 1) / (12 n_f n_c)) (the Mann–Whitney U statistic's), and the forget set counts as
indistinguishable when |AUC − 0.5| ≤ z · SE. A check below 0.5 − z · SE has over-forgotten: the forget
examples now look *less* known than never-seen ones, itself a signal, and the run rolls back to the check
closest to 0.5. A retain-utility guard stops a run whose retain set has lost more than ``utility_tolerance``
of what it had learned: of the gap, at the start, between the loss of never-seen data (the calibration set's
mean loss) and the retain set's mean loss. The gap is the model's own scale of "learned", so the guard needs
no oracle and no tuning to the model.

:class:`Criterion` is the decision alone (numbers in, a verdict out), so it is tested on constructed score
sequences; the training hook that scores the model and keeps the best weights is the gradient runner's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from forgetkit.config import ADDED_SETTING
from forgetkit.data.formatting import pad_id, tokenize_qa
from forgetkit.data.records import QARecord
from forgetkit.data.twins import TwinSettings, controls, twin_groups
from forgetkit.errors import require, require_positive
from forgetkit.eval import mia
from forgetkit.eval.token_stats import score_examples
from forgetkit.models.logits import context_length

UNTIL = ("indistinguishable",)
REFERENCES = ("calibration", "twins")  # the never-seen reference: a calibration set, or twins built from the forget set
CRITERION_VERSION = 3  # bumped when the rule changes (2: the utility guard's scale is the gap to unseen data; 3: checks
# when the forget term moves, and backtracks with a smaller learning rate)
CONTINUE, REACHED, OVERSHOT, UTILITY, EXHAUSTED = ("continue", "indistinguishable", "overshot", "utility guard",
                                                   "not reached")


@dataclass
class CriterionSettings:
    every: int = 5  # optimiser steps between checks
    # check sooner, when the method's forget term has moved by this share since the last check (0: never), so the
    # step where forgetting happens is not skipped by a recipe that moves fast
    move_share: float = 0.5
    # when the utility guard fires or the run overshoots, go back to the best check and go on with the learning
    # rate times backtrack_scale, up to this many times (an oracle-free line search on the calibration signal)
    backtracks: int = 2
    backtrack_scale: float = 0.5
    z: float = 1.96  # the tolerance in standard errors of the AUC under the null (1.96: a two-sided 95 % band)
    utility_tolerance: float = 0.5  # stop when the retain set has lost this share of its start's gap to unseen data
    retain_sample: int = 64  # retain examples scored at each check for the guard
    # closed-form editors: the damping ratios tried, from the weakest update to the strongest
    dampings: list[float] = field(default_factory=lambda: [30.0, 10.0, 3.0, 1.0, 0.3])
    # the never-seen reference: "calibration" (--calibration FILE, or the prepared run's calibration people) or
    # "twins" (--calibration auto: counterfactual twins of the forget records, data.twins)
    reference: str = field(default="calibration", metadata=ADDED_SETTING)
    twins: TwinSettings = field(default_factory=TwinSettings, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        require(self.reference in REFERENCES, "reference", f"must be one of {', '.join(REFERENCES)}, got "
                f"'{self.reference}'")
        require_positive(self, "every", "z", "retain_sample")
        require_positive(self, "move_share", "backtracks", allow_zero=True)
        require(0 < self.backtrack_scale < 1, "backtrack_scale", f"must be in (0, 1), got {self.backtrack_scale}")
        require(self.utility_tolerance > 0, "utility_tolerance", f"must be positive, got {self.utility_tolerance}")
        require(bool(self.dampings) and all(d > 0 for d in self.dampings), "dampings",
                f"must be a non-empty list of positive ratios, got {self.dampings}")


def auc_tolerance(n_forget: int, n_calibration: int, z: float) -> float:
    """z standard errors of the AUC of two samples of these sizes drawn from one distribution."""
    return z * math.sqrt((n_forget + n_calibration + 1) / (12 * n_forget * n_calibration))


def calibration_needed(n_forget: int, z: float) -> int | None:
    """The fewest calibration examples for which the check's tolerance is below 0.5 against ``n_forget`` forget
    examples (at 0.5 or more even a forget set the model knows perfectly, AUC 1, would pass as never seen); None
    when no number suffices (the forget set itself is too small for ``z``)."""
    if z * math.sqrt(1 / (12 * n_forget)) >= 0.5:
        return None
    n = 1
    while auc_tolerance(n_forget, n, z) >= 0.5:
        n += 1
    return n


@dataclass
class Check:
    step: int
    auc: float  # P(a forget example's loss < a calibration example's loss): 0.5 indistinguishable
    ks_pvalue: float
    retain_loss: float
    verdict: str
    calibration_loss: float = math.nan  # the calibration set's mean loss (the unseen-data level)
    retain_probability: float = math.nan  # the retain sample's mean answer probability (per-token geometric mean)

    @property
    def distance(self) -> float:
        return abs(self.auc - 0.5)

    def to_dict(self) -> dict:
        return {"step": self.step, "auc": self.auc, "ks_pvalue": self.ks_pvalue, "retain_loss": self.retain_loss,
                "calibration_loss": self.calibration_loss, "retain_probability": self.retain_probability,
                "verdict": self.verdict}

    @classmethod
    def from_dict(cls, data: dict) -> Check:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass
class CriterionRecord:
    """What a request's summary and audit record keep of its oracle-free stop: why it stopped, whether the kept
    check is within the tolerance (``reached``; ``verdict`` in words: a run short of it is never presented as a
    finished deletion), the kept (``chosen``) and first checks, the reference set; then what only a gradient run
    records (roll-back, backtracks, the checks' time) or an editor's damping search (each ratio's check, a ratio
    whose solve did not converge)."""

    stopped: str
    reached: bool
    verdict: str
    tolerance: float
    utility_bound: float | None
    z: float
    forget_examples: int
    calibration_examples: int
    checks: int
    chosen: Check | None
    start: Check | None
    criterion: str = "indistinguishable"
    rolled_back: bool = False
    calibration: dict | None = None  # the reference set: file, hash, count, and its kind (calibration or twins)
    checks_s: float | None = None
    backtracked: list[dict] | None = None
    trace: list[dict] | None = None
    unconverged: dict | None = None

    OPTIONAL: ClassVar[tuple[str, ...]] = ("calibration", "checks_s", "backtracked", "trace", "unconverged")

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(chosen=self.chosen.to_dict() if self.chosen else None,
                    start=self.start.to_dict() if self.start else None)
        return {k: v for k, v in data.items() if v is not None or k not in self.OPTIONAL}

    @classmethod
    def from_dict(cls, data: dict) -> CriterionRecord:
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        for name in ("chosen", "start"):
            values[name] = Check.from_dict(values[name]) if values.get(name) else None
        return cls(**values)


@dataclass
class Criterion:
    """The stopping rule over a run's checks. ``judge`` takes one check's per-example losses and returns its
    verdict; ``best`` is the check to keep (the one closest to 0.5 among those the utility guard allowed)."""

    settings: CriterionSettings
    n_forget: int
    n_calibration: int
    checks: list[Check] = field(default_factory=list)
    best: Check | None = None

    @property
    def tolerance(self) -> float:
        return auc_tolerance(self.n_forget, self.n_calibration, self.settings.z)

    def judge(self, step: int, forget_losses: list[float], calibration_losses: list[float],
              retain_loss: float, retain_probability: float = math.nan, calibration_loss: float | None = None) -> Check:
        """``calibration_loss``: the unseen-data level of the utility guard (default: the calibration scores' mean,
        which are per-example losses unless the scores are paired)."""
        auc, ks = compare(forget_losses, calibration_losses)
        if calibration_loss is None:
            calibration_loss = sum(calibration_losses) / len(calibration_losses)
        if retain_loss > self.utility_bound(retain_loss, calibration_loss):
            verdict = UTILITY
        elif abs(auc - 0.5) <= self.tolerance:
            verdict = REACHED
        elif auc < 0.5:
            verdict = OVERSHOT
        else:
            verdict = CONTINUE
        check = Check(step, auc, ks, retain_loss, verdict, calibration_loss, retain_probability)
        self.checks.append(check)
        if verdict != UTILITY and (self.best is None or check.distance < self.best.distance):
            self.best = check
        return check

    def utility_bound(self, retain_loss: float, calibration_loss: float) -> float:
        """The retain loss above which the guard stops the run: the start's retain loss plus ``utility_tolerance``
        of its gap to the calibration loss (the first check's own numbers when there is no start yet); when the
        model knew the retain set no better than unseen data, ``utility_tolerance`` of the start's value."""
        start = self.checks[0] if self.checks else Check(0, 0.5, 1.0, retain_loss, CONTINUE, calibration_loss)
        gap = start.calibration_loss - start.retain_loss
        if not gap > 0:
            return (1 + self.settings.utility_tolerance) * start.retain_loss
        return start.retain_loss + self.settings.utility_tolerance * gap

    def summary(self, final_verdict: str) -> CriterionRecord:
        """What the unlearning summary and the audit record keep: the criterion, the chosen check, the trace's
        length, why the run stopped, and whether the kept check is within the tolerance (``reached``, with the
        ``verdict`` in words: a run that ends short of it is never presented as a finished deletion)."""
        best = self.best
        start = self.checks[0] if self.checks else None
        reached = best is not None and best.distance <= self.tolerance
        verdict = (f"indistinguishable at step {best.step} (AUC {best.auc:.3f}, tolerance ±{self.tolerance:.3f})"
                   if reached else
                   f"not indistinguishable: best AUC {best.auc:.3f} at step {best.step} (tolerance "
                   f"±{self.tolerance:.3f}); the forget set can still be told from never-seen data"
                   if best is not None else "not indistinguishable: no check was kept")
        return CriterionRecord(
            stopped=final_verdict, reached=reached, verdict=verdict, tolerance=self.tolerance,
            utility_bound=self.utility_bound(start.retain_loss, start.calibration_loss) if start else None,
            z=self.settings.z, forget_examples=self.n_forget, calibration_examples=self.n_calibration,
            checks=len(self.checks), chosen=best, start=start)


def compare(forget_losses: list[float], calibration_losses: list[float]) -> tuple[float, float]:
    """The LOSS attack's AUC (lower loss = member: mia.auc has forget = 0 and calibration = 1 on loss-like
    scores, i.e. the probability that a forget loss is below a calibration loss) and the KS p-value."""
    from scipy.stats import ks_2samp  # here: scipy.stats costs half a second to import

    return mia.auc(forget_losses, calibration_losses), float(ks_2samp(forget_losses, calibration_losses).pvalue)


def example_losses(model, examples: list[dict], pad_token_id: int, batch_size: int = 32) -> list[float]:
    """Each tokenised example's mean answer NLL, teacher-forced (the LOSS attack's score)."""
    with torch.no_grad():
        return [s.avg_nll for s in score_examples(model, examples, pad_token_id, batch_size)]


class CriterionSets:
    """What one check scores, tokenised once: the forget and calibration sets and a retain sample (the utility
    guard's); :meth:`check` scores a model on them and asks the criterion. The training hook and the editors'
    damping search both check through it.

    With ``settings.reference == "twins"`` the calibration set is the forget records' counterfactual twins
    (:mod:`forgetkit.data.twins`) and the scores are paired: each answer's summed loss less the mean over its
    forget record and that record's twins, so what they share (question, name, wording) cancels; with
    ``twins.control``, less the same score under a fictitious name, so the donor values' own familiarity cancels
    too. The AUC then asks whether the model still prefers the true facts for these subjects. A forget record
    without a twin is left out of the comparison. The tolerance keeps the unpaired formula, an approximation for
    these centred scores."""

    def __init__(self, settings: CriterionSettings, tokenizer, forget: list[QARecord], calibration: list[QARecord],
                 retain: list[QARecord] | None, max_length: int, batch_size: int = 32) -> None:
        self.pad, self.batch_size = pad_id(tokenizer), batch_size
        self.forget = tokenize_qa(tokenizer, forget, max_length, name="forget (criterion)").examples
        self.calibration = tokenize_qa(tokenizer, calibration, max_length, name="calibration").examples
        self.retain = tokenize_qa(tokenizer, retain[: settings.retain_sample], max_length,
                                  name="retain (criterion)").examples if retain else []
        self.groups: dict[int, list[int]] | None = None
        self.controls: list[dict] = []  # the forget records, then their twins, under fictitious names
        self.controlled: list[bool] = []  # per forget record: whether it has a control (a subject to rename)
        if settings.reference == "twins":
            self.groups = {}
            for j, i in enumerate(twin_groups(forget, calibration)):
                self.groups.setdefault(i, []).append(j)
            if settings.twins.control:
                control_forget, control_twins = controls(forget, calibration, retain, settings.twins.seed)
                # a record without a detectable subject comes back unrenamed: it has no control (its scores stay)
                self.controlled = [c != r for c, r in zip(control_forget, forget, strict=True)]
                self.controls = tokenize_qa(tokenizer, control_forget + control_twins, max_length,
                                            name="control (criterion)").examples
        n_forget = len(self.groups) if self.groups is not None else len(self.forget)
        self.criterion = Criterion(settings, n_forget, len(self.calibration))

    def _stats(self, model, examples: list[dict]):
        with torch.no_grad():
            return score_examples(model, examples, self.pad, self.batch_size)

    def _scores(self, model) -> tuple[list[float], list[float], float]:
        """The forget and calibration scores (lower: better known) and the calibration set's mean loss."""
        if self.groups is None:
            forget, calibration = self._stats(model, self.forget), self._stats(model, self.calibration)
            level = sum(s.avg_nll for s in calibration) / len(calibration)
            return [s.avg_nll for s in forget], [s.avg_nll for s in calibration], level
        # in one call: a record and its twins share their prompt (one prefill for the group, from 10 M up)
        stats = self._stats(model, self.forget + self.calibration + self.controls)
        n, k = len(self.forget), len(self.calibration)
        level = sum(s.avg_nll for s in stats[n:n + k]) / k
        sums = [-float(s.logprobs.sum()) for s in stats]
        f_scores, c_scores = self._centred(sums[:n], sums[n:n + k])
        if self.controls:  # less the same under a fictitious name: the values' familiarity on their own
            f_control, c_control = self._centred(sums[n + k:n + k + n], sums[n + k + n:])
            records = sorted(self.groups)
            f_scores = [a - (b if self.controlled[i] else 0.0)
                        for a, b, i in zip(f_scores, f_control, records, strict=True)]
            owners = [i for i in records for _ in self.groups[i]]
            c_scores = [a - (b if self.controlled[i] else 0.0)
                        for a, b, i in zip(c_scores, c_control, owners, strict=True)]
        return f_scores, c_scores, level

    def _centred(self, f_sum: list[float], c_sum: list[float]) -> tuple[list[float], list[float]]:
        """Each record's and each twin's summed loss less the mean over the record and its twins."""
        f_scores, c_scores = [], []
        for i, twins in sorted(self.groups.items()):
            centre = (f_sum[i] + sum(c_sum[j] for j in twins)) / (1 + len(twins))
            f_scores.append(f_sum[i] - centre)
            c_scores.extend(c_sum[j] - centre for j in twins)
        return f_scores, c_scores

    def check(self, step: int, model) -> Check:
        """Score ``model`` (left in the train/eval mode it was in) and judge the check of ``step``."""
        was_training = model.training
        forget, calibration, level = self._scores(model)
        retain = [s.avg_nll for s in self._stats(model, self.retain)] if self.retain else []
        model.train(was_training)
        return self.criterion.judge(step, forget, calibration, sum(retain) / len(retain) if retain else 0.0,
                                    sum(math.exp(-x) for x in retain) / len(retain) if retain else math.nan,
                                    calibration_loss=level)


def forget_vs_calibration(model, tokenizer, forget: list[QARecord], calibration: list[QARecord],
                          max_length: int | None = None, z: float = 1.96) -> dict:
    """The criterion's numbers for one model (no stopping): the forget-vs-calibration AUC, the KS p-value and the
    tolerance the sample sizes give. The bench reports it for every cell, whether it ran with ``until`` or not.
    ``max_length``: None, the model's context (a prompt context, as input-based unlearners add, fits)."""
    pad = pad_id(tokenizer)
    max_length = max_length or context_length(model)
    f = example_losses(model, tokenize_qa(tokenizer, forget, max_length, name="forget").examples, pad)
    c = example_losses(model, tokenize_qa(tokenizer, calibration, max_length, name="calibration").examples, pad)
    auc, ks = compare(f, c)
    return {"auc": auc, "ks_pvalue": ks, "tolerance": auc_tolerance(len(f), len(c), z), "n_forget": len(f),
            "n_calibration": len(c)}
