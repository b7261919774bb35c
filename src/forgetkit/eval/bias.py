"""Protected-attribute bias: the Word Embedding Association Test (WEAT, Caliskan et al. 2017) on a language
model's own representations.

For target word sets X, Y and attribute sets A, B, each word w has the association
s(w, A, B) = mean_a cos(w, a) − mean_b cos(w, b). The effect size is
d = (mean_{x∈X} s(x) − mean_{y∈Y} s(y)) / std_{w∈X∪Y} s(w) (sample standard deviation), and the one-sided
p-value is the share of equal-size re-partitions (X_i, Y_i) of X ∪ Y whose Σ_{X_i} s − Σ_{Y_i} s is at least the
observed one (every partition when there are at most ``EXACT_PARTITIONS``, else a seeded sample).

A word's vector is the model's last hidden state averaged over the word's tokens, the word encoded alone
with a leading space and no special tokens (how it appears inside a sentence). The shipped word sets are
WEAT 6, 7 and 8 (``eval/data/weat.json``, with their source); any file of the same layout can replace them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from math import comb
from pathlib import Path

import numpy as np
import torch

from forgetkit.errors import DataError
from forgetkit.eval.shipped import read_json_part
from forgetkit.models.logits import takes_logits_to_keep

SHIPPED_WEAT = "shipped"  # the setting's value for the shipped WEAT 6-8
EXACT_PARTITIONS = 20_000  # C(16, 8) = 12,870: the shipped tests are enumerated exactly
SAMPLED_PARTITIONS = 10_000
SET_KEYS = ("X", "Y", "A", "B")


def read_weat_tests(path: str | Path | None = None) -> dict[str, dict[str, list[str]]]:
    """The WEAT tests of ``path`` (None or ``SHIPPED_WEAT``: the shipped WEAT 6-8): ``{name: {X, Y, A, B: words}}``."""
    path = None if path == SHIPPED_WEAT else path
    tests, where = read_json_part(path, "weat.json", "tests", "WEAT test")
    for name, test in tests.items():
        for key in SET_KEYS:
            words = test.get(key) if isinstance(test, dict) else None
            if not isinstance(words, list) or len(words) < 2 or not all(isinstance(w, str) and w for w in words):
                raise DataError(where, "needs a list of at least two words", field=f"tests.{name}.{key}")
        if len(test["X"]) != len(test["Y"]):
            raise DataError(where, "must have as many words as X", field=f"tests.{name}.Y")
    return {name: {k: list(test[k]) for k in SET_KEYS} for name, test in tests.items()}


@torch.no_grad()
def word_vectors(model, tokenizer, words: Sequence[str]) -> np.ndarray:
    """``[len(words), hidden]``: each word's last hidden state, averaged over its tokens (float64)."""
    model.eval()
    device = next(model.parameters()).device
    head = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}  # the logits are not needed
    rows = []
    for word in words:
        ids = torch.tensor([tokenizer(" " + word, add_special_tokens=False)["input_ids"]], device=device)
        out = model(input_ids=ids, output_hidden_states=True, **head)
        rows.append(out.hidden_states[-1][0].double().mean(0).cpu().numpy())
    return np.stack(rows)


def associations(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """s(w, A, B) for each row of ``words``: mean cosine to A minus mean cosine to B."""
    def unit(m):
        return m / np.linalg.norm(m, axis=1, keepdims=True).clip(min=1e-12)

    w = unit(words)
    return (w @ unit(a).T).mean(1) - (w @ unit(b).T).mean(1)


def weat(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict:
    """``{effect_size, p_value, partitions}`` of the test on word vectors x, y (targets) and a, b (attributes)."""
    s = associations(np.concatenate([x, y]), a, b)
    n = len(x)
    effect = (s[:n].mean() - s[n:].mean()) / s.std(ddof=1)
    observed = s[:n].sum() - s[n:].sum()
    total = s.sum()
    count = len(s)
    if comb(count, n) <= EXACT_PARTITIONS:
        splits = (list(c) for c in itertools.combinations(range(count), n))
    else:
        rng = np.random.default_rng(seed)
        splits = (rng.choice(count, n, replace=False) for _ in range(SAMPLED_PARTITIONS))
    stats = np.array([2 * s[idx].sum() - total for idx in splits])  # Σ_{X_i} s − Σ_{Y_i} s
    return {"effect_size": float(effect), "p_value": float(np.mean(stats >= observed - 1e-12)),
            "partitions": int(stats.size)}


def weat_scores(model, tokenizer, tests: dict[str, dict[str, list[str]]] | None = None) -> dict[str, dict]:
    """Each test's effect size and p-value on ``model``'s representations (the shipped WEAT 6-8 by default)."""
    tests = tests or read_weat_tests()
    return {name: weat(*(word_vectors(model, tokenizer, test[k]) for k in SET_KEYS)) for name, test in tests.items()}
