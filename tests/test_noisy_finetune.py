"""Certified noisy fine-tuning: the Rényi accounting against hand-computed cases, the noisy step against its
formula, and the method end to end (certificate in the audit record and the ledger)."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from forgetkit.certified.noisy_finetune import NoisySchedule, certificate, epsilon, noisy_sgd, sigma_for
from forgetkit.errors import ConfigError


def test_accounting_without_weight_decay_by_hand():
    # K = 2·C0 + 2·γ·C1·T = 2 + 2 = 4, Σw² = T = 10, ρ = 16 / (2·1·10) = 0.8
    schedule = NoisySchedule(clip_start=1, clip_grad=1, lr=0.1, weight_decay=0, steps=10, sigma=1)
    assert schedule.rho() == pytest.approx(0.8)
    assert epsilon(schedule, 1e-5) == pytest.approx(0.8 + 2 * math.sqrt(0.8 * math.log(1e5)))
    assert epsilon(schedule, 1e-5) == pytest.approx(6.869708, abs=1e-6)


def test_accounting_with_weight_decay_by_hand():
    # c = 1 − 0.5·1 = 0.5, T = 2: w = (0.5, 1), Σw² = 1.25; K = 2·1·0.25 + 2·0.5·1·1.5 = 2; ρ = 4 / 2.5 = 1.6
    schedule = NoisySchedule(clip_start=1, clip_grad=1, lr=0.5, weight_decay=1, steps=2, sigma=1)
    assert schedule.shift_and_weights() == pytest.approx((2.0, 1.25))
    assert schedule.rho() == pytest.approx(1.6)
    doubled = NoisySchedule(clip_start=1, clip_grad=1, lr=0.5, weight_decay=1, steps=2, sigma=2)
    assert doubled.rho() == pytest.approx(0.4)  # ρ ∝ 1/σ²


def test_sigma_for_inverts_epsilon_and_more_steps_cost_less():
    base = NoisySchedule(clip_start=10, clip_grad=1, lr=0.05, weight_decay=1, steps=200)
    for target in (0.5, 1, 10, 100):
        sigma = sigma_for(target, 1e-5, base)
        schedule = NoisySchedule(10, 1, 0.05, 1, 200, sigma)
        assert epsilon(schedule, 1e-5) == pytest.approx(target, rel=1e-9)
    short = NoisySchedule(10, 1, 0.05, 1, 20)
    assert sigma_for(1, 1e-5, short) > sigma_for(1, 1e-5, base)  # the initial gap has decayed less
    assert math.isinf(epsilon(base, 1e-5))  # no noise, no guarantee
    with pytest.raises(ConfigError):
        NoisySchedule(10, 1, lr=0.5, weight_decay=2, steps=10)  # γλ ≥ 1: not a contraction
    with pytest.raises(ConfigError):
        sigma_for(1, 0, base)
    cert = certificate(NoisySchedule(10, 1, 0.05, 1, 200, sigma_for(1, 1e-5, base)), 1e-5)
    assert cert["epsilon"] == pytest.approx(1) and cert["delta"] == 1e-5 and cert["sigma"] > 0


@pytest.mark.parametrize("c0,shift,c,steps", list(itertools.product([0.01, 1, 100], [1e-3, 1], [1, 0.99, 0.5, 0.1],
                                                                      [1, 10, 300])))
def test_the_optimal_shift_split_is_feasible(c0, shift, c, steps):
    """The bound spends a_t ∝ w_t of the schedule's total shift K at step t (``shift_and_weights``: K and Σ w_t²);
    it is valid only if the remaining shift never goes negative: z_0 = 2·C0, z_{t+1} = c·z_t + 2s − a_t ≥ 0, with
    s = γ·C1 the most one step moves the weights, and z_T = 0."""
    lr = 0.1
    schedule = NoisySchedule(clip_start=c0, clip_grad=shift / lr, lr=lr, weight_decay=(1 - c) / lr, steps=steps)
    assert schedule.contraction == pytest.approx(c)
    total, weight_sq = schedule.shift_and_weights()
    weights = [c ** (steps - 1 - t) for t in range(steps)]
    assert weight_sq == pytest.approx(sum(w * w for w in weights))
    spend = [total * w / weight_sq for w in weights]
    z = 2 * c0
    for a in spend:
        z = c * z + 2 * shift - a
        assert z >= -1e-9 * max(1.0, c0, shift * steps)
    assert z == pytest.approx(0, abs=1e-9 * max(1.0, c0, shift * steps))


def test_noisy_sgd_clips_the_start_and_follows_the_update_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # norm 5
    target = torch.tensor([1.0, -1.0])

    def batch_loss(_):
        return 10 * ((w - target) ** 2).sum()  # gradient 20·(w − target): always clipped

    schedule = NoisySchedule(clip_start=1, clip_grad=0.5, lr=0.1, weight_decay=2, steps=1)
    log = noisy_sgd([w], batch_loss, iter([None]), schedule)
    x0 = torch.tensor([0.6, 0.8])  # clipped to norm 1
    g = 20 * (x0 - target)
    expected = (1 - 0.2) * x0 - 0.1 * 0.5 * g / g.norm()
    assert log["start_norm"] == pytest.approx(5) and log["start_scale"] == pytest.approx(0.2)
    assert torch.allclose(w.detach(), expected, atol=1e-6)

    noisy = torch.nn.Parameter(torch.zeros(20000))
    schedule = NoisySchedule(clip_start=1, clip_grad=1, lr=0.1, weight_decay=0, steps=1, sigma=0.3)
    noisy_sgd([noisy], lambda _: (noisy * 0).sum(), iter([None]), schedule, seed=1)
    assert noisy.detach().std().item() == pytest.approx(0.3, rel=0.03)  # zero gradient: the noise alone


def test_noisy_finetune_certifies_the_lora_target_in_the_audit_and_ledger(lora_run, unlearn_run, tmp_path, capsys):
    from forgetkit.audit.ledger import entries
    from forgetkit.cli import main

    out = tmp_path / "noisy"
    ledger = tmp_path / "ledger.sqlite"
    args = ["unlearn", "--run", str(lora_run), "--split", "forget10", "--out", str(out), "--quiet",
            "--ledger", str(ledger), "--method", "noisy_finetune", "params.steps=5", "params.epsilon=50.0",
            "params.clip_start=0.1", "params.recover_epochs=0.2", "train.batch_size=8"]
    assert main(args) == 0
    audit = json.loads((out / "audit.json").read_text())
    assert audit["certificate"]["epsilon"] == pytest.approx(50.0) and audit["certificate"]["steps"] == 5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phases"]["noisy_phase"]["start_scale"] <= 1
    (row,) = entries(ledger)
    assert row["guarantee"] == "certified" and row["epsilon"] == pytest.approx(50.0) and row["delta"] == 1e-5
    # A target whose knowledge is in the base weights: nothing to certify; a one-line error, no output
    capsys.readouterr()
    assert main(["unlearn", "--run", str(unlearn_run), "--out", str(tmp_path / "full"), "--quiet",
                 "--ledger", str(ledger), "--method", "noisy_finetune", "params.steps=2"]) != 0
    err = capsys.readouterr().err.strip()
    assert "noisy_finetune certifies the adapter" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "full" / "adapter").exists()
