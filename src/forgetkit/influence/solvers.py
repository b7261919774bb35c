"""Inverse curvature-vector products x ≈ (H + λI)⁻¹·v: ``exact``, ``cg``, ``lissa`` and ``datainf``.

- ``exact``: the dense matrix from one product per basis vector, solved in float64; the ground
  truth for tiny parameter counts (refused above ``EXACT_MAX_DIM``).
- ``cg``: conjugate gradient; needs a positive-definite operator (Gauss–Newton, or enough damping)
  and stops with an error when it meets a direction of non-positive curvature.
- ``lissa``: the stochastic Neumann series of the founding proposal, h ← v + h − A·h/s, x = h/s,
  one batch per step; s = 1.1·λ_max from power iteration unless given (doubled and restarted if
  the iterate blows up); stops with an error when it still blows up (s too small or A not
  positive definite).
- ``datainf``: DataInf's closed form per layer from per-example gradients (an approximation of the
  damped empirical Fisher's inverse; no curvature products).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from forgetkit.influence.curvature import Curvature, InfluenceError, loss_gradient, module_of

SOLVERS = ("exact", "cg", "lissa", "datainf")
EXACT_MAX_DIM = 4096


class UnconvergedSolve(InfluenceError):
    """A solve that ended above the residual its caller accepts: its answer is not the inverse-curvature product,
    so nothing built on it is applied."""


@dataclass
class SolveResult:
    x: torch.Tensor
    products: int  # curvature-vector products spent
    info: dict


def exact_matrix(curvature: Curvature) -> torch.Tensor:
    """The dense (H + λI), one product per basis vector, symmetrised."""
    n = curvature.dim
    if n > EXACT_MAX_DIM:
        raise InfluenceError(f"exact solver: {n:,} parameters need a {n:,}² matrix ({n * n * 8 / 2**30:.1f} GiB); "
                             f"it is for at most {EXACT_MAX_DIM:,} (use cg or lissa)")
    eye = torch.eye(n, dtype=curvature.params[0].dtype, device=curvature.params[0].device)
    matrix = torch.stack([curvature(eye[i]) for i in range(n)], dim=1).double()
    return (matrix + matrix.T) / 2


def solve_exact(curvature: Curvature, vector: torch.Tensor) -> SolveResult:
    before = curvature.products
    x = torch.linalg.solve(exact_matrix(curvature), vector.double()).to(vector.dtype)
    return SolveResult(x, curvature.products - before, {})


def solve_cg(curvature: Curvature, vector: torch.Tensor, tol: float = 1e-6, max_iter: int = 200) -> SolveResult:
    """Conjugate gradient to a relative residual ‖b − Ax‖/‖b‖ ≤ ``tol``. CG lowers the error's A-norm at every
    step, not the residual's 2-norm, so a truncated run returns the iterate of the smallest residual it met (x = 0,
    residual 1, at worst), never a later and worse one."""
    before = curvature.products
    x = torch.zeros_like(vector)
    r = vector.clone()
    p = r.clone()
    rr = float(r @ r)
    b_norm = math.sqrt(float(vector @ vector)) or 1.0
    best, best_rr, best_iteration = x.clone(), rr, 0
    iterations = 0
    while math.sqrt(rr) / b_norm > tol and iterations < max_iter:
        ap = curvature(p)
        curv = float(p @ ap)
        if curv <= 0:
            raise InfluenceError(f"cg: non-positive curvature pᵀAp = {curv:.3g} at iteration {iterations}: the "
                                 "operator is not positive definite (use gauss_newton or raise the damping)")
        alpha = rr / curv
        x += alpha * p
        r -= alpha * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
        iterations += 1
        if rr < best_rr:
            best, best_rr, best_iteration = x.clone(), rr, iterations
    return SolveResult(best, curvature.products - before,
                       {"iterations": iterations, "best_iteration": best_iteration,
                        "relative_residual": math.sqrt(best_rr) / b_norm})


def relative_residual(curvature: Curvature, x: torch.Tensor, vector: torch.Tensor) -> float:
    """‖b − (H + λI)·x‖ / ‖b‖ recomputed with one curvature product: the check of any solver's answer (CG's own
    recursive residual drifts from the true one in float32)."""
    b_norm = float(vector.norm()) or 1.0
    return float((vector - curvature(x)).norm()) / b_norm


def mean_eigenvalue(curvature: Curvature, probes: int = 4, seed: int = 0) -> float:
    """trace(H)/dim of the undamped operator, by Hutchinson's estimator with Rademacher probes."""
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(probes):
        z = (torch.randint(0, 2, (curvature.dim,), generator=generator) * 2 - 1).to(curvature.params[0])
        total += float(z @ curvature(z)) - curvature.damping * curvature.dim
    return total / (probes * curvature.dim)


def largest_eigenvalue(curvature: Curvature, iterations: int = 20, seed: int = 0) -> float:
    """λ_max of (H + λI) by power iteration on the full-batch operator."""
    generator = torch.Generator().manual_seed(seed)
    v = torch.randn(curvature.dim, generator=generator).to(curvature.params[0])
    v /= v.norm()
    value = 0.0
    for _ in range(iterations):
        w = curvature(v)
        value = float(v @ w)
        norm = w.norm()
        if not torch.isfinite(norm) or norm == 0:
            break
        v = w / norm
    return value


def solve_lissa(curvature: Curvature, vector: torch.Tensor, scale: float | None = None, depth: int | None = None,
                repeats: int = 1, tol: float = 1e-3, max_depth: int = 2000, blowup: float = 1e6,
                power_iterations: int = 20, raises: int = 3) -> SolveResult:
    """Stochastic Neumann series, averaged over ``repeats`` runs of ``depth`` steps.

    With the scale estimated (``scale=None``), a blow-up doubles it and starts again, up to
    ``raises`` times: one batch's curvature can exceed the full-batch λ_max that set it. A given
    scale that blows up is an error at once."""
    before = curvature.products
    lam_max = largest_eigenvalue(curvature, power_iterations) if scale is None else None
    attempts = raises + 1 if scale is None else 1
    if scale is None:
        scale = 1.1 * lam_max
    if scale <= 0:
        raise InfluenceError(f"lissa: scale must be positive (λ_max estimate {lam_max})")
    if depth is None:
        # The slowest component contracts by (1 − λ_min/s) per step; λ_min ≥ the damping.
        floor = curvature.damping if curvature.damping > 0 else scale * 1e-3
        depth = min(max_depth, math.ceil(scale / floor * math.log(1 / tol)))
    for attempt in range(attempts):
        try:
            x = _neumann(curvature, vector, scale, depth, repeats, blowup)
            break
        except InfluenceError:
            if attempt == attempts - 1:
                raise
            scale *= 2
    return SolveResult(x, curvature.products - before,
                       {"scale": scale, "depth": depth, "repeats": repeats, "lambda_max": lam_max,
                        "scale_raised": attempt})


def _neumann(curvature: Curvature, vector: torch.Tensor, scale: float, depth: int, repeats: int,
             blowup: float) -> torch.Tensor:
    v_norm = float(vector.norm()) or 1.0
    estimates = []
    for repeat in range(repeats):
        h = vector.clone()
        for step in range(depth):
            h = vector + h - curvature(h, batch_index=repeat * depth + step) / scale
            h_norm = float(h.norm())
            if not math.isfinite(h_norm) or h_norm > blowup * v_norm * scale:
                raise InfluenceError(f"lissa: the series blew up at step {step} (‖h‖ = {h_norm:.3g}); raise the "
                                     f"scale (now {scale:.3g}) or the damping")
        estimates.append(h / scale)
    return torch.stack(estimates).mean(0)


def layer_blocks(curvature: Curvature) -> list[torch.Tensor]:
    """Flat-vector indices of each layer: a LoRA layer's A and B together, otherwise each module's tensors."""
    names = {id(p): n for n, p in curvature.model.named_parameters()}
    blocks: dict[str, list[torch.Tensor]] = {}
    start = 0
    for p in curvature.params:
        name = names.get(id(p), f"parameter {start}")
        blocks.setdefault(module_of(name), []).append(torch.arange(start, start + p.numel()))
        start += p.numel()
    return [torch.cat(parts) for parts in blocks.values()]


def per_example_gradients(curvature: Curvature) -> torch.Tensor:
    """One row per training example: ∇ of its own loss (rows of every batch, padding kept)."""
    rows = []
    for batch in curvature.batches:
        for i in range(batch["input_ids"].shape[0]):
            one = {k: v[i:i + 1] for k, v in batch.items()}
            rows.append(loss_gradient(curvature.model, curvature.params, [one], curvature.loss_fn))
    return torch.stack(rows)


def solve_datainf(curvature: Curvature, vector: torch.Tensor, damping_ratio: float = 0.1) -> SolveResult:
    """DataInf (Kwon et al. 2024): per layer l, with per-example gradients g_i and
    λ_l = damping_ratio · mean_i mean(g_il²), x_l = (1/(n·λ_l)) Σ_i [v_l − (v_l·g_il)/(λ_l + ‖g_il‖²) · g_il].

    It inverts the layer-wise empirical Fisher (1/n)Σ g_i g_iᵀ + λ_l·I by swapping the mean and the
    inverse: exact when the g_i agree, an approximation otherwise (no curvature products)."""
    grads = per_example_gradients(curvature).to(vector.dtype)
    n = grads.shape[0]
    x = torch.zeros_like(vector)
    lambdas = []
    for block in layer_blocks(curvature):
        g, v = grads[:, block], vector[block]
        lam = damping_ratio * float(g.square().mean())
        if lam <= 0:
            raise InfluenceError("datainf: the gradients of a layer are all zero (nothing to invert)")
        coefficients = (g @ v) / (lam + g.square().sum(1))
        x[block] = (n * v - coefficients @ g) / (n * lam)
        lambdas.append(lam)
    return SolveResult(x, 0, {"examples": n, "layers": len(lambdas), "lambdas": lambdas})


def inverse_hvp(curvature: Curvature, vector: torch.Tensor, solver: str = "cg", **options) -> SolveResult:
    """x ≈ (H + λI)⁻¹·``vector`` with ``solver`` (exact, cg, lissa, datainf) and its ``options``."""
    if solver not in SOLVERS:
        raise InfluenceError(f"unknown inverse-HVP solver '{solver}' (known: {', '.join(SOLVERS)})")
    if vector.numel() != curvature.dim:
        raise InfluenceError(f"vector has {vector.numel()} entries, the parameters {curvature.dim}")
    solve = {"exact": solve_exact, "cg": solve_cg, "lissa": solve_lissa, "datainf": solve_datainf}[solver]
    return solve(curvature, vector, **options)
