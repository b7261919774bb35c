"""TOFU's metrics, exactly as published: probability, ROUGE recall, truth ratio, Forget Quality
and Model Utility, on TOFU's own per-example log layout.

A log is a dict keyed by eval-set file name (TOFU's names, below), each holding per-metric dicts
keyed by example (TOFU uses the index as a string; forgetkit uses the record id). Losses named
``avg_*`` are per-token means of the answer's negative log-likelihood. The aggregates here read
nothing else, so TOFU's released ``eval_log_aggregated.json`` files and forgetkit's own logs go
through the same code (reference values: ../shared/reference/metrics.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from forgetkit.errors import ForgetkitError

# Eval-set roles and TOFU's file names for them. ``holdout`` is forgetkit's own (membership
# inference needs never-trained examples of the forget distribution); it never enters Model Utility.
SET_FILES = {
    "forget": "eval_log_forget.json",
    "retain": "eval_log.json",
    "real_authors": "eval_real_author_wo_options.json",
    "world_facts": "eval_real_world_wo_options.json",
    "holdout": "eval_log_holdout.json",
}
UTILITY_ROLES = ("retain", "real_authors", "world_facts")
# Sets whose probability is the plain P(a|q); the others have one true and several false answers.
PLAIN_PROBABILITY_ROLES = ("forget", "retain", "holdout")
# The answer a set's truth ratio sets against its perturbed answers (TOFU's ``base_answer_key``):
# the paraphrased answer on the people's sets, the true answer on the real-world and real-author sets.
TRUTH_RATIO_BASE = {"forget": "paraphrased_answer", "retain": "paraphrased_answer",
                    "holdout": "paraphrased_answer", "real_authors": "answer", "world_facts": "answer"}


def probability(avg_nll: float | np.ndarray) -> float | np.ndarray:
    """P(a|q) = exp(−avgNLL): the length-normalised probability of an answer."""
    return np.exp(-np.asarray(avg_nll, dtype=np.float64))


def probability_with_options(avg_true_nll: float, avg_false_nlls: Sequence[float]) -> float:
    """P_true / (P_true + Σ_j P_false_j), each length-normalised."""
    p_true = float(probability(avg_true_nll))
    return p_true / (p_true + float(np.sum(probability(avg_false_nlls))))


def truth_ratio(avg_paraphrased_nll: float, avg_perturbed_nlls: Sequence[float]) -> float:
    """R = P̃_pert / P_para, P̃_pert the geometric mean of the perturbed answers' probabilities."""
    return float(np.exp(avg_paraphrased_nll - np.mean(avg_perturbed_nlls)))


def truth_ratio_aggregate(ratios: Sequence[float], role: str) -> float:
    """``mean(min(R, 1/R))`` on a forget set; ``mean(max(0, 1 − R))`` on any other set."""
    r = np.asarray(ratios, dtype=np.float64)
    if role == "forget":
        return float(np.mean(np.minimum(r, 1 / r)))
    return float(np.mean(np.maximum(0.0, 1 - r)))


def truth_ratio_form(role: str) -> str:
    return "mean(min(R, 1/R))" if role == "forget" else "mean(max(0, 1 - R))"


class RougeRecall:
    """ROUGE-1 and ROUGE-L recall (``rouge-score``, Porter stemming on, as TOFU computes them)."""

    def __init__(self) -> None:
        from rouge_score import rouge_scorer

        self._scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)

    def __call__(self, generation: str, reference: str) -> dict[str, float]:
        scores = self._scorer.score(reference, generation)
        return {"rouge1_recall": scores["rouge1"].recall, "rougeL_recall": scores["rougeL"].recall}

    def rouge_l_f1(self, generation: str, reference: str) -> float:
        return self._scorer.score(reference, generation)["rougeL"].fmeasure


def _values(set_log: Mapping, metric: str, where: str) -> list:
    if metric not in set_log:
        raise ForgetkitError(f"{where}: no '{metric}' in the log")
    return list(set_log[metric].values())


def set_ratios(set_log: Mapping, where: str = "log") -> np.ndarray:
    """Per-example truth ratios R of one eval set, from its average losses."""
    para = np.asarray(_values(set_log, "avg_paraphrased_loss", where), dtype=np.float64)
    pert = np.asarray([np.mean(v) for v in _values(set_log, "average_perturb_loss", where)], dtype=np.float64)
    return np.exp(para - pert)


def missing_truth_ratio(set_log: Mapping) -> str | None:
    """Why a set's truth ratio (and its options probability) cannot be computed, or ``None``.

    A file with only ``question`` and ``answer`` has no paraphrased or perturbed answers to score."""
    n = len(set_log.get("avg_gt_loss", {}))
    for key, what in (("avg_paraphrased_loss", "paraphrased"), ("average_perturb_loss", "perturbed")):
        if len(set_log.get(key, {})) != n:
            return f"missing: not every example has {what} answers (no '{key}' in the log)"
    return None


def set_summary(set_log: Mapping, role: str, where: str = "log") -> dict:
    """Probability, ROUGE-L recall and the truth-ratio aggregate of one eval set.

    Without paraphrased and perturbed answers, the truth ratio (and, on the sets scored against
    options, the probability) is left out and ``missing`` says why; nothing is guessed."""
    gt = np.asarray(_values(set_log, "avg_gt_loss", where), dtype=np.float64)
    missing = missing_truth_ratio(set_log)
    out: dict = {}
    if role in PLAIN_PROBABILITY_ROLES:
        out["probability"] = float(np.mean(probability(gt)))
    elif missing is None:
        false = _values(set_log, "average_perturb_loss", where)
        out["probability"] = float(np.mean([probability_with_options(t, f) for t, f in zip(gt, false, strict=True)]))
    if missing is None:
        out["truth_ratio"] = truth_ratio_aggregate(set_ratios(set_log, where), role)
    else:
        out["missing"] = missing
    if "rougeL_recall" in set_log:
        out["rougeL_recall"] = float(np.mean(_values(set_log, "rougeL_recall", where)))
    return out


def model_utility(log: Mapping, where: str = "log") -> tuple[float | None, dict[str, float]]:
    """The harmonic mean of {probability, ROUGE-L recall, truth ratio} over the utility sets present.

    TOFU's Model Utility is this over retain, real authors and world facts (nine numbers); a log
    with fewer utility sets gives the mean over those it has, and the components say which.
    Returns ``(None, {})`` when the log holds no utility set, and ``(None, components)`` when a
    utility set lacks the paraphrased or perturbed answers a term needs (``utility_missing`` says which).
    """
    components: dict[str, float] = {}
    for role in UTILITY_ROLES:
        key = SET_FILES[role]
        if key not in log:
            continue
        summary = set_summary(log[key], role, f"{where}: {key}")
        for metric in ("probability", "rougeL_recall", "truth_ratio"):
            if metric in summary:
                components[f"{role}/{metric}"] = summary[metric]
    if not components or utility_missing(log):
        return None, components
    values = list(components.values())
    from scipy.stats import hmean  # here, as in the other metrics: scipy.stats takes most of a second to import

    # A zero component makes the harmonic mean zero (scipy warns on it; the answer is exact).
    mu = 0.0 if min(values) <= 0 else float(hmean(values))
    return mu, components


def utility_missing(log: Mapping) -> str | None:
    """Why Model Utility cannot be computed from ``log``'s utility sets, or ``None``."""
    for role in UTILITY_ROLES:
        key = SET_FILES[role]
        if key in log and (reason := missing_truth_ratio(log[key])):
            return f"{key}: {reason}"
    return None


def forget_quality(model_ratios: Sequence[float], oracle_ratios: Sequence[float]) -> tuple[float, float]:
    """``(p-value, KS statistic)`` of the two-sample KS test between per-example truth ratios."""
    from scipy.stats import ks_2samp

    result = ks_2samp(np.asarray(model_ratios, dtype=np.float64), np.asarray(oracle_ratios, dtype=np.float64))
    return float(result.pvalue), float(result.statistic)


def aggregate(log: Mapping, oracle_log: Mapping | None = None, where: str = "log",
              oracle_where: str = "oracle log") -> dict:
    """Forget Quality (against ``oracle_log``; ``None`` without one) and Model Utility of a log."""
    mu, components = model_utility(log, where)
    out: dict = {"forget_quality": None, "ks_statistic": None, "model_utility": mu,
                 "model_utility_components": components}
    if reason := utility_missing(log):
        out["model_utility_note"] = reason
    forget_key = SET_FILES["forget"]
    if forget_key in log:
        out["forget"] = set_summary(log[forget_key], "forget", f"{where}: {forget_key}")
    if oracle_log is None:
        out["forget_quality_note"] = "missing: no oracle log given"
        return out
    for name, doc in ((where, log), (oracle_where, oracle_log)):
        if forget_key not in doc:
            raise ForgetkitError(f"{name}: no forget set ('{forget_key}') in the log")
    for name, doc in ((where, log), (oracle_where, oracle_log)):
        if reason := missing_truth_ratio(doc[forget_key]):
            out["forget_quality_note"] = f"{name}: {forget_key}: {reason}"
            return out
    mine, theirs = log[forget_key], oracle_log[forget_key]
    n_mine, n_theirs = len(mine["avg_paraphrased_loss"]), len(theirs["avg_paraphrased_loss"])
    if n_mine != n_theirs:
        raise ForgetkitError(f"{oracle_where}: its forget set has {n_theirs} examples, the evaluated log's "
                             f"has {n_mine}: not the same forget set")
    out["forget_quality"], out["ks_statistic"] = forget_quality(
        set_ratios(mine, where), set_ratios(theirs, oracle_where))
    return out
