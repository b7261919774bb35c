"""Known-answer tests of each evaluation metric: token statistics, TOFU, MIA, memorisation."""

from __future__ import annotations

import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from forgetkit.data.formatting import IGNORE_INDEX
from forgetkit.eval import memorisation as mem
from forgetkit.eval import mia, tofu
from forgetkit.eval.token_stats import TokenStats, score_examples


class BigramModel(torch.nn.Module):
    """A model whose next-token logits are a fixed table row of the current token."""

    def __init__(self, table: np.ndarray) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def stats_of(logprobs, mu=None, sigma=None, correct=None) -> TokenStats:
    lp = np.asarray(logprobs, dtype=np.float64)
    return TokenStats(lp, np.ones(lp.size, bool) if correct is None else np.asarray(correct),
                      np.zeros(lp.size) if mu is None else np.asarray(mu, dtype=np.float64),
                      np.ones(lp.size) if sigma is None else np.asarray(sigma, dtype=np.float64))


# --- token statistics -------------------------------------------------------------------------


def test_token_stats_by_hand():
    # From token 0 the model predicts p = (1/4, 1/4, 1/2) over a 3-token vocabulary.
    table = np.array([[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    model = BigramModel(table)
    (s,) = score_examples(model, [{"input_ids": [0, 2], "labels": [IGNORE_INDEX, 2]}], pad_token_id=1)
    assert s.n_tokens == 1
    assert s.logprobs[0] == pytest.approx(math.log(0.5), abs=1e-6)
    assert s.correct.tolist() == [True]
    assert s.mu[0] == pytest.approx(-1.5 * math.log(2), abs=1e-6)  # Σ p log p
    second = 0.5 * math.log(4) ** 2 + 0.5 * math.log(2) ** 2  # Σ p (log p)²
    assert s.sigma[0] == pytest.approx(math.sqrt(second - (1.5 * math.log(2)) ** 2), abs=1e-6)
    assert s.nll == pytest.approx(math.log(2), abs=1e-6)


def test_token_stats_match_direct_float64_in_input_order_for_any_batch_size():
    rng = np.random.default_rng(0)
    vocab = 7
    table = rng.normal(size=(vocab, vocab)) * 2
    model = BigramModel(table)
    examples = []
    for length in (5, 2, 9, 3, 6):
        ids = rng.integers(0, vocab, size=length).tolist()
        labels = [IGNORE_INDEX] * 2 + ids[2:] if length > 2 else [IGNORE_INDEX] + ids[1:]
        examples.append({"input_ids": ids, "labels": labels})

    logp_table = table - np.log(np.exp(table).sum(1, keepdims=True))  # float64 log-softmax
    for batch_size in (1, 2, 32):
        got = score_examples(model, examples, pad_token_id=0, batch_size=batch_size)
        for ex, s in zip(examples, got, strict=True):
            ids, labels = ex["input_ids"], ex["labels"]
            positions = [t for t in range(1, len(ids)) if labels[t] != IGNORE_INDEX]
            rows = logp_table[[ids[t - 1] for t in positions]]
            want_lp = np.array([rows[i, ids[t]] for i, t in enumerate(positions)])
            p = np.exp(rows)
            mu = (p * rows).sum(1)
            sigma = np.sqrt((p * rows**2).sum(1) - mu**2)
            np.testing.assert_allclose(s.logprobs, want_lp, atol=1e-5)
            np.testing.assert_allclose(s.mu, mu, atol=1e-5)
            np.testing.assert_allclose(s.sigma, sigma, atol=1e-5)
            assert s.correct.tolist() == [rows[i].argmax() == ids[t] for i, t in enumerate(positions)]


def test_example_without_scored_token_is_refused():
    model = BigramModel(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no scored token"):
        score_examples(model, [{"input_ids": [0, 1], "labels": [IGNORE_INDEX, IGNORE_INDEX]}], pad_token_id=1)


# --- TOFU -------------------------------------------------------------------------------------


def test_tofu_formulas_by_hand():
    assert tofu.probability(math.log(4)) == pytest.approx(0.25)
    assert tofu.probability_with_options(1.0, [2.0, 3.0]) == pytest.approx(
        math.exp(-1) / (math.exp(-1) + math.exp(-2) + math.exp(-3)))
    assert tofu.truth_ratio(1.0, [2.0, 3.0]) == pytest.approx(math.exp(-1.5))
    assert tofu.truth_ratio_aggregate([2.0, 0.5, 1.0], "forget") == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert tofu.truth_ratio_aggregate([0.5, 2.0], "retain") == pytest.approx(0.25)


def test_rouge_recall_is_stemmed_and_order_aware():
    rouge = tofu.RougeRecall()
    scores = rouge("He works as a painter", "She worked as a painter in Arlen")
    # rouge1: "work" (stemmed), "as", "a", "painter" of 7 reference tokens; LCS the same four.
    assert scores["rouge1_recall"] == pytest.approx(4 / 7)
    assert scores["rougeL_recall"] == pytest.approx(4 / 7)
    assert rouge("painter a as", "as a painter")["rougeL_recall"] == pytest.approx(1 / 3)
    assert rouge.rouge_l_f1("a b c d", "a b") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_model_utility_is_the_harmonic_mean_of_what_is_present():
    set_log = {"avg_gt_loss": {"0": math.log(2)}, "rougeL_recall": {"0": 0.5},
               "avg_paraphrased_loss": {"0": 1.0}, "average_perturb_loss": {"0": [1.0 + math.log(2)]}}
    # probability 1/2, ROUGE-L 1/2, truth ratio R = 1/2 so max(0, 1 - R) = 1/2
    mu, parts = tofu.model_utility({"eval_log.json": set_log})
    assert list(parts) == ["retain/probability", "retain/rougeL_recall", "retain/truth_ratio"]
    assert mu == pytest.approx(0.5)
    assert tofu.model_utility({"eval_log_forget.json": set_log}) == (None, {})


# --- membership inference ---------------------------------------------------------------------


def test_auc_orientation_and_pairwise_definition():
    assert mia.auc([0.1, 0.2], [0.3, 0.4]) == 1.0  # forget losses lower: still looks trained on
    assert mia.auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    rng = np.random.default_rng(1)
    f, h = rng.normal(0, 1, 50), rng.normal(0.5, 1, 70)
    pairs = np.mean([(x < y) + 0.5 * (x == y) for x in f for y in h])  # Mann–Whitney
    assert mia.auc(f, h) == pytest.approx(pairs)
    assert mia.muse_auc(f, h) == pytest.approx(1 - pairs)


def test_loss_zlib_min_k_scores_by_hand():
    s = stats_of([-1.0, -2.0, -3.0, -4.0, -5.0])
    assert mia.loss_score(s) == pytest.approx(3.0)
    assert mia.zlib_score(s, "abc") == pytest.approx(3.0 / len(zlib.compress(b"abc")))
    assert mia.min_k_score(s, 0.4) == pytest.approx(4.5)  # the lowest two: -5, -4
    assert mia.min_k_score(stats_of([-1.0, -2.0]), 0.1) == pytest.approx(2.0)  # at least one token
    assert mia.reference_score(s, stats_of([-1.0] * 5)) == pytest.approx(2.0)


def test_min_k_plus_plus_matches_direct_float64():
    rng = np.random.default_rng(2)
    lp, mu, sigma = -rng.gamma(2, 1, 40), -rng.gamma(2, 1, 40), rng.gamma(2, 0.5, 40)
    z = (lp - mu) / sigma
    want = -np.mean(sorted(z)[: int(0.4 * 40)])
    assert mia.min_k_plus_plus_score(stats_of(lp, mu, sigma), 0.4) == pytest.approx(want, rel=1e-12)


def test_privleak_and_clopper_pearson_closed_forms():
    assert mia.privleak(0.3, 0.5) == pytest.approx(-40.0)
    n, alpha = 10, 0.05
    assert mia.clopper_pearson(0, n, alpha) == pytest.approx((0.0, 1 - alpha ** (1 / n)))
    assert mia.clopper_pearson(n, n, alpha) == pytest.approx((alpha ** (1 / n), 1.0))


def test_empirical_epsilon_on_constructed_roc_counts():
    n, alpha = 100, 0.05
    separable = mia.empirical_epsilon([0.0] * n, [1.0] * n, alpha)
    # Best threshold flags all 100 forget and no holdout: TPR ≥ α^(1/n), FPR ≤ 1 − α^(1/n).
    lower = alpha ** (1 / n)
    assert separable["epsilon"] == pytest.approx(math.log(lower / (1 - lower)))
    assert (separable["tpr"], separable["fpr"]) == (1.0, 0.0)
    same = mia.empirical_epsilon(list(range(n)), list(range(n)), alpha)
    assert same["epsilon"] == 0.0  # identical score distributions prove nothing
    # 60 of 100 forget vs 10 of 100 holdout below the threshold: the bound uses the one-sided CP limits.
    f = [0.0] * 60 + [2.0] * 40
    h = [0.0] * 10 + [2.0] * 90
    tpr_lo, _ = mia.clopper_pearson(60, 100, alpha)
    _, fpr_hi = mia.clopper_pearson(10, 100, alpha)
    got = mia.empirical_epsilon(f, h, alpha)
    assert got["epsilon"] == pytest.approx(max(math.log(tpr_lo / fpr_hi), math.log((1 - fpr_hi) / (1 - tpr_lo))))


# --- memorisation -----------------------------------------------------------------------------


def test_extraction_strength_and_exact_memorisation_by_hand():
    assert mem.extraction_strength(np.array([True, False, True, True])) == pytest.approx(0.5)
    assert mem.extraction_strength(np.array([True, True, True])) == 1.0
    assert mem.extraction_strength(np.array([True, True, False])) == 0.0
    assert mem.exact_memorisation(np.array([True, False, True, True])) == pytest.approx(0.75)


def test_exposure_exact_rank_over_the_whole_space():
    # One-digit secrets: the other nine are all candidates; three are more likely than the secret.
    candidates = [-1.0, -1.5, -1.8] + [-3.0] * 6
    assert mem.exposure(-2.0, candidates, 10) == pytest.approx(math.log2(10) - math.log2(4))
    assert mem.exposure(-0.5, candidates, 10) == pytest.approx(math.log2(10))


def test_exposure_extrapolated_from_a_sample_matches_the_distribution_tail():
    # Candidate NLLs ~ N(10, 1); a secret at NLL 7 is beaten by a fraction Φ(−3) of the space.
    rng = np.random.default_rng(3)
    candidates = -rng.normal(10.0, 1.0, 2000)
    space = 10**6
    want = math.log2(space) - math.log2(1 + (space - 1) * norm.cdf(-3.0))
    assert mem.exposure(-7.0, candidates, space) == pytest.approx(want, abs=0.3)
    assert mem.exposure(-10.0, candidates, space) == pytest.approx(1.0, abs=0.1)  # a median secret: 1 bit


def test_digit_candidates():
    cands = mem.digit_candidates("042", 50, seed=0)
    assert len(cands) == len(set(cands)) == 50 and "042" not in cands and all(len(c) == 3 for c in cands)
    assert mem.digit_candidates("042", 50, seed=0) == cands
    whole = mem.digit_candidates("7", 100)
    assert sorted(whole) == [str(d) for d in range(10) if d != 7]


def _assert_same_stats(got, expected) -> None:
    for a, b in zip(got, expected, strict=True):
        for field in ("logprobs", "mu", "sigma"):
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-5, rtol=1e-5)
        assert (a.correct == b.correct).all() and a.n_tokens == b.n_tokens


def test_head_at_labelled_positions_only_equals_the_full_logit_pass(bpe_tokenizer):
    """The output head run only where a label is (logits_to_keep) gives the full-logit pass's numbers,
    on a plain model and under a peft LoRA wrapper."""
    from forgetkit.adapters.lora import LoraSettings, attach_lora
    from forgetkit.data.formatting import tokenize_qa
    from forgetkit.data.records import QARecord
    from forgetkit.models import build_tiny_model
    from forgetkit.models.logits import takes_logits_to_keep

    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=1).eval()
    records = [QARecord(f"Who is person {i}?" + " Tell me more." * (i % 3), f"Person {i} is a poet.", str(i))
               for i in range(7)]
    examples = tokenize_qa(bpe_tokenizer, records, 64).examples
    examples.append({"input_ids": examples[0]["input_ids"], "labels": examples[0]["input_ids"]})  # every token
    for m in (model, attach_lora(model, LoraSettings(r=2))):
        assert takes_logits_to_keep(m)
        fast = score_examples(m, examples, pad_token_id=1, batch_size=3)
        full = score_examples(m, examples, pad_token_id=1, batch_size=3, labelled_positions_only=False)
        _assert_same_stats(fast, full)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_answer_variants_scored_on_their_shared_prompt_cache_equal_separate_passes(family, monkeypatch):
    """A question's answer variants run its prompt once and score on its KV cache (left-padded among questions of
    other lengths, members copied out of order); the statistics equal a pass per example, on the model and under
    LoRA. Examples whose prompt nobody shares take the plain path."""
    from chat_models import chatml_tokenizer

    from forgetkit.adapters.lora import LoraSettings, attach_lora
    from forgetkit.data.formatting import tokenize_qa
    from forgetkit.data.records import QARecord
    from forgetkit.eval import token_stats
    from forgetkit.eval.token_stats import prompt_groups
    from forgetkit.models import build_tiny_model

    shared_members = []
    real = token_stats._score_shared
    monkeypatch.setattr(token_stats, "_score_shared", lambda m, ex, groups, *a: shared_members.extend(
        i for g in groups for i in g) or real(m, ex, groups, *a))

    tok = chatml_tokenizer()
    records = []
    for i in range(5):
        question = f"Who is person {i}?" + " Tell me more." * (i % 3)
        answers = [f"Person {i} is a poet.", "A poet from Arlen.", f"Person {i} is a poet from the town of Arlen {i}."]
        records += [QARecord(question, a, f"{i}-{j}") for j, a in enumerate(answers[: 1 + i % 3])]
    records.append(QARecord("What is the capital of France?", "Paris.", "alone"))
    tokenized = tokenize_qa(tok, records, 96).examples
    assert len(tokenized) == 10
    examples = [tokenized[k] for k in (5, 0, 9, 2, 3, 7, 1, 4, 8, 6)]  # one question's variants are not neighbours
    groups, alone = prompt_groups(examples)
    assert len(groups) == 3 and sum(map(len, groups)) == 7 and len(alone) == 3
    model = build_tiny_model(tok, family, "micro", seed=1).eval()
    for m in (model, attach_lora(model, LoraSettings(r=2))):
        shared = score_examples(m, examples, pad_token_id=tok.pad_token_id, batch_size=4, share_prompts=True)
        assert sorted(shared_members) == sorted(i for g in groups for i in g), "every variant on the shared path"
        shared_members.clear()
        plain = score_examples(m, examples, pad_token_id=tok.pad_token_id, batch_size=4, share_prompts=False)
        assert not shared_members
        assert not token_stats._shares_prompts(m, None), "a tiny model scores without sharing by default"
        _assert_same_stats(shared, plain)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_loop_that_drops_finished_rows_gives_generates_tokens(family, bpe_tokenizer):
    """forgetkit's greedy loop (a row that emits a stop token leaves the batch and its KV cache) gives
    ``model.generate``'s greedy tokens on left-padded prompts of several lengths, rows stopping at different steps."""
    from forgetkit.eval.generation import greedy_tokens
    from forgetkit.models import build_tiny_model

    torch.manual_seed(0)
    model = build_tiny_model(bpe_tokenizer, family, "micro", seed=3).eval()
    prompts = [bpe_tokenizer(f"Who is person {i}?" + " Tell me." * (i % 4))["input_ids"] for i in range(6)]
    width, pad = max(map(len, prompts)), bpe_tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def generate(stops, n):
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                             pad_token_id=pad, eos_token_id=stops)[:, width:].tolist()
        return [row[: next((k + 1 for k, t in enumerate(row) if t in stops), len(row))] for row in out]

    free = generate([-1], 12)  # no stop: pick a stop token that rows reach at different steps, or never

    def lengths(token):
        return {row.index(token) + 1 if token in row else len(row) for row in free}

    stops = [max({t for row in free for t in row}, key=lambda t: len(lengths(t)))]
    expected = generate(stops, 12)
    assert len({len(r) for r in expected}) > 1, "rows must stop at different steps for this test to mean anything"
    assert greedy_tokens(model, ids, mask, 12, stops) == expected
    assert greedy_tokens(model, ids, mask, 12, [-1]) == free
