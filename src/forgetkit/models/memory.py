"""Lower bounds of the memory a batch takes, from the model's config: what lets a command refuse a batch size
that could never fit (:func:`forgetkit.cost.refuse_beyond_memory`) before any work.

Only the hidden states are counted (``[rows, length, hidden]`` per decoder layer): attention, MLP
intermediates, logits and the optimiser come on top, so an estimate above the machine's memory is clearly
impossible, and one below it promises nothing.
"""

from __future__ import annotations

from forgetkit.models.latent import decoder_layers


def hidden_state_bytes(model, rows: int, length: int, layers: int = 1, element_size: int | None = None) -> int:
    """Bytes of ``layers`` decoder layers' hidden states for ``rows`` sequences of ``length`` tokens, at
    ``element_size`` bytes a value (None: the parameters')."""
    hidden = getattr(model.config, "hidden_size", 0)
    size = element_size or next(model.parameters()).element_size()
    return rows * length * hidden * layers * size


def layers_kept_for_backward(model) -> int:
    """The decoder layers whose inputs a backward pass keeps (activation checkpointing included): each from the
    first layer that holds a trainable parameter up; all of them when the model has no layer stack to look in."""
    try:
        layers = decoder_layers(model)
    except ValueError:
        return getattr(model.config, "num_hidden_layers", 1)
    for index, layer in enumerate(layers):
        if any(p.requires_grad for p in layer.parameters()):
            return len(layers) - index
    return 0
