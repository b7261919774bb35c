"""``forgetkit unlearn --method llmeraser|fast_ntk``: apply a closed-form editor to a LoRA adapter.

The knowledge must live in a LoRA adapter on a frozen base (``--model`` + ``--adapter``, or a
run prepared with ``target_mode=lora``). The request is a removal (``--forget FILE``, or the
run's split) or an edit (``--edits FILE``; with ``--run``, ``--edits query`` or ``--edits
response`` name the run's edit files for the split). ``--retain FILE`` is the rest of the
adapter's training set (with ``--run``: the target's training data minus the request's records).

The output directory holds ``adapter/`` (the edited adapter), ``config.json``, ``summary.json``
(time, peak memory, the solve's numbers, and with ``--eval`` the metrics and the request's
success) and ``audit.json`` (hashes and counts, never text).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from forgetkit.config import config_hash
from forgetkit.cost import measure
from forgetkit.data.edits import EDIT_KINDS, EditRecord, read_edits
from forgetkit.data.formatting import pad_id, tokenize_qa, tokenize_text
from forgetkit.data.readers import read_records, refuse_overlap
from forgetkit.data.records import QARecord, group_of
from forgetkit.device import resolve_device
from forgetkit.editors.base import EditData, build_editor, lora_parameters
from forgetkit.errors import ForgetkitError
from forgetkit.eval.calibration import CONTINUE, EXHAUSTED, Check, CriterionRecord, CriterionSets
from forgetkit.eval.command import evaluate_into, oracle_log_of
from forgetkit.eval.result import EvalHeadline
from forgetkit.eval.sets import EvalData, benchmark_data
from forgetkit.influence.solvers import UnconvergedSolve
from forgetkit.io import write_json
from forgetkit.request import (
    LoadRecord,
    RecordSet,
    UnlearnRequest,
    UnlearnResult,
    audit_of,
    calibration_of,
    finish,
    now,
)
from forgetkit.summaries import EditorSummary


@dataclass
class EditInputs:
    """An edit request's inputs: the model and the adapter holding the knowledge, the request's records (the
    originals, and the edits when it is an edit request), the file they came from, and the kept training set."""

    model: Path
    adapter: Path
    request_path: Path | None
    edits: list[EditRecord] | None
    originals: list[QARecord]
    kept: list[QARecord]
    texts: list

    @property
    def kind(self) -> str:
        return self.edits[0].kind if self.edits else "removal"


def _inputs(request: UnlearnRequest) -> EditInputs:
    """Model and adapter dirs, the request's records (originals, edits) and the kept training records."""
    edits: list[EditRecord] | None = None
    if request.run:
        run = request.prepared_run(stages=("target",))
        if not run.lora_target():
            raise ForgetkitError(f"{run.root}/target: not a LoRA adapter; closed-form editors change the adapter that "
                                 "holds the knowledge (prepare the run with target_mode=lora)")
        target = run.model_of("target")
        model_dir, adapter_dir = target.model, target.adapter
        if request.edits in EDIT_KINDS:
            edits_path = run.edits_file(request.edits, request.split)
        else:
            edits_path = Path(request.edits) if request.edits else None
        request_path = edits_path or run.forget_file(request.split)
        training, texts = run.training_records()  # prepare trains the target on the narratives too
    else:
        if not request.model or not request.adapter:
            raise ForgetkitError("closed-form editors need --model DIR and --adapter DIR (the adapter holding the "
                                 "knowledge), or --run DIR")
        if not request.forget and request.forget_records is None and not request.edits:
            raise ForgetkitError("give the request: --forget FILE (removal) or --edits FILE (query or response edits)")
        if not request.retain and request.retain_records is None:
            raise ForgetkitError("give --retain FILE: the rest of the adapter's training set (the curvature and the "
                                 "update's scale come from it)")
        model_dir, adapter_dir = Path(request.model), Path(request.adapter)
        edits_path = Path(request.edits) if request.edits else None
        request_path = edits_path or (Path(request.forget) if request.forget else None)
        training = request.retain_records if request.retain_records is not None else read_records(request.retain)
        texts = []
    if edits_path is not None:
        edits = read_edits(edits_path)
        originals = [e.original() for e in edits]
    elif request_path is None:
        originals = request.forget_records
    else:
        originals = read_records(request_path)
    if not request.run:  # a user's retain set holds no forget record (a prepared run's training set does)
        refuse_overlap(originals, training, "retain", source=request.retain, allow=request.allow_overlap)
    removed = {r.content_hash() for r in originals} | {r.id for r in originals}
    kept = [r for r in training if r.id not in removed and r.content_hash() not in removed]
    return EditInputs(model_dir, adapter_dir, request_path, edits, originals, kept, texts)


def run_edit(request: UnlearnRequest, quiet: bool = False) -> UnlearnResult:
    """Apply the editor, write the adapter and the records into ``request.out``; the result."""
    from forgetkit.models import load_model, save_model

    config = request.config
    # the sample's seed: params.seed when given, else the request's train.seed
    editor = build_editor(config.method, {"seed": config.train.seed, **config.params})
    if config.mode != "lora":
        raise ForgetkitError(f"{config.method} edits a LoRA adapter: mode must be lora")
    if config.adversary.kind:
        raise ForgetkitError(f"adversary: {config.method} is a closed-form edit; a latent adversary needs the "
                             "training loop of a gradient method")
    inputs = _inputs(request)
    kind = inputs.kind
    if kind not in editor.requests:
        raise ForgetkitError(f"{config.method} does {', '.join(editor.requests)} requests, not {kind}")
    out = Path(request.out)
    started = now()
    device = resolve_device(request.device)
    model, tokenizer = load_model(inputs.model, inputs.adapter, device=device)
    pad = pad_id(tokenizer)
    length = config.max_length
    people = {group_of(r.id) for r in inputs.kept}
    kept = tokenize_qa(tokenizer, inputs.kept, length, name="kept").examples
    texts = [t for t in inputs.texts if group_of(t.id) in people]
    if texts:
        kept += tokenize_text(tokenizer, texts, length, name="kept texts").examples
    edited = [e.edited() for e in inputs.edits] if inputs.edits else []
    data = EditData(request=kind, original=tokenize_qa(tokenizer, inputs.originals, length, name="request").examples,
                    edited=tokenize_qa(tokenizer, edited, length, name="edited").examples if edited else [],
                    kept=kept, pad_token_id=pad)
    known = None
    if request.evaluate and kind == "removal":  # which forget answers the model gives before the request
        from forgetkit.eval.edit_success import removal_success

        known = removal_success(model, tokenizer, inputs.originals)["answered"]
    calibration = None
    if config.until:
        if kind != "removal" or not hasattr(editor, "damping_ratio"):
            raise ForgetkitError(f"--until: {config.method} searches its damping for removals only (llmeraser); "
                                 f"this is a {kind} request")
        calibration = calibration_of(request, inputs.originals, inputs.kept)
    search = None
    with measure(device) as cost:  # a refused solve (UnconvergedSolve) leaves the adapter and out/ untouched
        if calibration is None:
            info = editor.apply(model, data, quiet=quiet)
        else:
            info, search = _damping_search(config, editor, model, tokenizer, data, inputs.originals,
                                           calibration[0], inputs.kept, quiet)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"unlearn": asdict(config), "config_hash": config_hash(config)})
    adapter_out = out / "adapter"
    save_model(model, tokenizer, adapter_out)
    summary = EditorSummary(method=config.method, mode="lora", request=kind, steps=0, wall_time_s=cost.wall_time_s,
                            peak_memory_mb=cost.peak_memory_mb, memory_kind=cost.memory_kind,
                            trainable_parameters=sum(p.numel() for n, p in model.named_parameters() if "lora_" in n),
                            request_examples=len(data.original), kept_examples=len(data.kept), solve=info)
    if search is not None:
        search.calibration = {**RecordSet.of(calibration[1], calibration[0]).to_dict(),
                                 "reference": config.criterion.reference}
        summary.criterion = search
    if request.evaluate:
        summary.eval = _evaluate(request, model, tokenizer, inputs, out, quiet, known)
    removed = RecordSet.of(inputs.request_path, inputs.edits or inputs.originals)
    audit = audit_of(config, inputs.model, inputs.adapter, removed, adapter_out, started, request=kind,
                     retain=RecordSet.of(None, inputs.kept),
                     load=LoadRecord.of(inputs.model, inputs.adapter, adapter_out, in_place=True, full=False),
                     details={"criterion": search} if search else {})
    return finish(request, audit, summary, model, tokenizer)


def _damping_search(config, editor, model, tokenizer, data: EditData, forget: list[QARecord],
                    calibration: list[QARecord], kept: list[QARecord], quiet: bool) -> tuple[dict, CriterionRecord]:
    """``--until indistinguishable`` for an editor: apply it at each damping ratio of ``criterion.dampings`` (from
    the weakest update to the strongest) to the adapter as it was, judge each result as the training criterion
    judges a step (the unedited adapter first: the utility guard's baseline), stop at the first indistinguishable
    one, and leave the adapter edited with the ratio nearest indistinguishable. A ratio whose solve does not
    converge (:class:`UnconvergedSolve`) is never applied: the search records it and stops there (a weaker
    damping is harder to solve). The apply's record of the kept ratio, and the criterion's summary (with every
    ratio's numbers), are returned."""
    settings = config.criterion
    named = lora_parameters(model)
    original = {n: p.detach().clone() for n, p in named}
    sets = CriterionSets(settings, tokenizer, forget, calibration, kept, config.max_length)
    criterion = sets.criterion

    def edit_at(ratio: float | None, quiet: bool) -> dict:
        """The adapter as it was, then (for a ratio) edited with that damping ratio; the apply's record."""
        with torch.no_grad():
            for n, p in named:
                p.copy_(original[n])
        if ratio is None:
            return {"damping_ratio": None, "note": "no ratio kept: the adapter is unchanged"}
        at_ratio = editor.__class__(**{**asdict(editor), "damping": None, "damping_ratio": ratio})
        return {**at_ratio.apply(model, data, quiet=quiet), "damping_ratio": ratio}

    def ratio_of(check: Check) -> float | None:
        return settings.dampings[check.step - 1] if check.step else None

    sets.check(0, model)
    applied: dict[int, dict] = {0: edit_at(None, quiet)}
    unconverged = None
    for step, ratio in enumerate(settings.dampings, start=1):
        try:
            applied[step] = edit_at(ratio, quiet)
        except UnconvergedSolve as exc:  # the adapter is as it was: edit_at restored it before the refused apply
            unconverged = {"damping_ratio": ratio, "reason": str(exc)}
            break
        if sets.check(step, model).verdict != CONTINUE:
            break
    best = criterion.best
    last = criterion.checks[-1]
    if best is not last or unconverged:  # redo the kept ratio's edit (or restore the unedited adapter)
        applied[best.step] = edit_at(ratio_of(best), quiet=True)
    stopped = last.verdict if last.verdict != CONTINUE else EXHAUSTED
    return applied[best.step], replace(
        criterion.summary(stopped), rolled_back=best is not last, unconverged=unconverged,
        trace=[{**c.to_dict(), "damping_ratio": ratio_of(c)} for c in criterion.checks])


def _evaluate(request, model, tokenizer, inputs: EditInputs, out: Path, quiet: bool,
              known: list[bool] | None) -> EvalHeadline:
    """The evaluation's metrics (Forget Quality for removals on a run with an oracle log) and the
    request's success rate (for a removal, also among the answers the model gave before: ``known``)."""
    from forgetkit.eval.edit_success import edit_success, removal_success

    if request.run:
        run = request.prepared_run()
        data = benchmark_data(run.benchmark, request.split, request.eval_settings.retain_limit)
        oracle_log = oracle_log_of(run, request.split) if inputs.edits is None else None
    else:
        data, oracle_log = EvalData(forget=[QARecord(r.question, r.answer, r.id) for r in inputs.originals]), None
    headline = evaluate_into(out / "eval", model, tokenizer, data, oracle_log, quiet, request.eval_settings).headline()
    if inputs.edits:
        success = edit_success(model, tokenizer, inputs.edits)
    else:
        success = removal_success(model, tokenizer, inputs.originals, known=known)
        del success["answered"]
    headline.success = success
    return headline
