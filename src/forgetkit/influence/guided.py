"""The phases of influence-guided PEFT unlearning, each usable on its own.

1. :func:`critical_modules`: influence I = (H_r + λI)⁻¹∇L(D_f) over candidate modules' weights
   (LiSSA by default), aggregated per module; the top-k modules (or a parameter budget).
2. :class:`ForgettingRegulariser`: λ·‖θ ⊙ ∇L(D_f)‖₁ over the adapter weights, with ∇L(D_f)
   taken once, when the adapter is placed.
3. :func:`mask_by_influence` (zero the given fraction of adapter entries with the largest |I| and
   keep them at zero) and :func:`gradient_matched` (rank candidate examples by the cosine between
   their loss gradient and ∇L(D_f), the selection form of gradient matching).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetkit.influence.curvature import Batch, InfluenceError, loss_gradient, unflatten
from forgetkit.influence.scores import InfluenceScores, influence_scores, select_parameters


def critical_modules(model, modules: Sequence[str], forget: Sequence[Batch], retain: Sequence[Batch],
                     k: int | None = None, parameter_budget: int | None = None, reduce: str = "norm",
                     **score_options) -> tuple[list[str], InfluenceScores]:
    """The top modules among those matching ``modules`` (names or fnmatch patterns) by influence of the
    forget set over the retain curvature, and the scores. ``score_options`` go to ``influence_scores``."""
    named = select_parameters(model, modules)
    was = {id(p): p.requires_grad for _, p in model.named_parameters()}
    try:
        scores = influence_scores(model, named, forget, retain, **score_options)
    finally:
        for _, p in model.named_parameters():
            p.requires_grad_(was[id(p)])
    return scores.top_modules(k=k, parameter_budget=parameter_budget, reduce=reduce), scores


class ForgettingRegulariser:
    """R(θ) = λ·Σ|θ ⊙ g| over adapter weights θ, g = ∇L(D_f) at the adapter's starting point (the
    same parameter objects are read at each call, so a DDP wrapper around the model changes nothing)."""

    def __init__(self, model, params: Sequence[torch.Tensor], forget: Sequence[Batch], weight: float):
        if not params:
            raise InfluenceError("the forgetting regulariser needs adapter weights")
        flat = loss_gradient(model, params, forget).detach()
        self.params, self.weight = list(params), weight
        self.gradients = [g.abs() for g in unflatten(flat, self.params)]

    def __call__(self) -> torch.Tensor:
        return self.weight * sum((p * g).abs().sum() for p, g in zip(self.params, self.gradients, strict=True))


def mask_by_influence(named: Sequence[tuple[str, torch.Tensor]], scores: InfluenceScores,
                      fraction: float) -> dict[str, torch.Tensor]:
    """Zero the ``fraction`` of entries with the largest |I| (over all of ``named``); return the masks
    (True = pruned), for keeping them at zero while refining."""
    by_name = dict(zip(scores.names, scores.influence, strict=True))
    missing = [n for n, _ in named if n not in by_name]
    if missing:
        raise InfluenceError(f"no influence scores for {missing[0]}")
    subset = InfluenceScores([n for n, _ in named], [by_name[n] for n, _ in named], [], scores.solve, scores.damping)
    masks = subset.top_parameter_mask(fraction)
    apply_masks(named, masks)
    return masks


@torch.no_grad()
def apply_masks(named: Sequence[tuple[str, torch.Tensor]], masks: dict[str, torch.Tensor]) -> None:
    for n, p in named:
        p[masks[n].to(p.device)] = 0


def gradient_matched(model, params: Sequence[torch.Tensor], candidates: Sequence[Batch], target: torch.Tensor,
                     ) -> list[float]:
    """The cosine between each candidate's loss gradient (one single-example batch each) and ``target``."""
    target = target / target.norm().clamp(min=1e-30)
    out = []
    for batch in candidates:
        g = loss_gradient(model, params, [batch])
        out.append(float(g @ target / g.norm().clamp(min=1e-30)))
    return out
