"""RMU (Li et al., 2024, WMDP): steer one layer's activations on forget text to a fixed random direction.

The forget term pushes layer ℓ's hidden states on forget examples towards c·u (u a fixed random
unit vector); the retain term keeps layer ℓ's hidden states on retain examples where π_ref has
them. Distances are mean squared errors over non-padding positions and hidden units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, forward, register


def default_layer(num_layers: int) -> int:
    """Layer 7 of 32 in the paper, scaled by depth (at least 1: the output of the first block)."""
    return max(1, round(7 / 32 * num_layers))


@register
@dataclass
class RMU(Method):
    alpha: float = 1200.0
    steering: float = 6.5
    layer: int | None = None  # None: default_layer(depth); hidden_states[layer] is block `layer`'s output
    seed: int = 0

    name = "rmu"
    forget_term = "forget_steer_mse"
    summary = "L = γ·‖h_ℓ(x_f) - c·u‖² + α·‖h_ℓ(x_r) - h_ℓ^ref(x_r)‖² (layer ℓ, random unit u)"
    needs_reference = True

    def direction(self, hidden_size: int, device) -> torch.Tensor:
        """The fixed random unit vector u (uniform entries, normalised; the same for a given seed)."""
        u = torch.rand(hidden_size, generator=torch.Generator().manual_seed(self.seed), dtype=torch.float64)
        return (u / u.norm()).float().to(device)

    def _hidden(self, states) -> torch.Tensor:
        """Layer ℓ's output among a forward's hidden states (embeddings first, then each block's)."""
        return states[self.layer if self.layer is not None else default_layer(len(states) - 1)]

    def parts(self, model, batch: UnlearnBatch, reference=None):
        h_f = self._hidden(forward(model, batch.forget, hidden_states=True).hidden_states)
        target = self.steering * self.direction(h_f.shape[-1], h_f.device)
        yield self.term(self.gamma, losses.masked_mse(h_f, target.expand_as(h_f), batch.forget["attention_mask"]),
                        "forget_steer_mse")
        del h_f  # the forget pass's states are not kept through the retain pass
        h_r = self._hidden(forward(model, batch.retain, hidden_states=True).hidden_states)
        h_ref = self._hidden(reference(model, batch.retain, hidden_states=True).hidden_states)
        yield self.term(self.alpha, losses.masked_mse(h_r, h_ref, batch.retain["attention_mask"]), "retain_act_mse")
