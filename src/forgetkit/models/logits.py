"""The output head at the positions that matter.

Only answer tokens carry a label, and a chat prompt is most of a sequence; with a real vocabulary
(49,152 for SmolLM2, 128,256 for Llama-3) the head and its float32 log-softmax over every position
are the largest tensors of a pass. Hugging Face causal LMs take ``logits_to_keep``: given a boolean
``[B, T]`` mask they run the head only at its true positions and return ``[n, V]`` logits, row by
row. ``labelled_logits_mask`` is that mask for a batch's labels (position t predicts label t+1),
and ``takes_logits_to_keep`` says whether a model (under a peft or DDP wrapper: the model inside)
accepts it; callers fall back to the full ``[B, T, V]`` logits when it does not.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator

import torch

from forgetkit.data.formatting import IGNORE_INDEX


def takes_logits_to_keep(model) -> bool:
    """Whether ``model``'s forward names ``logits_to_keep`` (looking through DDP and peft wrappers)."""
    inner = getattr(model, "module", model)
    inner = inner.get_base_model() if hasattr(inner, "get_base_model") else inner
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def labelled_logits_mask(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` bool: the positions whose logits predict a label (the last position never does)."""
    scored = labels[:, 1:] != IGNORE_INDEX
    return torch.cat([scored, torch.zeros_like(scored[:, :1])], dim=1)


def head_inputs(model, part: dict[str, torch.Tensor]
                ) -> tuple[dict, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """The forward's keyword arguments for the logits at ``part``'s labelled positions, what turns the output's
    logits into ``[n, V]`` (the head run there only where the model allows it, else gathered), and the mask."""
    mask = labelled_logits_mask(part["labels"])
    inputs = {"input_ids": part["input_ids"], "attention_mask": part["attention_mask"]}
    if takes_logits_to_keep(model):
        return {**inputs, "logits_to_keep": mask}, lambda logits: logits, mask
    return inputs, lambda logits: logits[mask], mask


def answer_logits(model, part: dict[str, torch.Tensor], inputs_embeds: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits [n, V], targets [n], rows [n])`` at the labelled positions of ``part`` (:func:`head_inputs`);
    ``rows`` is each position's row. ``inputs_embeds``, when given, replace ``part``'s token ids as the input."""
    inputs, select, mask = head_inputs(model, part)
    if inputs_embeds is not None:
        inputs = {**{k: v for k, v in inputs.items() if k != "input_ids"}, "inputs_embeds": inputs_embeds}
    logits = select(model(**inputs).logits)
    return logits, part["labels"][:, 1:][mask[:, :-1]], mask.nonzero()[:, 0]


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def answer_cross_entropy(model, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """A causal LM's own loss (mean cross-entropy over the labelled tokens, in float32 at least), with the head
    run at the labelled positions only where the model allows it."""
    logits, targets, _ = answer_logits(model, part)
    return torch.nn.functional.cross_entropy(_at_least_float32(logits), targets)


def _trimmed(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``part`` without its trailing columns that no row attends to (right padding): a causal LM's outputs at the
    other positions do not depend on them."""
    width = int(part["attention_mask"].any(0).nonzero().max()) + 1
    return {k: v[:, :width] for k, v in part.items()}


def cross_entropy_parts(model, part: dict[str, torch.Tensor], rows: int | None) -> Iterator[torch.Tensor]:
    """:func:`answer_cross_entropy` of ``part`` as a sum of parts over chunks of at most ``rows`` rows (all of
    them at once when ``rows`` is None), each chunk's summed cross-entropy over the whole part's labelled-token
    count. Backpropagated one at a time, only one chunk's activations are alive; the sum, and so the gradient,
    is the whole batch's."""
    batch = part["labels"].shape[0]
    if not rows or rows >= batch:
        yield answer_cross_entropy(model, part)
        return
    count = (part["labels"][:, 1:] != IGNORE_INDEX).sum().clamp(min=1)
    for start in range(0, batch, rows):
        logits, targets, _ = answer_logits(model, _trimmed({k: v[start:start + rows] for k, v in part.items()}))
        yield torch.nn.functional.cross_entropy(_at_least_float32(logits), targets, reduction="sum") / count


def example_cross_entropy(model, part: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's mean cross-entropy over its own labelled tokens (``[B]``; 0 for a row without labels)."""
    logits, targets, rows = answer_logits(model, part)
    nll = torch.nn.functional.cross_entropy(_at_least_float32(logits), targets, reduction="none")
    batch = part["labels"].shape[0]
    total = torch.zeros(batch, dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    count = torch.zeros(batch, dtype=nll.dtype, device=nll.device).index_add(0, rows, torch.ones_like(nll))
    return (total / count.clamp(min=1)).to(logits.dtype)


def context_length(model) -> int:
    """The most positions ``model`` takes (its config's ``max_position_embeddings`` or GPT-2's ``n_positions``;
    2048 when the config names none)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
