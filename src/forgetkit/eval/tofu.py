"""TOFU's metrics, exactly as published: probability, ROUGE recall, truth ratio, Forget Quality
and Model Utility, on TOFU's own per-example log layout.

A log is a dict keyed by eval-set file name (TOFU's names, below), each holding per-metric dicts
keyed by example (TOFU uses the index as a string; forgetkit uses the record id). Losses named
``avg_*`` are per-token means of the answer's negative log-likelihood. The aggregates here read
nothing else, so TOFU's released ``eval_log_aggregated.json`` files and forgetkit's own logs go
through the same code (reference values: ../shared/reference/metrics.md).

An oracle's log counts only for the same forget set (:func:`match_forget_sets`): its examples are matched to
the model's by content hash (forgetkit's ``example_hash``) or record id, and reordered to the model's order
before anything pairs them; logs that name no records (TOFU's, keyed by position) are matched by count, and
the result says so (``forget_set_match``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from forgetkit.data.records import QARecord
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


def _metric(set_log: Mapping, metric: str, where: str) -> Mapping:
    """One metric's values of a set, by example."""
    if metric not in set_log:
        raise ForgetkitError(f"{where}: no '{metric}' in the log")
    return set_log[metric]


def _values(set_log: Mapping, metric: str, where: str) -> list:
    return list(_metric(set_log, metric, where).values())


def set_ratios(set_log: Mapping, where: str = "log") -> np.ndarray:
    """Per-example truth ratios R of one eval set, from its average losses (each example's losses read by its
    key, in the order of ``avg_paraphrased_loss``)."""
    para, pert = _metric(set_log, "avg_paraphrased_loss", where), _metric(set_log, "average_perturb_loss", where)
    if set(para) != set(pert):
        raise ForgetkitError(f"{where}: 'avg_paraphrased_loss' and 'average_perturb_loss' name different examples")
    return np.exp(np.asarray(list(para.values()), dtype=np.float64)
                  - np.asarray([np.mean(pert[k]) for k in para], dtype=np.float64))


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


class EvalLog(dict):
    """A per-example log read from a file: the log itself, and ``path`` to name it in messages."""

    def __init__(self, doc: Mapping, path: str) -> None:
        super().__init__(doc)
        self.path = path


def log_name(log: Mapping, default: str) -> str:
    """How messages name ``log``: its file when it was read from one, else ``default``."""
    return log.path if isinstance(log, EvalLog) else default


# The ways a set's examples can be named, most specific first; "position" always applies.
NAMINGS = ("content hash", "record id", "position")


def _named(keys: list[str], hashes: Mapping) -> dict[str, dict[str, str]]:
    """Each naming that applies to examples ``keys`` (``hashes``: their content hashes, where known): key -> name."""
    positions = {k: str(i) for i, k in enumerate(keys)}
    names = {"position": positions}
    if keys and all(k in hashes for k in keys):
        names["content hash"] = {k: hashes[k] for k in keys}
    if keys != list(positions.values()):  # TOFU's keys are the positions: they name no record
        names["record id"] = {k: k for k in keys}
    return names


def log_example_names(set_log: Mapping) -> dict[str, dict[str, str]]:
    """How one set of a log names its examples (the keys of ``avg_gt_loss``), per applicable naming."""
    return _named(list(set_log.get("avg_gt_loss", {})), set_log.get("example_hash", {}))


def record_names(records: Sequence[QARecord]) -> dict[str, dict[str, str]]:
    """How an evaluation of ``records`` names them in its log, per applicable naming."""
    return _named([r.id for r in records], {r.id: r.content_hash() for r in records})


def match_forget_sets(mine: Mapping[str, Mapping[str, str]], theirs: Mapping[str, Mapping[str, str]], where: str,
                      oracle_where: str) -> tuple[list[tuple[str, str]], str]:
    """Pair the model's forget examples with the oracle's (``mine``, ``theirs``: their names, as from
    :func:`log_example_names`) by the most specific naming both have: ``(my key, oracle's key)`` in my order, and
    how they were matched. A different set is a one-line :class:`ForgetkitError` naming both, the count of
    examples not in both and the first of them; logs matched by position only are compared by count."""
    naming = next(n for n in NAMINGS if n in mine and n in theirs)
    a, b = mine[naming], theirs[naming]
    if naming == "position" and len(a) != len(b):
        raise ForgetkitError(f"{oracle_where}: its forget set has {len(b)} examples, {where}'s has {len(a)}: not the "
                             "same forget set")
    by_name = defaultdict(list)
    for key, name in b.items():
        by_name[name].append(key)
    pairs, only_mine = [], []
    for key, name in a.items():
        if by_name[name]:
            pairs.append((key, by_name[name].pop(0)))
        else:
            only_mine.append(key)
    only_theirs = [key for keys in by_name.values() for key in keys]
    if only_mine or only_theirs:
        first = f"'{only_mine[0]}', only in {where}" if only_mine else f"'{only_theirs[0]}', only in {oracle_where}"
        raise ForgetkitError(f"{oracle_where}: not the same forget set as {where}: {len(only_mine) + len(only_theirs)} "
                             f"example(s) are in only one of them, by {naming} (first: {first})")
    if naming != "position":
        return pairs, f"matched by {naming}"
    unnamed = " and ".join(w for w, names in ((where, mine), (oracle_where, theirs)) if len(names) == 1)
    return pairs, f"matched by count only (no record ids or content hashes in {unnamed or 'both logs alike'})"


def aligned(set_log: Mapping, pairs: Sequence[tuple[str, str]]) -> dict:
    """``set_log`` (the oracle's) re-keyed and ordered as the model's examples: each metric's value of the oracle's
    key under the model's key, for ``pairs`` from :func:`match_forget_sets`."""
    return {metric: {mine: values[theirs] for mine, theirs in pairs if theirs in values}
            for metric, values in set_log.items()}


def oracle_forget_set(names: Mapping[str, Mapping[str, str]], oracle_log: Mapping, where: str,
                      oracle_where: str) -> tuple[dict, str]:
    """The oracle log's forget set aligned to the examples ``names`` names (its forget set, or the records about
    to be evaluated), and how they were matched; a different set, or none, is refused."""
    forget_key = SET_FILES["forget"]
    if forget_key not in oracle_log:
        raise ForgetkitError(f"{oracle_where}: no forget set ('{forget_key}') in the log")
    theirs = oracle_log[forget_key]
    pairs, how = match_forget_sets(names, log_example_names(theirs), where, oracle_where)
    return aligned(theirs, pairs), how


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
    if forget_key not in log:
        raise ForgetkitError(f"{where}: no forget set ('{forget_key}') in the log")
    mine = log[forget_key]
    theirs, out["forget_set_match"] = oracle_forget_set(log_example_names(mine), oracle_log, where, oracle_where)
    for name, set_log in ((where, mine), (oracle_where, theirs)):
        if reason := missing_truth_ratio(set_log):
            out["forget_quality_note"] = f"{name}: {forget_key}: {reason}"
            return out
    out["forget_quality"], out["ks_statistic"] = forget_quality(
        set_ratios(mine, where), set_ratios(theirs, oracle_where))
    return out
