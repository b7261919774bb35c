"""``forgetkit unlearn``: one request, dispatched to its unlearner by the registry.

Importing this module registers every unlearner (``forgetkit.methods``, ``forgetkit.editors``,
``forgetkit.exact``). :func:`run_unlearn` checks the request (nothing is written before it passes),
looks the method up in :mod:`forgetkit.registry` and hands the request to the runner of its kind:
the training loop for gradient methods (:mod:`forgetkit.methods.command`), the closed form for editors
(:mod:`forgetkit.editors.command`), shard retraining for sharded exact unlearning
(:mod:`forgetkit.exact.command`), a context for input-based unlearners (:mod:`forgetkit.incontext.command`),
holding the output's writer lock (:mod:`forgetkit.locks`) while it runs. Each ends in :func:`forgetkit.request.finish`.
"""

from __future__ import annotations

from pathlib import Path

from forgetkit import editors, incontext, methods  # noqa: F401  (each registers its unlearners; exact.command its own)
from forgetkit.editors.command import run_edit
from forgetkit.exact.command import run_shard_delete
from forgetkit.incontext.command import run_input
from forgetkit.locks import output_lock
from forgetkit.methods.command import run_gradient
from forgetkit.registry import EDITOR, GRADIENT, INPUT, SHARDED, UNLEARNERS, unlearner
from forgetkit.request import UnlearnConfig, UnlearnRequest, UnlearnResult, check_request

__all__ = ["RUNNERS", "UNLEARNERS", "UnlearnConfig", "UnlearnRequest", "UnlearnResult", "load_unlearned",
           "run_unlearn"]

RUNNERS = {GRADIENT: run_gradient, EDITOR: run_edit, SHARDED: run_shard_delete, INPUT: run_input}


def run_unlearn(request: UnlearnRequest, quiet: bool = False) -> UnlearnResult | None:
    """Check the request, run its unlearner, write everything into ``request.out``; the result (None in the
    other processes of a multi-process launch)."""
    entry = unlearner(request.config.method)
    check_request(request, adapter_is_shard_set=entry.kind == SHARDED)
    with output_lock(request.out, "--out"):  # one writer per output: a second request on it is refused here
        return RUNNERS[entry.kind](request, quiet=quiet)


def load_unlearned(out: str | Path, device: str = "cpu"):
    """``(model, tokenizer)``: the model a finished ``unlearn`` run in ``out`` produced, rebuilt from its audit."""
    return UnlearnResult.read(out).load_model(device)
