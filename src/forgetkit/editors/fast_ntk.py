"""Fast-NTK (arXiv 2312.14923): NTK-linearised closed-form removal restricted to the LoRA weights.

Linearise the network in the adapter weights around their initialisation w₀ (LoRA's B = 0,
i.e. the base model): f(w) ≈ f₀ + J·(w − w₀). With Θ = JJᵀ over forget (f) and kept (r) outputs
and residuals r = Y − f₀, the minimum-norm fit of the linear model on D_r is reached from the
fit on D by

    w_r = w_D − P·J_fᵀ·M·V,  P = I − J_rᵀΘ_rr⁻¹J_r,  M = (Θ_ff − Θ_frΘ_rr⁻¹Θ_rf)⁻¹,  V = r_f − Θ_frΘ_rr⁻¹r_r,

exact for a linear model. The outputs are, per labelled token, the logit of the label token
(``outputs=label``) or every logit (``outputs=vocab``); the targets Y are the trained model's own
outputs (the adapter was trained with cross-entropy, so the linear model is fitted to the
functional change the adapter made). J holds N outputs × P parameters and Θ is N × N: the method
refuses, stating the memory, when that exceeds ``max_memory_gb`` rather than run out of memory.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from forgetkit.editors.base import EditData, Editor, lora_parameters, register
from forgetkit.influence.curvature import InfluenceError, flatten, unflatten

OUTPUTS = ("label", "vocab")


def fast_ntk_update(w_d: torch.Tensor, j_f: torch.Tensor, j_r: torch.Tensor, r_f: torch.Tensor, r_r: torch.Tensor,
                    ridge: float = 0.0) -> torch.Tensor:
    """w_r from w_D by the closed form above (float64; ``ridge`` adds ridge·mean(diag Θ)·I to Θ_rr and M⁻¹)."""
    j_f, j_r, r_f, r_r = (t.double() for t in (j_f, j_r, r_f, r_r))
    theta_rr = j_r @ j_r.T
    theta_fr = j_f @ j_r.T
    theta_ff = j_f @ j_f.T
    shift = ridge * float(torch.cat([theta_rr.diagonal(), theta_ff.diagonal()]).mean())
    theta_rr = theta_rr + shift * torch.eye(len(theta_rr), dtype=torch.float64)
    rr_inv_rf = torch.linalg.solve(theta_rr, theta_fr.T)  # Θ_rr⁻¹Θ_rf
    schur = theta_ff - theta_fr @ rr_inv_rf + shift * torch.eye(len(theta_ff), dtype=torch.float64)
    v = r_f - theta_fr @ torch.linalg.solve(theta_rr, r_r)
    u = j_f.T @ torch.linalg.solve(schur, v)  # J_fᵀ·M·V
    pu = u - j_r.T @ torch.linalg.solve(theta_rr, j_r @ u)  # P·u
    return (w_d.double() - pu).to(w_d.dtype)


def memory_needed(outputs: int, parameters: int) -> int:
    """Bytes for J (float32) and the N×N kernel blocks with their solves (float64, about three copies)."""
    return 4 * outputs * parameters + 3 * 8 * outputs * outputs


@register
@dataclass
class FastNTK(Editor):
    outputs: str = "label"
    ridge: float = 1e-6
    max_memory_gb: float = 4.0
    kept_examples: int | None = None  # a seeded sample of the kept set (None: all of it)
    seed: int = 0  # the sample's seed; unless given, the request's train.seed (a bench cell's seed)

    name: ClassVar[str] = "fast_ntk"
    summary: ClassVar[str] = "Fast-NTK: NTK-linearised closed-form removal on the LoRA weights (small sizes only)"
    requests: ClassVar[tuple[str, ...]] = ("removal",)

    def __post_init__(self) -> None:
        if self.outputs not in OUTPUTS:
            raise InfluenceError(f"fast_ntk: outputs must be one of {', '.join(OUTPUTS)}, got '{self.outputs}'")

    def _count(self, examples: list[dict], vocab: int) -> int:
        tokens = sum(sum(1 for t in e["labels"][1:] if t != -100) for e in examples)
        return tokens * (vocab if self.outputs == "vocab" else 1)

    def apply(self, model, data: EditData, quiet: bool = False) -> dict:
        named = lora_parameters(model)
        if not named:
            raise InfluenceError("fast_ntk works on a LoRA adapter: the model has none (give --adapter)")
        params = [p for _, p in named]
        kept = data.sample_new_training_set(self.kept_examples, self.seed)
        vocab = model.get_output_embeddings().weight.shape[0]
        n_out = self._count(data.original, vocab) + self._count(kept, vocab)
        dim = sum(p.numel() for p in params)
        need = memory_needed(n_out, dim)
        if need > self.max_memory_gb * 2**30:
            raise InfluenceError(
                f"fast_ntk: {n_out:,} outputs × {dim:,} adapter parameters need about {need / 2**30:.1f} GiB "
                f"(J and the {n_out:,}² kernel), above max_memory_gb={self.max_memory_gb:g}; it is for small "
                "adapters and sets (use llmeraser, or fewer kept examples with kept_examples=N)")
        start = time.perf_counter()
        model.eval()
        w_d = flatten([p.detach() for p in params])
        j_f, y_f = self._jacobian(model, named, data.original)
        j_r, y_r = self._jacobian(model, named, kept)
        with model.disable_adapter(), torch.no_grad():
            f0_f = self._outputs(model, data.original)
            f0_r = self._outputs(model, kept)
        w_r = fast_ntk_update(w_d, j_f, j_r, y_f - f0_f, y_r - f0_r, self.ridge)
        if not torch.isfinite(w_r).all():
            raise InfluenceError("fast_ntk: the update is not finite (raise ridge); the adapter is unchanged")
        with torch.no_grad():
            for p, new in zip(params, unflatten(w_r, params), strict=True):
                p.copy_(new)
        return {"solve_time_s": round(time.perf_counter() - start, 3), "outputs": n_out, "parameters": dim,
                "memory_estimate_gb": round(need / 2**30, 4), "update_norm": float((w_r - w_d).norm()),
                "kept_examples": len(kept)}

    def _select(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The chosen outputs of one example: label-token logits, or every logit, at labelled positions."""
        logits, labels = logits[:-1], labels[1:]
        keep = labels != -100
        if self.outputs == "label":
            return logits[keep].gather(1, labels[keep].unsqueeze(1)).squeeze(1)
        return logits[keep].reshape(-1)

    def _outputs(self, model, examples: list[dict]) -> torch.Tensor:
        device = next(model.parameters()).device
        rows = []
        for e in examples:
            ids = torch.tensor([e["input_ids"]], device=device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
            rows.append(self._select(logits, torch.tensor(e["labels"], device=device)))
        return torch.cat(rows)

    def _jacobian(self, model, named, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """J (outputs × flat adapter parameters) and the outputs at the trained weights."""
        from torch.func import functional_call, jacrev

        names = [n for n, _ in named]
        params = [p.detach() for _, p in named]
        device = params[0].device
        rows, values = [], []
        for e in examples:
            ids = torch.tensor([e["input_ids"]], device=device)
            labels = torch.tensor(e["labels"], device=device)

            def out(flat: torch.Tensor, ids=ids, labels=labels) -> torch.Tensor:
                weights = dict(zip(names, unflatten(flat, params), strict=True))
                logits = functional_call(model, weights, args=(), kwargs={
                    "input_ids": ids, "attention_mask": torch.ones_like(ids)}).logits[0]
                return self._select(logits, labels)

            flat = flatten(params)
            with sdpa_kernel(SDPBackend.MATH):
                rows.append(jacrev(out)(flat).detach())
                with torch.no_grad():
                    values.append(out(flat))
        return torch.cat(rows), torch.cat(values)
