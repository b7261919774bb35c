"""Memorisation metrics: extraction strength, exact memorisation, canary exposure.

Extraction strength and exact memorisation read the teacher-forced argmax matches of
:class:`~forgetkit.eval.token_stats.TokenStats`; verbatim memorisation (ROUGE-L F1 of a greedy
continuation) is computed where generations are (``forgetkit.eval.evaluate``); exposure ranks a
canary's secret among candidate secrets by model log-likelihood (Carlini et al., "The Secret
Sharer").
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np


def extraction_strength(correct: np.ndarray) -> float:
    """ES = 1 − k/n, k the smallest position from which every argmax prediction is right."""
    n = correct.size
    wrong = np.flatnonzero(~correct)
    k = 0 if wrong.size == 0 else int(wrong[-1]) + 1
    return 1 - k / n


def exact_memorisation(correct: np.ndarray) -> float:
    """The fraction of tokens whose teacher-forced argmax equals the label."""
    return float(np.mean(correct))


def exposure(true_logprob: float, candidate_logprobs: Sequence[float], space_size: int) -> float:
    """log2|S| − log2(rank of the true secret among all |S| secrets by model likelihood).

    ``candidate_logprobs`` are log-likelihoods of secrets other than the true one. When they cover
    the rest of the space, the rank is exact (1 + the number the model prefers). When they are a
    uniform sample, the rank is 1 + (|S| − 1)·p, with p the probability that a random secret is
    preferred, read from a skew-normal fitted to the candidates' negative log-likelihoods: the
    extrapolation of Carlini et al. (2019, §4.3), which resolves exposures far beyond log2 of the
    sample size.
    """
    candidates = np.asarray(candidate_logprobs, dtype=np.float64)
    if candidates.size >= space_size - 1:
        rank = 1 + int(np.sum(candidates > true_logprob))
    else:
        from scipy.stats import skewnorm

        shape, loc, scale = skewnorm.fit(-candidates)
        preferred = float(skewnorm.cdf(-true_logprob, shape, loc, scale))
        rank = 1 + (space_size - 1) * preferred
    return math.log2(space_size) - math.log2(rank)


def digit_candidates(secret: str, count: int, seed: int = 0) -> list[str]:
    """Up to ``count`` distinct digit strings of the secret's length, excluding the secret.

    When the space (10^length − 1 others) is no larger than ``count``, all of it, so the rank
    is exact.
    """
    length = len(secret)
    space = 10**length
    if space - 1 <= count:
        return [f"{i:0{length}d}" for i in range(space) if f"{i:0{length}d}" != secret]
    rng = random.Random(seed)
    seen: set[str] = {secret}
    out: list[str] = []
    while len(out) < count:
        cand = f"{rng.randrange(space):0{length}d}"
        if cand not in seen:
            seen.add(cand)
            out.append(cand)
    return out
