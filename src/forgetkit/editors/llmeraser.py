"""LLMEraser (arXiv 2412.00383): one influence-function update of the LoRA weights, no training.

For a request that removes examples z (instance removal) or replaces them by z' (query
modification: new question; response correction: new answer),

    Δθ = (1/m)·(H + λI)⁻¹·(Σ_z ∇ℓ(z) − Σ_z' ∇ℓ(z')),   θ ← θ + Δθ,

ℓ an example's mean token loss, over the adapter's LoRA weights θ. We take H (Gauss–Newton by
default) as the mean curvature over the *new* training set (kept + edited examples; a seeded
sample of it) and m its size: this is one Newton step on the edited training objective, exact
for a quadratic loss (a linear model with squared loss: removal then equals retraining). The
paper's H over the old set differs by O(k/m) for k edited examples. λ = ``damping``, or
``damping_ratio`` × the mean eigenvalue of H (Hutchinson) when not given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from forgetkit.editors.base import EditData, Editor, lora_parameters, register
from forgetkit.influence.curvature import (
    Batch,
    Curvature,
    InfluenceError,
    example_losses,
    summed_example_gradient,
    unflatten,
)
from forgetkit.influence.solvers import (
    SOLVERS,
    SolveResult,
    UnconvergedSolve,
    inverse_hvp,
    largest_eigenvalue,
    mean_eigenvalue,
    relative_residual,
)


def influence_update(model, params: Sequence[torch.Tensor], original: Sequence[Batch], edited: Sequence[Batch],
                     new_training: Sequence[Batch], new_size: int, solver: str = "cg", kind: str = "gauss_newton",
                     damping: float | None = None, damping_ratio: float = 0.01, damping_of: str = "mean",
                     example_loss_fn: Callable = example_losses, on_product: Callable | None = None,
                     **solver_options) -> tuple[torch.Tensor, SolveResult, float]:
    """Δθ (flat) for the request, the solve's result and the damping used; ``model`` is not changed. The
    result's ``relative_residual`` is recomputed from the answer (one more curvature product), whatever the
    solver."""
    g = summed_example_gradient(model, params, original, example_loss_fn)
    if edited:
        g = g - summed_example_gradient(model, params, edited, example_loss_fn)
    loss_fn = None if example_loss_fn is example_losses else (lambda m, b: example_loss_fn(m, b).mean())
    curvature = (Curvature(model, params, new_training, kind=kind) if loss_fn is None
                 else Curvature(model, params, new_training, kind=kind, loss_fn=loss_fn))
    curvature.on_product = on_product
    if damping is None:  # a share of the mean eigenvalue (trace/dim), or of the largest (bounds the condition number)
        scale = largest_eigenvalue(curvature) if damping_of == "largest" else mean_eigenvalue(curvature)
        damping = damping_ratio * scale
        if damping <= 0:
            raise InfluenceError("llmeraser: the curvature is zero over the adapter: give a positive damping")
    curvature.damping = damping
    result = inverse_hvp(curvature, g.detach(), solver, **solver_options)
    result.info["relative_residual"] = relative_residual(curvature, result.x, g.detach())
    result.products += 1
    return result.x / new_size, result, damping



@register
@dataclass
class LLMEraser(Editor):
    """Hyper-parameters: the solver and its tolerance, the curvature and its damping, and how many
    examples of the new training set the curvature averages over."""

    solver: str = "cg"
    curvature: str = "gauss_newton"
    damping: float | None = None
    damping_ratio: float = 3.0  # measured on small (docs/results.md): 1 destroys the model, 30 barely edits
    # what damping_ratio multiplies: "mean", the curvature's mean eigenvalue (trace/dim), or "largest", its largest
    # (power iteration, 20 products): then the damped system's condition number is at most (1 + ratio) / ratio,
    # whatever the spectrum's skew, and CG converges in a number of iterations that does not grow with the adapter
    damping_of: str = "mean"
    tol: float = 1e-2  # cg: relative residual
    max_iter: int = 100  # cg: iterations (it stops at tol; a truncated solve above max_residual is refused)
    # an update whose solve ends above this relative residual ‖g − (H + λI)x‖/‖g‖ (recomputed) is refused
    max_residual: float = 1e-2
    curvature_examples: int | None = 64
    batch_size: int = 32
    seed: int = 0  # the sample's seed; unless given, the request's train.seed (a bench cell's seed)

    name: ClassVar[str] = "llmeraser"
    summary: ClassVar[str] = ("LLMEraser: closed-form influence update of the LoRA weights "
                              "(removal, query modification, response correction)")

    def __post_init__(self) -> None:
        if self.damping_of not in ("mean", "largest"):
            raise InfluenceError(f"llmeraser: damping_of must be mean or largest, got '{self.damping_of}'")
        if self.solver not in ("exact", "cg", "lissa"):
            raise InfluenceError(f"llmeraser: solver must be exact, cg or lissa, got '{self.solver}' "
                                 f"({', '.join(SOLVERS)} exist; datainf needs per-example gradients of the set)")

    def apply(self, model, data: EditData, quiet: bool = False) -> dict:
        named = lora_parameters(model)
        if not named:
            raise InfluenceError("llmeraser edits a LoRA adapter: the model has none (give --adapter)")
        params = [p for _, p in named]
        new_training = data.sample_new_training_set(self.curvature_examples, self.seed)
        new_size = len(data.kept) + len(data.edited)
        options = {"tol": self.tol, "max_iter": self.max_iter} if self.solver == "cg" else {}
        start = time.perf_counter()
        with tqdm(desc="llmeraser (curvature products)", unit="product", disable=quiet, leave=False) as bar:
            delta, result, damping = influence_update(
                model, params, data.batches(data.original, self.batch_size), data.batches(data.edited, self.batch_size),
                data.batches(new_training, self.batch_size), new_size, self.solver, self.curvature, self.damping,
                self.damping_ratio, self.damping_of, on_product=bar.update, **options)
        if not torch.isfinite(delta).all():
            raise InfluenceError("llmeraser: the update is not finite (raise the damping); the adapter is unchanged")
        residual = result.info["relative_residual"]
        if not residual <= self.max_residual:
            raise UnconvergedSolve(
                f"llmeraser: the {self.solver} solve ended at relative residual {residual:.3g} (above "
                f"params.max_residual={self.max_residual:g}) after {result.products} curvature products, so its update "
                "is not the influence step and the adapter is unchanged; raise params.max_iter or "
                "params.damping_ratio, or bound the condition number with params.damping_of=largest")
        with torch.no_grad():
            for p, d in zip(params, unflatten(delta, params), strict=True):
                p += d.to(p.dtype)
        weights = torch.cat([p.detach().reshape(-1) for p in params])
        return {"solve_time_s": round(time.perf_counter() - start, 3), "products": result.products,
                "damping": damping, "update_norm": float(delta.norm()), "adapter_norm": float(weights.norm()),
                "curvature_examples": len(new_training), "new_training_size": new_size,
                "solver": self.solver, **{k: v for k, v in result.info.items() if isinstance(v, int | float)}}
