"""Latent adversarial unlearning: any gradient method, unlearned against an attacker in the residual stream.

The survey ("Rethinking Machine Unlearning for LLMs") frames robust unlearning as a two-player game; latent
adversarial training (Casper et al., 2024; Sheshadri et al., 2024, "targeted LAT") plays it in the hidden
states: at each step the attacker finds the perturbation δ of one decoder layer's output that most restores
the forget answers (``steps`` of projected gradient descent on their cross-entropy, each position's δ at most
``epsilon`` × that position's clean hidden-state norm, none on padding), and the defender takes the method's
step with its forget term computed under δ (the reference model's forget pass too, when the method has one:
δ is part of the input it is asked about), its retain term without. Knowledge that survives only behind a
thin layer of suppression is what δ finds, so the method must remove it deeper.

Cost: ``steps`` extra forward and backward passes over the forget batch per step.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from forgetkit.methods import losses
from forgetkit.methods.base import Method, Reference, forward
from forgetkit.models.latent import AdversarySettings, ResidualPerturbation
from forgetkit.train import LossPart, UnlearnBatch


class LatentAdversary:
    """The attacker of one unlearning run: its hooks on the model and its settings."""

    def __init__(self, model, settings: AdversarySettings) -> None:
        self.settings = settings
        self.perturbation = ResidualPerturbation(model, settings.layer)

    def attack(self, model, part: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float, float]:
        """δ for the forget ``part``, and the forget cross-entropy before and under it (the last PGD step's)."""
        s = self.settings
        ids, labels = part["input_ids"], part["labels"]
        keep = part["attention_mask"].unsqueeze(-1).to(torch.float32)
        p = self.perturbation
        p.arm(ids, None)
        with torch.no_grad():
            clean = float(losses.mean_nll(forward(model, part).logits, labels))
        budget = (s.epsilon * p.norms).unsqueeze(-1)  # [B, T, 1]
        config = model.config
        size = getattr(config, "hidden_size", None) or config.n_embd
        delta = torch.zeros(*ids.shape, size, device=ids.device)
        for _ in range(s.steps):
            delta.requires_grad_(True)
            p.arm(ids, delta)
            nll = losses.mean_nll(forward(model, part).logits, labels)
            (grad,) = torch.autograd.grad(nll, delta)
            with torch.no_grad():  # a normalised descent step per position, projected back into the budget
                step = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                delta = delta.detach() - s.step_size * budget * step
                delta = delta * torch.clamp(budget / delta.norm(dim=-1, keepdim=True).clamp_min(1e-12), max=1.0)
                delta = delta * keep
        p.disarm()
        return delta.detach(), clean, float(nll.detach())

    def parts(self, method: Method, model, batch: UnlearnBatch, reference: Reference | None) -> Iterator[LossPart]:
        """The method's parts for ``batch``, its forget passes under the attacker's δ; the first part also logs
        the forget cross-entropy without δ and under it (how much the attacker restored)."""
        delta, clean, attacked = self.attack(model, batch.forget)
        self.perturbation.arm(batch.forget["input_ids"], delta)
        try:
            for i, (value, named) in enumerate(method.parts(model, batch, reference)):
                if i == 0:
                    named = {**named, "adversary_clean_ce": clean, "adversary_ce": attacked}
                yield value, named
        finally:
            self.perturbation.disarm()

    def remove(self) -> None:
        self.perturbation.remove()
