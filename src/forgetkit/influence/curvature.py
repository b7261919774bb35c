"""Gradients and curvature-vector products over a chosen list of parameters.

Vectors are flat tensors over the parameters' concatenated entries (``flatten``/``unflatten``).
``Curvature`` applies v ↦ (H + λI)·v for the mean loss over a list of batches, with H the
Hessian (double back-propagation) or the Gauss–Newton matrix JᵀH_out J of the causal-LM
cross-entropy (positive semi-definite; computed in reverse mode only: J·v by differentiating
Jᵀu with respect to u).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from forgetkit.errors import ForgetkitError
from forgetkit.models.logits import answer_cross_entropy, example_cross_entropy, head_inputs

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch], torch.Tensor]
KINDS = ("hessian", "gauss_newton")


class InfluenceError(ForgetkitError):
    """An influence computation that cannot give a trustworthy answer (indefinite, diverged, too large)."""


def lm_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The causal LM's mean next-token cross-entropy over the labelled tokens (the head at those only)."""
    return answer_cross_entropy(model, batch)


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    parts, start = [], 0
    for p in params:
        parts.append(vector[start:start + p.numel()].view_as(p))
        start += p.numel()
    return parts


def module_of(name: str) -> str:
    """The module a parameter belongs to: a LoRA layer's A and B map to the layer they adapt."""
    return name.split(".lora_", 1)[0] if ".lora_" in name else name.rsplit(".", 1)[0]


def example_losses(model, batch: Batch) -> torch.Tensor:
    """Each example's mean next-token cross-entropy over its own labelled tokens (one value per row)."""
    return example_cross_entropy(model, batch)


def summed_example_gradient(model, params: Sequence[torch.Tensor], batches: Sequence[Batch],
                            example_loss_fn: Callable[[torch.nn.Module, Batch], torch.Tensor] = example_losses
                            ) -> torch.Tensor:
    """Σ_i ∇ℓ_i over every example of ``batches``, ℓ_i the example's own loss (by default its mean token
    cross-entropy): the sums of per-example gradients that influence formulas take."""
    total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    for batch in batches:
        grads = torch.autograd.grad(example_loss_fn(model, batch).sum(), params, allow_unused=True)
        total += flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])
    return total


def loss_gradient(model, params: Sequence[torch.Tensor], batches: Sequence[Batch], loss_fn: LossFn = lm_loss
                  ) -> torch.Tensor:
    """∇ of the mean (over ``batches``) of ``loss_fn``, as a flat vector (in the model's current mode:
    put it in eval mode for influence work)."""
    total = torch.zeros(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
    for batch in batches:
        grads = torch.autograd.grad(loss_fn(model, batch), params, allow_unused=True)
        total += flatten([torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)])
    return total / len(batches)


class Curvature:
    """v ↦ (H + damping·I)·v over ``params`` for the mean loss over ``batches``; counts its products.

    It puts ``model`` in eval mode: with dropout on, each product would see another function.
    """

    def __init__(self, model, params: Sequence[torch.Tensor], batches: Sequence[Batch], kind: str = "gauss_newton",
                 damping: float = 0.0, loss_fn: LossFn = lm_loss) -> None:
        if kind not in KINDS:
            raise InfluenceError(f"curvature kind must be one of {', '.join(KINDS)}, got '{kind}'")
        if kind == "gauss_newton" and loss_fn is not lm_loss:
            raise InfluenceError("the Gauss-Newton product is defined for the causal-LM cross-entropy only")
        if not batches:
            raise InfluenceError("no data to compute the curvature on")
        self.model, self.params, self.batches = model.eval(), list(params), list(batches)
        self.kind, self.damping, self.loss_fn = kind, damping, loss_fn
        self.dim = sum(p.numel() for p in self.params)
        names = {id(p): n for n, p in model.named_parameters()}
        if kind == "gauss_newton" and any(id(p) not in names for p in self.params):
            raise InfluenceError("the Gauss-Newton product differentiates the model's own parameters only")
        self._names = [names.get(id(p), "") for p in self.params]
        self.products = 0
        self.on_product: Callable[[], object] | None = None  # e.g. a progress bar's update

    def __call__(self, vector: torch.Tensor, batch_index: int | None = None) -> torch.Tensor:
        """(H + λI)·v on every batch (mean), or on ``batches[batch_index]`` alone (a stochastic estimate)."""
        batches = self.batches if batch_index is None else [self.batches[batch_index % len(self.batches)]]
        parts = unflatten(vector.to(self.params[0].dtype), self.params)
        out = torch.zeros_like(vector)
        # Second derivatives need attention's plain-math kernel (the fused ones have no double backward).
        with sdpa_kernel(SDPBackend.MATH):
            for batch in batches:
                product = self._hvp(batch, parts) if self.kind == "hessian" else self._gnvp(batch, parts)
                out += flatten(product).to(out.dtype)
        self.products += 1
        if self.on_product is not None:
            self.on_product()
        return out / len(batches) + self.damping * vector

    def _hvp(self, batch: Batch, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        grads = torch.autograd.grad(self.loss_fn(self.model, batch), self.params, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grads, parts, strict=True))
        return list(torch.autograd.grad(dot, self.params))

    def _gnvp(self, batch: Batch, parts: list[torch.Tensor]) -> list[torch.Tensor]:
        """Jᵀ·H_logits·J·v: J·v by forward-mode differentiation (no graph is kept for it), then one backward.
        The logits are those of the labelled positions only ([n, V])."""
        from torch.func import functional_call, jvp

        inputs, select, _ = head_inputs(self.model, batch)

        def labelled_logits(*weights: torch.Tensor) -> torch.Tensor:
            return select(functional_call(self.model, dict(zip(self._names, weights, strict=True)), (), inputs,
                                          strict=False).logits)

        with torch.no_grad():
            _, jv = jvp(labelled_logits, tuple(p.detach() for p in self.params), tuple(parts))
        logits = select(self.model(**inputs).logits)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits, jv = logits.float(), jv.float()
        p = torch.softmax(logits.detach(), dim=-1)
        # Hessian of the mean token cross-entropy w.r.t. the logits, applied to Jv: (diag p − ppᵀ)/N per token.
        h_jv = (p * jv - p * (p * jv).sum(-1, keepdim=True)) / logits.shape[0]
        return list(torch.autograd.grad(logits, self.params, grad_outputs=h_jv))
