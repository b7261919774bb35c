"""Influence of a forget set on parameters and modules: I = (H_r + λI)⁻¹·∇L(D_f), and top-k selection.

H_r is the curvature of the loss on the retain set (Gauss–Newton by default) and ∇L(D_f) the
gradient of the mean loss on the forget set, both over the chosen parameters: the trainable
ones (a LoRA adapter's) or every weight of named base modules. ``I`` estimates how each
parameter would move if the forget set were dropped from training (Koh & Liang's
parameter influence, up to the 1/n factor). Module scores aggregate ``I`` over a module's
entries, and the top-k modules (or those filling a parameter budget) are the Phase-1 output
that influence-guided PEFT unlearning consumes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from forgetkit.influence.curvature import (
    Batch,
    Curvature,
    InfluenceError,
    LossFn,
    lm_loss,
    loss_gradient,
    module_of,
    unflatten,
)
from forgetkit.influence.solvers import SolveResult, inverse_hvp, mean_eigenvalue

REDUCTIONS = ("norm", "mean_abs")


def select_parameters(model, modules: Sequence[str] | None = None) -> list[tuple[str, torch.nn.Parameter]]:
    """The trainable parameters (``modules=None``), or every weight of the modules whose names match one
    of ``modules`` (exact names or fnmatch patterns such as ``*.mlp.down_proj``); these are made to
    require gradients."""
    named = list(model.named_parameters())
    if modules is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise InfluenceError("the model has no trainable parameters to score (attach an adapter or name modules)")
        return chosen
    chosen = [(n, p) for n, p in named if any(fnmatch.fnmatchcase(module_of(n), m) for m in modules)]
    if not chosen:
        raise InfluenceError(f"no parameters in modules matching {', '.join(modules)}")
    for _, p in chosen:
        p.requires_grad_(True)
    return chosen


@dataclass
class InfluenceScores:
    """I over named parameters, the forget gradient it came from, and how it was solved."""

    names: list[str]
    influence: list[torch.Tensor]  # I, shaped like each parameter
    forget_gradient: list[torch.Tensor]
    solve: SolveResult
    damping: float
    info: dict = field(default_factory=dict)

    def module_scores(self, reduce: str = "norm") -> dict[str, float]:
        """One score per module: the L2 norm of its entries of I (``norm``: how far the module would move),
        or their mean absolute value (``mean_abs``: size-neutral)."""
        if reduce not in REDUCTIONS:
            raise InfluenceError(f"module score reduction must be one of {', '.join(REDUCTIONS)}, got '{reduce}'")
        parts: dict[str, list[torch.Tensor]] = {}
        for name, value in zip(self.names, self.influence, strict=True):
            parts.setdefault(module_of(name), []).append(value.reshape(-1))
        scores = {}
        for module, values in parts.items():
            flat = torch.cat(values).double()
            scores[module] = float(flat.norm()) if reduce == "norm" else float(flat.abs().mean())
        return scores

    def module_sizes(self) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for name, value in zip(self.names, self.influence, strict=True):
            sizes[module_of(name)] = sizes.get(module_of(name), 0) + value.numel()
        return sizes

    def top_modules(self, k: int | None = None, parameter_budget: int | None = None,
                    reduce: str = "norm") -> list[str]:
        """The highest-scoring modules, best first: the top ``k``, or as many as fit in
        ``parameter_budget`` scored parameters (at least one)."""
        if (k is None) == (parameter_budget is None):
            raise InfluenceError("give exactly one of k and parameter_budget")
        ranked = sorted(self.module_scores(reduce).items(), key=lambda item: -item[1])
        if k is not None:
            if k < 1:
                raise InfluenceError(f"k must be at least 1, got {k}")
            return [m for m, _ in ranked[:k]]
        sizes, chosen, used = self.module_sizes(), [], 0
        for module, _ in ranked:
            if chosen and used + sizes[module] > parameter_budget:
                continue
            chosen.append(module)
            used += sizes[module]
        return chosen

    def top_parameter_mask(self, fraction: float) -> dict[str, torch.Tensor]:
        """Boolean masks marking the ``fraction`` of entries (over all parameters) with the largest |I|."""
        if not 0 <= fraction <= 1:
            raise InfluenceError(f"fraction must be in [0, 1], got {fraction}")
        flat = torch.cat([v.reshape(-1).abs() for v in self.influence])
        keep = round(fraction * flat.numel())
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        if keep:
            mask[torch.topk(flat, keep).indices] = True
        return {n: part for n, part in zip(self.names, unflatten(mask, self.influence), strict=True)}


def influence_scores(model, named_params: Sequence[tuple[str, torch.Tensor]], forget: Sequence[Batch],
                     retain: Sequence[Batch], solver: str = "cg", kind: str = "gauss_newton",
                     damping: float | None = None, damping_ratio: float = 0.1, loss_fn: LossFn = lm_loss,
                     **solver_options) -> InfluenceScores:
    """I = (H_r + λI)⁻¹·∇L(D_f) over ``named_params``; λ = ``damping``, or ``damping_ratio`` × the mean
    eigenvalue of H_r (Hutchinson) when ``damping`` is None. ``loss_fn`` other than the causal LM's
    needs ``kind="hessian"``."""
    names = [n for n, _ in named_params]
    params = [p for _, p in named_params]
    curvature = Curvature(model, params, retain, kind=kind, loss_fn=loss_fn)
    info: dict = {}
    if damping is None:
        info["mean_eigenvalue"] = mean_eigenvalue(curvature)
        damping = damping_ratio * info["mean_eigenvalue"]
        if damping <= 0:
            raise InfluenceError("the retain curvature is zero over these parameters: give a positive damping")
    curvature.damping = damping
    gradient = loss_gradient(model, params, forget, loss_fn).detach()
    result = inverse_hvp(curvature, gradient, solver, **solver_options)
    info["products"] = curvature.products
    return InfluenceScores(names, [t.detach().clone() for t in unflatten(result.x, params)],
                           [t.clone() for t in unflatten(gradient, params)], result, damping, info)
