"""Perturbations of a decoder's residual stream: the latent adversary of adversarial unlearning.

:class:`ResidualPerturbation` adds a tensor δ ``[B, T, H]`` to the output of one decoder layer, but only in
forward passes whose ``input_ids`` are the very tensor it was armed with or a view of it (a forward pre-hook
on the input embeddings tells one batch from another), so in a training step that also runs retain batches only the
forget batch is perturbed. It records the clean hidden states' per-position norms, against which the
adversary's budget is set. :class:`AdversarySettings` is the ``adversary`` block of an unlearning config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from forgetkit.errors import ConfigError, SettingError, require_positive


@dataclass
class AdversarySettings:
    """Latent adversarial unlearning (``adversary.kind: latent``): before each step, ``steps`` of projected
    gradient descent find the perturbation of layer ``layer``'s output (None: the middle layer) that most
    restores the forget answers, each position's perturbation at most ``epsilon`` times that position's hidden
    state norm; the method's forget term is then computed under it."""

    kind: str | None = None  # None (off) or "latent"
    layer: int | None = None
    epsilon: float = 0.5
    steps: int = 4
    step_size: float = 0.5  # of epsilon, per step

    def __post_init__(self) -> None:
        if self.kind not in (None, "latent"):
            raise SettingError("adversary.kind", f"must be latent or unset, got '{self.kind}'")
        require_positive(self, "epsilon", "steps", "step_size")


class NoLayerStack(ConfigError, ValueError):
    """A model whose decoder layers forgetkit cannot find: a one-line user error (and a ValueError)."""


def decoder_layers(model) -> torch.nn.ModuleList:
    """The model's stack of decoder layers (Llama-style ``layers``, GPT-2's ``h``): the longest ModuleList
    of that name."""
    stacks = [m for name, m in model.named_modules()
              if isinstance(m, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layers", "h")]
    if not stacks:
        raise NoLayerStack(f"{type(model).__name__}: no decoder layer stack (a ModuleList named layers or h) found: "
                           "the latent adversary and the generic LoRA targets need one")
    return max(stacks, key=len)


def _same_tensor(seen: torch.Tensor | None, target: torch.Tensor) -> bool:
    """``seen`` is ``target`` or a view of it (GPT-2 reshapes its ``input_ids`` before the embedding): the same
    storage and size. The armed tensor is held, so its memory cannot be another batch's."""
    return seen is not None and seen.data_ptr() == target.data_ptr() and seen.numel() == target.numel()


class ResidualPerturbation:
    """Hooks that add an armed δ to one decoder layer's output in the forward passes of one batch."""

    def __init__(self, model, layer: int | None = None) -> None:
        layers = decoder_layers(model)
        self.index = len(layers) // 2 if layer is None else layer
        if not -len(layers) <= self.index < len(layers):
            raise SettingError("adversary.layer", f"the model has {len(layers)} decoder layers, got {layer}")
        self.delta: torch.Tensor | None = None
        self.target: torch.Tensor | None = None
        self.norms: torch.Tensor | None = None  # the clean hidden states' norms of the last armed pass [B, T]
        self._current: torch.Tensor | None = None
        self._handles = [model.get_input_embeddings().register_forward_pre_hook(self._see_input),
                         layers[self.index].register_forward_hook(self._perturb)]

    def _see_input(self, _module, args) -> None:
        self._current = args[0] if args else None

    def _perturb(self, _module, _args, output):
        if self.target is None or not _same_tensor(self._current, self.target):
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        self.norms = hidden.detach().norm(dim=-1)
        if self.delta is None:
            return output
        hidden = hidden + self.delta.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def arm(self, input_ids: torch.Tensor, delta: torch.Tensor | None) -> None:
        """Perturb the passes over ``input_ids`` (this tensor object) by ``delta`` (None: only record norms)."""
        self.target, self.delta = input_ids, delta

    def disarm(self) -> None:
        self.target = self.delta = self._current = None

    def remove(self) -> None:
        self.disarm()
        for handle in self._handles:
            handle.remove()
