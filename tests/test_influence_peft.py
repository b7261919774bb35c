"""Influence-guided PEFT unlearning: each phase on its own, then the pipeline end to end on micro."""

from __future__ import annotations

import json

import pytest
import torch

from forgetkit.adapters import LoraSettings, attach_lora
from forgetkit.cli import main
from forgetkit.data.formatting import collate, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.influence import InfluenceScores, SolveResult, loss_gradient
from forgetkit.influence.guided import ForgettingRegulariser, critical_modules, gradient_matched, mask_by_influence
from forgetkit.models import build_tiny_model, load_model


class TwoModules(torch.nn.Module):
    """y = a(x[:4]) + b(x[4:]): module b reads features that only the forget set has."""

    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Linear(4, 1, bias=False).double()
        self.b = torch.nn.Linear(4, 1, bias=False).double()

    def forward(self, x):
        return (self.a(x[:, :4]) + self.b(x[:, 4:])).squeeze(-1)


def squared_loss(model, batch):
    return 0.5 * ((model(batch["x"]) - batch["y"]) ** 2).mean()


@pytest.mark.parametrize("solver", ["exact", "lissa"])
def test_phase1_picks_the_module_that_alone_carries_the_forget_signal(solver):
    torch.manual_seed(0)
    model = TwoModules()
    g = torch.Generator().manual_seed(0)
    retain_x = torch.cat([torch.randn(32, 4, generator=g, dtype=torch.float64),
                          torch.zeros(32, 4, dtype=torch.float64)], 1)
    forget_x = torch.randn(8, 8, generator=g, dtype=torch.float64)
    retain = [{"x": retain_x, "y": torch.randn(32, generator=g, dtype=torch.float64)}]
    forget = [{"x": forget_x, "y": torch.randn(8, generator=g, dtype=torch.float64) + 3}]
    options = {"depth": 200} if solver == "lissa" else {}
    chosen, scores = critical_modules(model, ["a", "b"], forget, retain, k=1, kind="hessian", solver=solver,
                                      loss_fn=squared_loss, damping_ratio=0.1, **options)
    assert chosen == ["b"]
    module = scores.module_scores()
    assert module["b"] > 3 * module["a"]
    assert not any(p.requires_grad is False for p in model.parameters())  # requires_grad restored


@pytest.fixture(scope="module")
def lora_lm(bpe_tokenizer):
    torch.manual_seed(0)
    model = attach_lora(build_tiny_model(bpe_tokenizer, "gpt2", "micro", seed=0),
                        LoraSettings(r=2, alpha=4, target_modules=["c_attn"])).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    forget = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"f{i}") for i in range(3)]
    retain = [QARecord(f"What is {i} plus {i}?", f"It is {2 * i}.", f"r{i}") for i in range(12)]
    tok = bpe_tokenizer
    return model, tokenize_qa(tok, forget, 48).examples, tokenize_qa(tok, retain, 48).examples, tok.pad_token_id


def test_phase2_regulariser_value_and_gradient_follow_the_formula(lora_lm):
    model, forget, _, pad = lora_lm
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    batches = [collate(forget, pad)]
    g = loss_gradient(model, params, batches)
    reg = ForgettingRegulariser(model, params, batches, weight=0.7)
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    value = reg()
    assert float(value) == pytest.approx(0.7 * float((flat * g).abs().sum()), rel=1e-5)
    grads = torch.autograd.grad(value, params)
    expected = 0.7 * torch.sign(flat) * g.abs()
    assert torch.allclose(torch.cat([x.reshape(-1) for x in grads]), expected, rtol=1e-5, atol=1e-9)


def test_phase3_mask_zeroes_exactly_the_chosen_fraction_with_the_largest_influence():
    named = [("m.lora_A.default.weight", torch.nn.Parameter(torch.ones(2, 5))),
             ("m.lora_B.default.weight", torch.nn.Parameter(torch.ones(5, 2)))]
    influence = [torch.arange(10.0).view(2, 5), -torch.arange(10.0, 20.0).view(5, 2)]
    scores = InfluenceScores([n for n, _ in named], influence, influence, SolveResult(torch.zeros(20), 0, {}), 0.0)
    masks = mask_by_influence(named, scores, 0.25)
    assert sum(int(m.sum()) for m in masks.values()) == 5
    assert named[0][1].detach().sum() == 10 and int((named[1][1].detach() == 0).sum()) == 5
    assert masks["m.lora_B.default.weight"].view(-1).tolist() == [False] * 5 + [True] * 5


def test_gradient_matching_ranks_a_planted_near_duplicate_of_the_forget_set_first(lora_lm, bpe_tokenizer):
    model, forget, retain, pad = lora_lm
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    target = loss_gradient(model, params, [collate(forget, pad)])
    duplicate = tokenize_qa(bpe_tokenizer, [QARecord("Who is person 1?", "Person 1 is a poet from town 1!", "d")],
                            48).examples
    pool = retain[:8] + duplicate
    cosines = gradient_matched(model, params, [collate([e], pad) for e in pool], target)
    assert max(range(len(pool)), key=lambda i: cosines[i]) == len(pool) - 1


def forget_loss(run, model_dir, adapter=None) -> float:
    from forgetkit.influence import example_losses

    model, tokenizer = load_model(model_dir, adapter)
    records = read_records(run / "benchmark" / "forget10.jsonl")
    with torch.no_grad():
        return float(example_losses(model, collate(tokenize_qa(tokenizer, records, 64).examples,
                                                   tokenizer.pad_token_id)).mean())


@pytest.mark.parametrize("target_mode", ["full", "lora"])
def test_the_pipeline_runs_end_to_end_on_micro_and_lowers_forget_probability(target_mode, unlearn_run, lora_run,
                                                                             tmp_path):
    run = unlearn_run if target_mode == "full" else lora_run
    out = tmp_path / target_mode
    assert main(["unlearn", "--run", str(run), "--method", "influence_peft", "--out", str(out), "--quiet",
                 "train.epochs=3", "train.batch_size=2", "train.lr=1e-2", "params.top_k=2", "params.lissa_depth=5",
                 "params.power_iterations=3", "params.refine_steps=3", "params.mask_fraction=0.5",
                 "params.synth_pool=8"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    phases = summary["phases"]
    assert len(phases["critical_modules"]) == 2 and phases["refine_steps"] == 3
    assert phases["pruned"] == round(0.5 * phases["adapter_entries"])
    assert phases["synth_examples"] == 6 and summary["wall_time_s"] >= phases["before_training_s"]
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    if target_mode == "full":  # the new adapter sits on the critical modules only
        assert sorted(adapter["target_modules"]) == sorted(phases["critical_modules"])
    if target_mode == "full":  # the unlearning adapter sits on the target model
        before, after = forget_loss(run, run / "target"), forget_loss(run, run / "target", out / "adapter")
    else:  # the target adapter itself was trained
        before, after = forget_loss(run, run / "base", run / "target"), forget_loss(run, run / "base", out / "adapter")
    assert after > before + 0.01
