"""Each method's loss against a direct computation of its formula on a tiny hand-made case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from forgetkit.errors import ConfigError
from forgetkit.methods import METHODS, Reference, UnlearnBatch, build_method, losses
from forgetkit.methods.rmu import default_layer
from forgetkit.models import build_tiny_model

IGNORE = -100


def log_softmax64(logits: torch.Tensor) -> np.ndarray:
    x = logits.double().numpy()
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def seq_nll64(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Σ_t −log p(label_{t+1} | ≤ t) over answer tokens, per sequence, in float64 with plain loops."""
    lp = log_softmax64(logits)
    out = []
    for b in range(labels.shape[0]):
        total = 0.0
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y != IGNORE:
                total -= lp[b, t, y]
        out.append(total)
    return np.array(out)


@pytest.fixture
def case():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6)
    ref_logits = torch.randn(2, 5, 6)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 1, 0], [IGNORE, 2, 5, IGNORE, IGNORE]])
    return logits, ref_logits, labels


def test_sequence_nll_and_mean_nll(case):
    logits, _, labels = case
    nll, counts = losses.sequence_nll(logits, labels)
    np.testing.assert_allclose(nll.numpy(), seq_nll64(logits, labels), rtol=1e-5)
    assert counts.tolist() == [3, 2]
    assert float(losses.mean_nll(logits, labels)) == pytest.approx(seq_nll64(logits, labels).sum() / 5, rel=1e-5)
    hf = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 6), labels[:, 1:].reshape(-1))
    assert float(losses.mean_nll(logits, labels)) == pytest.approx(float(hf), rel=1e-5)


def test_kl_ref_to_model(case):
    logits, ref_logits, labels = case
    lp, ref = log_softmax64(logits), log_softmax64(ref_logits)
    positions = [(b, t) for b in range(2) for t in range(4) if labels[b, t + 1] != IGNORE]
    want = np.mean([(np.exp(ref[b, t]) * (ref[b, t] - lp[b, t])).sum() for b, t in positions])
    assert float(losses.kl_ref_to_model(logits, ref_logits, labels)) == pytest.approx(want, rel=1e-5)
    assert float(losses.kl_ref_to_model(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)


def test_npo_simnpo_dpo_by_formula():
    nll, ref_nll = torch.tensor([2.0, 5.0]), torch.tensor([3.0, 1.0])
    beta = 0.1
    delta = ref_nll - nll  # log π_θ − log π_ref
    want = -(2 / beta) * np.mean([math.log(1 / (1 + math.exp(beta * d))) for d in delta.tolist()])
    assert float(losses.npo_loss(nll, ref_nll, beta)) == pytest.approx(want)
    # At π_θ = π_ref NPO is (2/β)·log 2, its value at the start of unlearning.
    assert float(losses.npo_loss(nll, nll, beta)) == pytest.approx(2 / beta * math.log(2))

    counts = torch.tensor([4, 2])
    b, d = 4.5, 0.5
    want = -(2 / b) * np.mean([math.log(1 / (1 + math.exp(-b * (x / n - d)))) for x, n in [(2.0, 4), (5.0, 2)]])
    assert float(losses.simnpo_loss(nll, counts, b, d)) == pytest.approx(want)

    win, win_ref, lose, lose_ref = (torch.tensor([v]) for v in (1.0, 2.0, 4.0, 3.0))
    margin = (2.0 - 1.0) - (3.0 - 4.0)  # Δ_win − Δ_lose = 1 − (−1)
    assert float(losses.dpo_loss(win, win_ref, lose, lose_ref, 0.1)) == pytest.approx(
        -(2 / 0.1) * math.log(1 / (1 + math.exp(-0.1 * margin))))


def test_undial_target_lowers_the_answer_logit(case):
    logits, ref_logits, labels = case
    beta = 10.0
    lp, total, n = log_softmax64(logits), 0.0, 0
    for b in range(2):
        for t in range(4):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            z = ref_logits[b, t].double().numpy().copy()
            z[y] -= beta
            target = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
            total += -(target * lp[b, t]).sum()
            n += 1
    assert float(losses.undial_loss(logits, ref_logits, labels, beta)) == pytest.approx(total / n, rel=1e-5)


def test_masked_mse_ignores_padding():
    h = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    target = torch.zeros(1, 2, 2)
    assert float(losses.masked_mse(h, target, torch.tensor([[1, 0]]))) == pytest.approx((1 + 4) / 2)


# --- methods on a tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(bpe_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))
    return lora


def part(tokenizer, texts: list[str], answer_from: int = 3) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE)
    labels[:, :answer_from] = IGNORE
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


@pytest.fixture(scope="module")
def batch(bpe_tokenizer):
    bpe_tokenizer.padding_side = "right"
    return UnlearnBatch(
        forget=part(bpe_tokenizer, ["Question: Who is person 3?\nAnswer: Person 3 is a poet.",
                                    "Question: Who is person 4?\nAnswer: a poet"]),
        retain=part(bpe_tokenizer, ["Question: Who is person 9?\nAnswer: Person 9 is a poet from town 2."]),
        alternate=part(bpe_tokenizer, ["Question: Who is person 3?\nAnswer: I do not know.",
                                       "Question: Who is person 4?\nAnswer: Not sure."]))


def test_method_losses_equal_their_formulas_on_a_lora_model(tiny, batch):
    ref = Reference(tiny)
    with torch.no_grad():
        f_logits = tiny(**{k: batch.forget[k] for k in ("input_ids", "attention_mask")}).logits
        r_logits = tiny(**{k: batch.retain[k] for k in ("input_ids", "attention_mask")}).logits
        a_logits = tiny(**{k: batch.alternate[k] for k in ("input_ids", "attention_mask")}).logits
        with tiny.disable_adapter():
            f_ref = tiny(**{k: batch.forget[k] for k in ("input_ids", "attention_mask")}).logits
            r_ref = tiny(**{k: batch.retain[k] for k in ("input_ids", "attention_mask")}).logits
            a_ref = tiny(**{k: batch.alternate[k] for k in ("input_ids", "attention_mask")}).logits
    fl, rl, al = batch.forget["labels"], batch.retain["labels"], batch.alternate["labels"]
    ce = lambda lg, lab: seq_nll64(lg, lab).sum() / int((lab[:, 1:] != IGNORE).sum())  # noqa: E731
    nll_f, nll_f_ref = seq_nll64(f_logits, fl), seq_nll64(f_ref, fl)
    nll_a, nll_a_ref = seq_nll64(a_logits, al), seq_nll64(a_ref, al)
    logsig = lambda x: -np.log1p(np.exp(-x))  # noqa: E731
    n_f = (fl[:, 1:] != IGNORE).sum(1).numpy()
    kl_r = float(losses.kl_ref_to_model(r_logits, r_ref, rl))
    want = {
        "ga": -ce(f_logits, fl),
        "graddiff": -ce(f_logits, fl) + ce(r_logits, rl),
        "kl": -ce(f_logits, fl) + kl_r,
        "npo": -(2 / 0.1) * logsig(-0.1 * (nll_f_ref - nll_f)).mean() + ce(r_logits, rl),
        "simnpo": 0.125 * -(2 / 4.5) * logsig(4.5 * (nll_f / n_f)).mean() + ce(r_logits, rl),
        "idk_dpo": -(2 / 0.1) * logsig(0.1 * ((nll_a_ref - nll_a) - (nll_f_ref - nll_f))).mean() + ce(r_logits, rl),
        "idk_nll": ce(a_logits, al) + ce(r_logits, rl),
        "relearn": ce(a_logits, al) + ce(r_logits, rl) + kl_r,
        "retrain": ce(r_logits, rl),
        "undial": float(losses.undial_loss(f_logits, f_ref, fl, 10.0)) + ce(r_logits, rl),
    }
    for name, value in want.items():
        with torch.no_grad():
            total, terms = build_method(name).loss(tiny, batch, ref)
        assert float(total) == pytest.approx(value, rel=1e-4, abs=1e-5), name
        assert terms and all(math.isfinite(v) for v in terms.values()), name


def test_reference_is_the_adapter_disabled_model_and_a_copy_in_full_mode(tiny, batch, bpe_tokenizer):
    inputs = {k: batch.forget[k] for k in ("input_ids", "attention_mask")}
    labelled = batch.forget["labels"][:, 1:] != IGNORE
    with torch.no_grad(), tiny.disable_adapter():
        base_logits = tiny(**inputs).logits
    # π_ref's logits at the labelled positions (the head runs there only)
    torch.testing.assert_close(Reference(tiny)(tiny, batch.forget).logits, base_logits[:, :-1][labelled])
    assert not torch.allclose(tiny(**inputs).logits, base_logits)  # the adapter is not zero

    full = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=1)
    ref = Reference(full)
    with torch.no_grad():
        before = full(**inputs).logits
        for p in full.parameters():
            p.add_(0.1)
    torch.testing.assert_close(ref(full, batch.forget).logits, before[:, :-1][labelled])


def test_losses_give_the_same_numbers_from_labelled_or_full_logits(tiny, batch):
    """The [n, V] logits at the labelled positions (what training computes) and the full [B, T, V]
    logits give every loss term to float tolerance."""
    inputs = {k: batch.forget[k] for k in ("input_ids", "attention_mask")}
    labels = batch.forget["labels"]
    with torch.no_grad():
        full = tiny(**inputs).logits
        with tiny.disable_adapter():
            ref_full = tiny(**inputs).logits
    keep = labels[:, 1:] != IGNORE
    part, ref_part = full[:, :-1][keep], ref_full[:, :-1][keep]
    for a, b in ((full, part), (ref_full, ref_part)):
        for got, want in zip(losses.sequence_nll(b, labels), losses.sequence_nll(a, labels), strict=True):
            torch.testing.assert_close(got, want)
    torch.testing.assert_close(losses.kl_ref_to_model(part, ref_part, labels),
                               losses.kl_ref_to_model(full, ref_full, labels))
    torch.testing.assert_close(losses.undial_loss(part, ref_part, labels, 3.0),
                               losses.undial_loss(full, ref_full, labels, 3.0))
    torch.testing.assert_close(losses.sequence_nll(full, labels)[0], torch.tensor(seq_nll64(full, labels)).float())


def test_rmu_loss_by_formula(tiny, batch):
    method = build_method("rmu", {"layer": 1})
    with torch.no_grad():
        total, _ = method.loss(tiny, batch, Reference(tiny))
        h_f = tiny(**{k: batch.forget[k] for k in ("input_ids", "attention_mask")},
                   output_hidden_states=True).hidden_states[1]
        h_r = tiny(**{k: batch.retain[k] for k in ("input_ids", "attention_mask")},
                   output_hidden_states=True).hidden_states[1]
        with tiny.disable_adapter():
            h_ref = tiny(**{k: batch.retain[k] for k in ("input_ids", "attention_mask")},
                         output_hidden_states=True).hidden_states[1]
    u = method.direction(h_f.shape[-1], "cpu").double()
    assert float(u.norm()) == pytest.approx(1.0)
    mask = batch.forget["attention_mask"].bool()
    forget = ((h_f.double()[mask] - 6.5 * u) ** 2).mean()
    retain = ((h_r.double() - h_ref.double()) ** 2).mean()  # one retain example, no padding
    assert float(total) == pytest.approx(float(forget + 1200 * retain), rel=1e-4)
    assert default_layer(32) == 7 and default_layer(2) == 1


def test_registry_and_config_errors():
    assert {"ga", "graddiff", "kl", "npo", "simnpo", "idk_dpo", "idk_nll", "rmu", "undial", "relearn",
            "retrain"} <= set(METHODS)
    assert all(cls.summary for cls in METHODS.values())
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        build_method("nope")
    with pytest.raises(ConfigError, match="unknown key 'method.npo.betta'"):
        build_method("npo", {"betta": 0.1})
    with pytest.raises(ConfigError, match="method.npo.beta: expected float"):
        build_method("npo", {"beta": "high"})
