"""How a gradient method runs a request (``forgetkit unlearn --method graddiff|npo|…``): through the one
training loop, on a LoRA adapter (``mode: lora``, the default) or every weight (``mode: full``).

The output directory holds ``adapter/`` (peft format, safetensors) or ``model/`` (full mode), written when
training ends; ``config.json`` (the resolved config) and ``train_log.jsonl`` (one line per optimiser step);
then what :func:`forgetkit.request.finish` writes for every request: ``audit.json``, the ledger row and
``summary.json``. While running, ``checkpoint/``: rerunning the same command resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from forgetkit.adapters.lora import attach_lora, bounded_layers, clip_adapters
from forgetkit.config import config_hash
from forgetkit.data.formatting import pad_id, tokenize_qa
from forgetkit.data.records import QARecord
from forgetkit.device import resolve_device
from forgetkit.errors import ConfigError, ForgetkitError
from forgetkit.eval.calibration import CriterionRecord
from forgetkit.eval.command import evaluate_run_into, oracle_log_of, read_log
from forgetkit.eval.evaluate import check_oracle_log, evaluate
from forgetkit.eval.result import EvalHeadline, EvalResult
from forgetkit.eval.sets import EvalData, benchmark_data
from forgetkit.eval.settings import EvalSettings
from forgetkit.io import write_json
from forgetkit.methods.adversarial import LatentAdversary
from forgetkit.methods.base import Method, Reference, UnlearnContext, build_method
from forgetkit.methods.stopping import StoppingHook
from forgetkit.request import (
    LoadRecord,
    RecordSet,
    RequestInputs,
    UnlearnConfig,
    UnlearnRequest,
    UnlearnResult,
    audit_of,
    calibration_of,
    finish,
    now,
    resolve_inputs,
)
from forgetkit.summaries import GradientSummary
from forgetkit.train import (
    CHECKPOINT_DIR,
    LOG_FILE,
    PairedData,
    TrainStats,
    fit_max_length,
    process_state,
    train_loop,
)

# For user data without vague answers: a privacy-free non-answer, ReLearn's kind of target.
VAGUE_FALLBACK = "I am not able to share personal details about that."


def refusals() -> list[str]:
    """The shipped "I don't know" answers (TOFU's, MIT; see methods/data/README.md)."""
    text = resources.files("forgetkit.methods").joinpath("data/refusals.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def alternate_records(forget: list[QARecord], kind: str) -> list[QARecord]:
    """The forget questions with a refusal ("idk") or their vague answer ("vague") as the answer."""
    if kind == "idk":
        options = refusals()
        pick = [options[int(hashlib.sha256(r.id.encode()).hexdigest(), 16) % len(options)] for r in forget]
    else:
        pick = [r.vague_answer or VAGUE_FALLBACK for r in forget]
    return [QARecord(r.question, answer, r.id) for r, answer in zip(forget, pick, strict=True)]


def run_gradient(request: UnlearnRequest, quiet: bool = False) -> UnlearnResult | None:
    """Unlearn with the request's gradient method, write everything into ``request.out``; the result (None in
    the other processes of a multi-process launch: the main process writes and evaluates). Three steps, as a
    recipe: :func:`setup` (inputs, model, adapter, reference), :func:`train` (the loop and its hooks),
    :func:`write` (the result, summary, audit and ledger row)."""
    job = setup(request, quiet)
    stats, criterion = train(job, quiet)
    if not job.main:  # the main process evaluates and writes the results
        return None
    return write(job, stats, criterion, quiet)


@dataclass
class GradientJob:
    """A gradient request set up: what the loop trains and what the result is written from."""

    request: UnlearnRequest
    config: UnlearnConfig  # resolved: the adapter kind filled in (config.json and the audit record)
    method: Method
    inputs: RequestInputs
    out: Path
    main: bool  # the main process (it writes; the others only train their share)
    started: str
    model: object  # the model being trained: with its adapter attached in LoRA mode
    tokenizer: object
    data: PairedData
    context: UnlearnContext
    existing_adapter: bool  # the LoRA target trains its own adapter (not merged into the starting point)
    max_length: int  # config.max_length fitted to the model's context
    calibration: list[QARecord] | None = None  # --until's never-trained reference, and its file
    calibration_file: Path | None = None
    reference: Reference | None = None
    adversary: LatentAdversary | None = None
    after_step: Callable | None = None  # clipped adapters: the norm clip after each step
    phases: dict = field(default_factory=dict)  # what the method's phases around training recorded
    before_training_s: float = 0.0

    def loss(self, wrapped, batch):
        """The method's loss parts on ``batch`` (its forget passes under the latent adversary, when armed)."""
        if self.adversary is not None:
            return self.adversary.parts(self.method, wrapped, batch, self.reference)
        return self.method.parts(wrapped, batch, self.reference)


def _resolved(request: UnlearnRequest) -> tuple[Method, UnlearnConfig]:
    """The request's method, and its config with the adapter kind filled in (the request's is unchanged);
    the flags that do not fit a gradient method refused."""
    if request.edits:
        raise ForgetkitError(f"--edits is for the closed-form editors, not '{request.config.method}'")
    method = build_method(request.config.method, request.config.params)
    config = replace(request.config, adapter=request.config.adapter
                     or (method.default_adapter if request.config.mode == "lora" else "lora"))
    if config.mode == "full" and config.adapter != "lora":
        raise ConfigError(f"adapter={config.adapter} needs mode=lora (full mode trains every weight, no adapter)")
    if request.eval_every and not request.run:
        raise ForgetkitError("unlearn: --eval-every needs --run (the benchmark's oracle log gives Forget Quality)")
    return method, config


def _calibration(request: UnlearnRequest, method: Method, config: UnlearnConfig,
                 inputs: RequestInputs) -> tuple[list[QARecord] | None, Path | None]:
    """``--until``'s calibration set and its file (None without ``--until``)."""
    if not config.until:
        return None, None
    if method.starts_from_base:
        raise ForgetkitError(f"--until: '{config.method}' trains from the base without the forget set; there is "
                             "nothing to stop")
    return calibration_of(request, inputs.forget, inputs.retain)


def setup(request: UnlearnRequest, quiet: bool = False) -> GradientJob:
    """Step 1: check the request, resolve its inputs, load the model (a LoRA target merged into the starting
    point, unless the method trains it), tokenise, place the adapter, run the method's ``start`` phase, build
    π_ref and the adversary; the main process writes ``config.json``."""
    import torch

    from forgetkit.models import load_model

    method, config = _resolved(request)
    out = Path(request.out)
    main = process_state().is_main_process
    if main:
        _check_output(out, config)
    inputs = resolve_inputs(request, method.starts_from_base)
    if (method.needs_retain or method.starts_from_base) and not inputs.retain:
        raise ForgetkitError(f"method '{config.method}' needs a retain set (--retain FILE)")
    calibration, calibration_file = _calibration(request, method, config, inputs)
    started = now()
    torch.manual_seed(config.train.seed)
    model, tokenizer = load_model(inputs.model, inputs.adapter, device=resolve_device(request.device))
    existing_adapter = inputs.adapter is not None and method.trains_existing_adapter and config.mode == "lora"
    if inputs.adapter is not None and not existing_adapter:
        model = model.merge_and_unload()  # the adapter becomes part of the frozen starting point
    max_length = fit_max_length(model, config.max_length)  # config.json and the audit keep the setting as given
    data = _paired_data(method, tokenizer, inputs, max_length)
    context = UnlearnContext(model, tokenizer, data, inputs.forget, replace(config, max_length=max_length), out, quiet,
                             existing_adapter)
    job = GradientJob(request, config, method, inputs, out, main, started, model, tokenizer, data, context,
                      existing_adapter, max_length, calibration, calibration_file)
    phase_start = time.perf_counter()
    _place_adapter(job)
    job.phases.update(method.start(context))
    job.before_training_s = time.perf_counter() - phase_start
    job.reference = Reference(job.model, frozen_copy=existing_adapter) if method.needs_reference else None
    job.adversary = LatentAdversary(job.model, config.adversary) if config.adversary.kind == "latent" else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"unlearn": asdict(config), "config_hash": config_hash(config)})
    return job


def _place_adapter(job: GradientJob) -> None:
    """What trains: the LoRA target's own adapter, a new adapter where the method places it (a clipped one with
    its norm clip after each step), or, in full mode, every weight."""
    config = job.config
    if job.existing_adapter:  # the adapter that holds the knowledge is trained itself
        for name, param in job.model.named_parameters():
            param.requires_grad_("lora_" in name)
    elif config.mode == "lora":
        lora, job.phases = job.method.place_adapter(job.context, config.lora)
        job.model = job.context.model = attach_lora(job.model, lora, kind=config.adapter)
        if config.adapter == "clipped":
            layers = bounded_layers(job.model, config.lora.bounded_modules)

            def after_step(_model) -> None:
                clip_adapters(layers, config.lora.clip_norm)

            job.after_step = after_step
    else:
        job.model.requires_grad_(True)


def train(job: GradientJob, quiet: bool = False) -> tuple[TrainStats, CriterionRecord | None]:
    """Step 2: the loop over the method's loss, with its hooks (``--eval-every``, ``--until``'s stop and
    rollback), then the method's ``finish`` phase; the statistics, and the criterion's record with ``--until``.
    The time of the checks outside the loop and of the phases counts in the method's time."""
    config, model = job.config, job.model
    hooks = [_periodic_eval(job.request, job.tokenizer)] if job.request.eval_every else []
    stopping = None
    if config.until:
        stopping = StoppingHook(config.criterion, job.tokenizer, job.inputs.forget, job.calibration,
                                job.inputs.retain or [], job.max_length, job.out, job.method.forget_term,
                                can_backtrack=process_state().num_processes == 1)
        hooks.append(stopping)
    epochs = job.method.train_steps(config.train.epochs)
    criterion_s = 0.0  # the criterion's checks outside the loop (before the first step, after the last)
    if epochs > 0:
        if stopping is not None and job.main:
            t0 = time.perf_counter()
            stopping.start(model)
            criterion_s = time.perf_counter() - t0
        stats = train_loop(model, job.loss, job.data, replace(config.train, epochs=epochs), pad_id(job.tokenizer),
                           run_dir=job.out, desc=f"unlearn ({config.method})", quiet=quiet,
                           after_step=job.after_step, on_step=_all_of(hooks) if hooks else None)
    else:
        stats = TrainStats(0, 0, 0, float("nan"), float("nan"), 0.0, 0.0, "none",
                           sum(p.numel() for p in model.parameters() if p.requires_grad))
    if job.adversary is not None:
        job.adversary.remove()
    criterion = None
    if stopping is not None and job.main:
        t0 = time.perf_counter()
        criterion = stopping.finish(model, stats.resumed_from_step + stats.steps)
        criterion_s += time.perf_counter() - t0
        stats.wall_time_s += criterion_s  # the checks count in the method's time, as its phases do
    phase_start = time.perf_counter()
    job.phases.update(job.method.finish(job.context))
    after_training_s = time.perf_counter() - phase_start
    if job.phases:  # a method with phases around training: they count in its time
        stats.wall_time_s += job.before_training_s + after_training_s
        job.phases.update({"before_training_s": job.before_training_s, "after_training_s": after_training_s})
    return stats, criterion


def write(job: GradientJob, stats: TrainStats, criterion: dict | None, quiet: bool = False) -> UnlearnResult:
    """Step 3 (main process): the adapter (or model), the summary (with ``--eval``, the evaluation), the audit
    record and its ledger row (:func:`forgetkit.request.finish`); the checkpoints are removed."""
    from forgetkit.models import save_model

    config, inputs, out = job.config, job.inputs, job.out
    result_dir = out / ("adapter" if config.mode == "lora" else "model")
    save_model(job.model, job.tokenizer, result_dir)
    summary = GradientSummary(method=config.method, mode=config.mode, **stats.to_dict(),
                              forget_examples=len(inputs.forget), retain_examples=len(inputs.retain or []),
                              phases=job.phases or None)
    details = {"resumed_from_step": stats.resumed_from_step}
    if criterion:
        criterion.calibration = {**RecordSet.of(job.calibration_file, job.calibration).to_dict(),
                                    "reference": config.criterion.reference}
        summary.criterion = details["criterion"] = criterion
    if job.request.evaluate:
        summary.eval = _evaluate(job.request, job.model, job.tokenizer, inputs, out, quiet)
    if "certificate" in job.phases:  # a method with a formal (ε, δ) guarantee
        details["certificate"] = job.phases["certificate"]
    audit = audit_of(config, inputs.model, inputs.adapter, inputs.forget_set(), result_dir, job.started,
                     guarantee=job.method.guarantee,
                     retain=inputs.retain_set(), origin=inputs.origin,
                     load=LoadRecord.of(inputs.model, inputs.adapter, result_dir, in_place=job.existing_adapter,
                                      full=config.mode == "full"),
                     details=details)
    result = finish(job.request, audit, summary, job.model, job.tokenizer)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(out / "refine" / CHECKPOINT_DIR, ignore_errors=True)
    return result


def _all_of(hooks):
    """One ``on_step`` hook that runs each of ``hooks`` and merges what they add to the step's log line."""
    def on_step(step: int, model, losses: dict) -> dict | None:
        record: dict = {}
        for hook in hooks:
            record.update(hook(step, model, losses) or {})
        return record or None

    return on_step


def _paired_data(method: Method, tokenizer, inputs: RequestInputs, max_length: int) -> PairedData:
    """The request's records tokenised for the loop: forget (with the alternate answers the method trains
    towards, paired by example), and retain when the method reads it."""
    data = PairedData()
    if not method.starts_from_base:
        forget_set = tokenize_qa(tokenizer, inputs.forget, max_length, name="forget")
        data.forget = forget_set.examples
        if method.alternate_answers:
            alt = tokenize_qa(tokenizer, alternate_records(inputs.forget, method.alternate_answers), max_length,
                              name="alternate answers")
            by_index = {e["index"]: e for e in alt.examples}
            data.forget = [e for e in forget_set.examples if e["index"] in by_index]
            data.alternate = [by_index[e["index"]] for e in data.forget]
    if inputs.retain and (method.needs_retain or method.starts_from_base):
        data.retain = tokenize_qa(tokenizer, inputs.retain, max_length, name="retain").examples
    return data


def _check_output(out: Path, config: UnlearnConfig) -> None:
    """Refuse to mix runs: an output directory with another config is not resumed into."""
    existing = out / "config.json"
    if existing.is_file() and (out / CHECKPOINT_DIR).is_dir():
        saved = json.loads(existing.read_text()).get("config_hash")
        if saved != config_hash(config):
            raise ForgetkitError(f"{out}: holds an unfinished run with another config; "
                                 "use another --out or remove it")
    elif (out / "audit.json").is_file():
        for name in ("audit.json", "summary.json", LOG_FILE):
            (out / name).unlink(missing_ok=True)


def _periodic_eval(request: UnlearnRequest, tokenizer):
    """An ``on_step`` callback: every ``eval_every`` steps, Forget Quality and Model Utility from a quick
    evaluation (forget set, first 100 retain records, world facts; answers of up to 40 tokens)."""
    run = request.prepared_run()
    full = benchmark_data(run.benchmark, request.split, retain_limit=100)
    data = EvalData(forget=full.forget, retain=full.retain, world_facts=full.world_facts)
    oracle_log = read_log(Path(request.oracle_log)) if request.oracle_log else oracle_log_of(run, request.split)
    if oracle_log is not None:
        check_oracle_log(data, oracle_log)  # before the first step, not at the first evaluation
    settings = EvalSettings(max_new_tokens=40, retain_limit=100, gradnorm=False)

    def on_step(step: int, model, losses: dict | None = None) -> dict | None:
        if step % request.eval_every:
            return None
        was_training = model.training
        _, summary = evaluate(model, tokenizer, data, settings, oracle_log=oracle_log, quiet=True)
        model.train(was_training)
        head = EvalResult.from_summary(summary)
        return {"forget_quality": head.forget_quality, "model_utility": head.model_utility,
                "forget_probability": head.forget["probability"]}

    return on_step


def _evaluate(request: UnlearnRequest, model, tokenizer, inputs: RequestInputs, out: Path,
              quiet: bool) -> EvalHeadline:
    run = request.prepared_run() if request.run else None
    return evaluate_run_into(out / "eval", model, tokenizer, run, request.split, inputs.forget, quiet,
                             request.eval_settings).headline()
