"""Membership inference on forget vs holdout, PrivLeak, and an empirical ε lower bound.

Every score is oriented like a loss: higher means the example looks *less* like a training
member. AUC is ``roc_auc_score`` with forget = 0 and holdout = 1, so a forget set that is still
memorised (low losses) gives an AUC near 1, and 0.5 means forget and holdout examples cannot be
told apart (what the retrain oracle shows). PrivLeak follows MUSE's own orientation (forget =
non-member 0, holdout = member 1, on the negated Min-K% score, i.e. 1 − our AUC).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np

from forgetkit.eval.settings import MIN_K
from forgetkit.eval.token_stats import TokenStats

ORIENTATION = ("scores are loss-like (higher = looks less like a training member); AUC = roc_auc_score with "
               "forget = 0 and holdout = 1: 1.0 = forget examples still stand out as members, 0.5 = "
               "indistinguishable from never-trained holdout examples")


def _lowest(values: np.ndarray, k: float) -> np.ndarray:
    """The lowest ``max(1, int(k·n))`` values (Min-K%'s selection)."""
    count = max(1, int(k * values.size))
    return np.sort(values)[:count]


def loss_score(stats: TokenStats) -> float:
    """LOSS attack: the mean token NLL."""
    return stats.avg_nll


def zlib_score(stats: TokenStats, text: str) -> float:
    """ZLib attack: mean NLL over the zlib-compressed length (bytes) of the scored text."""
    return stats.avg_nll / len(zlib.compress(text.encode("utf-8")))


def min_k_score(stats: TokenStats, k: float = MIN_K) -> float:
    """Min-K% Prob: minus the mean of the lowest k·n token log-probabilities."""
    return float(-_lowest(stats.logprobs, k).mean())


def min_k_plus_plus_score(stats: TokenStats, k: float = MIN_K) -> float:
    """Min-K%++: minus the mean of the lowest k·n of (log p(x_t) − μ_t) / σ_t."""
    z = (stats.logprobs - stats.mu) / np.maximum(stats.sigma, 1e-12)
    return float(-_lowest(z, k).mean())


def reference_score(stats: TokenStats, reference: TokenStats) -> float:
    """Reference attack: the target's mean NLL minus the reference model's on the same tokens."""
    return stats.avg_nll - reference.avg_nll


def auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """ROC AUC with forget = 0 and holdout = 1 on loss-like scores (see :data:`ORIENTATION`)."""
    from sklearn.metrics import roc_auc_score  # here: sklearn costs half a second to import

    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(labels, list(forget_scores) + list(holdout_scores)))


def muse_auc(forget_scores: Sequence[float], holdout_scores: Sequence[float]) -> float:
    """MUSE's AUC: forget = non-member 0, holdout = member 1, on the negated loss-like score."""
    from sklearn.metrics import roc_auc_score

    labels = [0] * len(forget_scores) + [1] * len(holdout_scores)
    return float(roc_auc_score(labels, [-s for s in list(forget_scores) + list(holdout_scores)]))


def privleak(auc_unlearned: float, auc_retrain: float) -> float:
    """MUSE's PrivLeak in percent, from MUSE-oriented AUCs: 0 ideal, negative = still detectable."""
    return (auc_unlearned - auc_retrain) / auc_retrain * 100


def clopper_pearson(successes: int, trials: int, alpha: float = 0.05) -> tuple[float, float]:
    """One-sided (lower, upper) Clopper–Pearson bounds of a binomial rate, each at 1 − alpha."""
    from scipy.stats import beta  # here: scipy.stats costs half a second to import

    lower = 0.0 if successes == 0 else float(beta.ppf(alpha, successes, trials - successes + 1))
    upper = 1.0 if successes == trials else float(beta.ppf(1 - alpha, successes + 1, trials - successes))
    return lower, upper


def empirical_epsilon(forget_scores: Sequence[float], holdout_scores: Sequence[float],
                      alpha: float = 0.05) -> dict:
    """A lower bound on ε from the attack "member if score ≤ t", maximised over thresholds t.

    At each threshold, ε ≥ log(TPR_lower / FPR_upper) and ε ≥ log((1 − FPR)_lower / (1 − TPR)_upper),
    with one-sided Clopper–Pearson bounds at 1 − alpha; the bound is per threshold (the maximum is
    not corrected for the choice of threshold). It says how distinguishable the forget set still
    is; it is not a proof of privacy.
    """
    f = np.sort(np.asarray(forget_scores, dtype=np.float64))
    h = np.sort(np.asarray(holdout_scores, dtype=np.float64))
    nf, nh = f.size, h.size
    best = {"epsilon": 0.0, "threshold": None, "tpr": None, "fpr": None}
    for t in np.unique(np.concatenate([f, h])):
        tp = int(np.searchsorted(f, t, side="right"))  # forget (members) flagged
        fp = int(np.searchsorted(h, t, side="right"))  # holdout (non-members) flagged
        tpr_lo, tpr_hi = clopper_pearson(tp, nf, alpha)
        fpr_lo, fpr_hi = clopper_pearson(fp, nh, alpha)
        candidates = []
        if tpr_lo > 0:
            candidates.append(math.log(tpr_lo / fpr_hi))
        if fpr_hi < 1:
            # TNR lower bound is 1 − FPR upper; FNR upper bound is 1 − TPR lower.
            candidates.append(math.log((1 - fpr_hi) / (1 - tpr_lo)))
        for eps in candidates:
            if eps > best["epsilon"]:
                best = {"epsilon": eps, "threshold": float(t), "tpr": tp / nf, "fpr": fp / nh}
    return {**best, "n_forget": nf, "n_holdout": nh, "confidence": 1 - alpha}
