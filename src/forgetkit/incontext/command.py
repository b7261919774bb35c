"""``forgetkit unlearn --method guardrail|icul``: build the context of an input-based unlearner.

The model is the request's (the target of ``--run``, its LoRA adapter merged), unchanged. The output
directory holds ``context/context.json`` (the :class:`~forgetkit.data.context.PromptContext`: it holds the
forget subjects' text, which the model must read on every query), ``config.json``, ``summary.json`` (the
build's time, and the context's inference cost: the tokens it adds to a forget question's prompt, mean and
most) and ``audit.json`` (hashes and counts; its ``load`` record names the model and the context, so
``UnlearnResult.load_model`` gives the model with a tokenizer that carries the context).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from forgetkit.config import config_hash
from forgetkit.data.context import CONTEXT_FILE, with_context
from forgetkit.data.formatting import prompt_ids
from forgetkit.data.records import group_of
from forgetkit.device import resolve_device
from forgetkit.errors import ForgetkitError
from forgetkit.eval.command import evaluate_run_into
from forgetkit.incontext.base import ContextInputs, build_input_unlearner
from forgetkit.io import write_json
from forgetkit.request import LoadRecord, UnlearnRequest, UnlearnResult, audit_of, finish, now, resolve_inputs
from forgetkit.summaries import InputSummary


def run_input(request: UnlearnRequest, quiet: bool = False) -> UnlearnResult:
    """Build the context, write it and the records into ``request.out``; the result (the model in memory)."""
    from forgetkit.models import load_model

    config = request.config
    if request.edits:
        raise ForgetkitError(f"--edits is for the closed-form editors, not '{config.method}'")
    if config.until or config.adversary.kind:
        raise ForgetkitError(f"'{config.method}' trains nothing: --until and adversary need a gradient method")
    unlearner = build_input_unlearner(config.method, config.params)
    inputs = resolve_inputs(request)
    names: dict[str, str] = {}
    if request.run:
        people = request.prepared_run().person_names()
        names = {r.id: people[group_of(r.id)] for r in inputs.forget if group_of(r.id) in people}
    started = now()
    model, tokenizer = load_model(inputs.model, inputs.adapter, device=resolve_device(request.device))
    if inputs.adapter is not None:
        model = model.merge_and_unload()
    t0 = time.perf_counter()
    context = unlearner.context(ContextInputs(inputs.forget, inputs.retain or [], names))
    build_s = time.perf_counter() - t0
    guarded = with_context(tokenizer, context)
    added = [len(prompt_ids(guarded, r.question)) - len(prompt_ids(tokenizer, r.question)) for r in inputs.forget]
    out = Path(request.out)
    context_dir = out / "context"
    write_json(out / "config.json", {"unlearn": asdict(config), "config_hash": config_hash(config)})
    write_json(context_dir / CONTEXT_FILE, context.to_dict())
    summary = InputSummary(method=config.method, mode="input", steps=0, wall_time_s=build_s, peak_memory_mb=0.0,
                           memory_kind="none", trainable_parameters=0, forget_examples=len(inputs.forget),
                           retain_examples=len(inputs.retain or []),
                           context_tokens={"mean": sum(added) / max(len(added), 1), "max": max(added, default=0)})
    if request.evaluate:
        run = request.prepared_run() if request.run else None
        summary.eval = evaluate_run_into(out / "eval", model, guarded, run, request.split, inputs.forget,
                                            quiet, request.eval_settings).headline()
    load = LoadRecord.of(inputs.model, inputs.adapter, context_dir, in_place=False, full=False, context=True)
    audit = audit_of(config, inputs.model, inputs.adapter, inputs.forget_set(), context_dir, started,
                     retain=inputs.retain_set(), origin=inputs.origin, load=load)
    return finish(request, audit, summary, model, guarded)
