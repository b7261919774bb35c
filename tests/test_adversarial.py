"""Latent adversarial unlearning: the residual-stream perturbation touches only the armed batch, the attacker's
projected step is the hand-computed one and restores the forget answers within its budget, and a method run
with ``adversary.kind=latent`` unlearns under it, its retain term untouched."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from forgetkit.cli import main
from forgetkit.data.formatting import collate, tokenize_qa
from forgetkit.data.records import QARecord
from forgetkit.methods import build_method
from forgetkit.methods.adversarial import LatentAdversary
from forgetkit.methods.base import forward
from forgetkit.methods.losses import mean_nll
from forgetkit.models import build_tiny_model
from forgetkit.models.latent import AdversarySettings, ResidualPerturbation, decoder_layers
from forgetkit.train import TrainConfig, UnlearnBatch, fine_tune


@pytest.fixture(scope="module")
def setup(bpe_tokenizer):
    records = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"p{i}") for i in range(8)]
    examples = tokenize_qa(bpe_tokenizer, records, 64).examples
    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
    fine_tune(model, type("Set", (), {"examples": examples})(), TrainConfig(epochs=20, batch_size=8, lr=1e-2),
              bpe_tokenizer.pad_token_id, quiet=True)
    model.eval()
    pad = bpe_tokenizer.pad_token_id
    return model, collate(examples[:4], pad), collate(examples[4:], pad)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_only_the_armed_batch_is_perturbed(bpe_tokenizer, family):
    model = build_tiny_model(bpe_tokenizer, family, "micro", seed=0).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    same_values = ids.clone()
    p = ResidualPerturbation(model)
    assert p.index == len(decoder_layers(model)) // 2
    with torch.no_grad():
        clean = model(input_ids=ids).logits
        p.arm(ids, torch.randn(1, 4, model.config.hidden_size, generator=torch.Generator().manual_seed(0)))
        moved = model(input_ids=ids).logits
        other = model(input_ids=same_values).logits  # equal values, another batch: not perturbed
        p.remove()
        after = model(input_ids=ids).logits
    assert not torch.allclose(moved, clean, atol=1e-4)
    assert torch.equal(other, clean) and torch.equal(after, clean)


def test_one_attack_step_is_the_normalised_gradient_step_within_the_budget(setup):
    model, forget, _ = setup
    settings = AdversarySettings(kind="latent", epsilon=0.3, steps=1, step_size=0.5)
    adversary = LatentAdversary(model, settings)
    delta, clean, _ = adversary.attack(model, forget)
    # by hand: the gradient of the forget cross-entropy at δ = 0, normalised per position, times 0.5·0.3·‖h‖
    p = adversary.perturbation
    zero = torch.zeros_like(delta, requires_grad=True)
    p.arm(forget["input_ids"], zero)
    nll = mean_nll(forward(model, forget).logits, forget["labels"])
    (grad,) = torch.autograd.grad(nll, zero)
    norms = p.norms
    p.disarm()
    expected = -0.5 * 0.3 * norms.unsqueeze(-1) * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    expected = expected * forget["attention_mask"].unsqueeze(-1)
    assert torch.allclose(delta, expected, atol=1e-6)
    assert clean == pytest.approx(float(nll), rel=1e-5)
    adversary.remove()


def test_the_attack_restores_the_forget_answers_inside_its_budget(setup):
    model, forget, _ = setup
    model = copy.deepcopy(model)  # the module's fixture is shared: perturb a copy
    with torch.no_grad():  # push the model off its answers, as unlearning would
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(1)))
    adversary = LatentAdversary(model, AdversarySettings(kind="latent", epsilon=0.5, steps=6))
    delta, clean, _ = adversary.attack(model, forget)
    p = adversary.perturbation
    p.arm(forget["input_ids"], delta)
    with torch.no_grad():
        attacked = float(mean_nll(forward(model, forget).logits, forget["labels"]))
        p.arm(forget["input_ids"], None)
        forward(model, forget)
    assert attacked < clean - 0.05
    assert (delta.norm(dim=-1) <= 0.5 * p.norms + 1e-5).all()
    assert delta[forget["attention_mask"] == 0].abs().max() == 0
    adversary.remove()


def test_the_method_unlearns_under_the_attacker_and_its_retain_term_is_not_perturbed(setup):
    model, forget, retain = setup
    batch = UnlearnBatch(forget=forget, retain=retain)
    method = build_method("graddiff")
    with torch.no_grad():
        plain = [named for _, named in method.parts(model, batch, None)]
    adversary = LatentAdversary(model, AdversarySettings(kind="latent", epsilon=0.5, steps=3))
    attacked = [named for _, named in adversary.parts(method, model, batch, None)]
    adversary.remove()
    assert attacked[1]["retain_ce"] == pytest.approx(plain[1]["retain_ce"], rel=1e-6)
    assert attacked[0]["neg_forget_ce"] > plain[0]["neg_forget_ce"]  # the forget answers are likelier under δ
    assert attacked[0]["adversary_ce"] < attacked[0]["adversary_clean_ce"]


def test_unlearn_with_a_latent_adversary_logs_it_and_records_it(unlearn_run, tmp_path):
    out = tmp_path / "npo_lat"
    assert main(["unlearn", "--run", str(unlearn_run), "--method", "npo", "--out", str(out), "--quiet",
                 "train.epochs=1", "train.batch_size=4", "adversary.kind=latent", "adversary.steps=2"]) == 0
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["adversary_ce"] < r["adversary_clean_ce"] for r in log)
    audit = json.loads((out / "audit.json").read_text())
    assert audit["config"]["adversary"]["kind"] == "latent"
    assert main(["unlearn", "--run", str(unlearn_run), "--method", "npo", "--out", str(tmp_path / "bad"),
                 "--quiet", "adversary.kind=fgsm"]) == 2
