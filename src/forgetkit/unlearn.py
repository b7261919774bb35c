"""``forgetkit unlearn``: run one method on a model, write the adapter, the logs and an audit record.

The model is frozen and a LoRA adapter is trained (``mode: lora``, the default), or every
weight is trained (``mode: full``). ``retrain`` starts from the base model instead of the
target. The output directory holds:

- ``adapter/`` (peft format, safetensors) or ``model/`` (full mode), written when training ends;
- ``config.json`` (the resolved config), ``train_log.jsonl`` (one line per optimiser step);
- ``summary.json`` (time, peak memory, trainable parameters, steps, losses);
- ``audit.json``: hashes of the model, adapter and data sets, counts, method, config, start and
  end time, the output's hash, and the evaluation summary with ``--eval``; never a record's text;
  the same request is appended to the audit ledger (``forgetkit.audit.ledger``, ``--ledger``);
- while running, ``checkpoint/``: rerunning the same command resumes from it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from forgetkit import checks
from forgetkit.adapters.lora import ADAPTER_KINDS, LoraSettings, attach_lora, bounded_layers, clip_adapters
from forgetkit.audit.ledger import check_ledger
from forgetkit.config import config_hash
from forgetkit.data.formatting import tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord, records_hash
from forgetkit.errors import ConfigError, ForgetkitError, require_positive
from forgetkit.io import dir_hash, write_json
from forgetkit.methods import build_method
from forgetkit.runs import check_run, run_stages
from forgetkit.train import CHECKPOINT_DIR, LOG_FILE, PairedData, TrainConfig, TrainStats, process_state, train_loop

MODES = ("lora", "full")
# For user data without vague answers: a privacy-free non-answer, ReLearn's kind of target.
VAGUE_FALLBACK = "I am not able to share personal details about that."


@dataclass
class UnlearnConfig:
    method: str = "graddiff"
    params: dict = field(default_factory=dict)  # the method's hyper-parameters
    mode: str = "lora"
    adapter: str | None = None  # lora, sine or clipped (LoRA mode); None: the method's default
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=16, lr=1e-3))
    max_length: int = 128

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.adapter is not None and self.adapter not in ADAPTER_KINDS:
            raise ConfigError(f"adapter must be one of {', '.join(ADAPTER_KINDS)}, got '{self.adapter}'")
        require_positive(self, "max_length")


@dataclass
class UnlearnRequest:
    out: str
    config: UnlearnConfig
    model: str | None = None
    adapter: str | None = None
    forget: str | None = None
    retain: str | None = None
    run: str | None = None  # a prepared run directory (built-in benchmark)
    split: str = "forget10"
    evaluate: bool = False
    eval_every: int = 0  # with --run: Forget Quality and Model Utility every N steps, into the step log
    device: str = "auto"
    edits: str | None = None  # closed-form editors: an edit file (or, with --run, "query" / "response")
    ledger: str | None = None  # the audit ledger (SQLite); None: RUN/ledger.sqlite, else beside --out

    def ledger_path(self) -> Path:
        from forgetkit.audit.ledger import LEDGER_FILE

        if self.ledger:
            return Path(self.ledger)
        return (Path(self.run) if self.run else Path(self.out).resolve().parent) / LEDGER_FILE


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


def check_request(request: UnlearnRequest, sharded: bool) -> None:
    """What every kind of request is checked for before any work: its inputs exist and open, its output
    can be written and is inside none of them, its ledger is a ledger. Nothing is written."""
    from forgetkit.data.edits import EDIT_KINDS

    if request.eval_every < 0:
        raise ConfigError(f"--eval-every must be ≥ 0, got {request.eval_every}")
    inputs: list[object] = [request.model, request.adapter, request.forget, request.retain]
    containers: list[object] = []
    if request.edits and request.edits not in EDIT_KINDS:
        inputs.append(checks.input_file(request.edits, "edits"))
    if request.run:
        run = check_run(request.run, splits=(request.split,))
        inputs += run_stages(run)
        containers.append(run)
    else:
        if request.model:
            checks.model_dir(request.model)
        if request.adapter and not sharded:
            checks.adapter_dir(request.adapter)
        for role in ("forget", "retain"):
            if getattr(request, role):
                checks.input_file(getattr(request, role), role)
    checks.output_path(request.out, "--out", inputs, containers=containers)
    check_ledger(request.ledger_path())


def _resolve_inputs(request: UnlearnRequest, method) -> tuple[Path, Path | None, Path, Path | None, dict]:
    """Model dir, adapter dir, forget file, retain file, and where each came from."""
    if request.run:
        run = Path(request.run)
        bench = run / "benchmark"
        start = "base" if method.starts_from_base else "target"
        check_run(run, stages=(start,), splits=(request.split,))
        stage = json.loads((run / start / "stage.json").read_text())
        lora_target = (run / start / "adapter_config.json").is_file()
        model_dir, adapter = (run / "base", run / start) if lora_target else (run / start, None)
        retain = bench / f"retain{100 - int(request.split.removeprefix('forget')):02d}.jsonl"
        return model_dir, adapter, bench / f"{request.split}.jsonl", retain, {"run": str(run), "stage": start,
                                                                               "stage_key": stage.get("key")}
    if not request.model or not request.forget:
        raise ForgetkitError("unlearn: give --model DIR and --forget FILE (and usually --retain FILE), or --run DIR")
    return (Path(request.model), Path(request.adapter) if request.adapter else None, Path(request.forget),
            Path(request.retain) if request.retain else None, {})


def run_unlearn(request: UnlearnRequest, quiet: bool = False) -> dict:
    """Unlearn, write everything into ``request.out``, and return the summary."""
    import torch

    from forgetkit.models import load_model

    config = request.config
    from forgetkit.editors import EDITORS
    from forgetkit.exact.command import SHARDED_METHOD
    from forgetkit.methods import METHODS

    if config.method not in (*METHODS, *EDITORS, SHARDED_METHOD):
        known = ", ".join(sorted({*METHODS, *EDITORS, SHARDED_METHOD}))
        raise ConfigError(f"unknown method '{config.method}' (known: {known})")
    check_request(request, sharded=config.method == SHARDED_METHOD)
    if config.method == SHARDED_METHOD:
        from forgetkit.exact.command import run_shard_delete

        return run_shard_delete(request, quiet=quiet)
    if config.method in EDITORS:
        from forgetkit.editors.command import run_edit

        return run_edit(request, quiet=quiet)
    if request.edits:
        raise ForgetkitError(f"--edits is for the closed-form editors ({', '.join(sorted(EDITORS))}), "
                             f"not '{config.method}'")
    method = build_method(config.method, config.params)
    if config.adapter is None:
        config.adapter = method.default_adapter if config.mode == "lora" else "lora"
    if config.mode == "full" and config.adapter != "lora":
        raise ConfigError(f"adapter={config.adapter} needs mode=lora (full mode trains every weight, no adapter)")
    if request.eval_every and not request.run:
        raise ForgetkitError("unlearn: --eval-every needs --run (the benchmark's oracle log gives Forget Quality)")
    out = Path(request.out)
    main = process_state().is_main_process
    if main:
        _check_output(out, config)
    model_dir, adapter_dir, forget_path, retain_path, origin = _resolve_inputs(request, method)
    forget = read_records(forget_path)
    retain = read_records(retain_path) if retain_path else None
    if request.run and retain is not None and (Path(request.run) / "benchmark" / "world_facts.jsonl").is_file():
        # The target and the oracle replayed the world facts in training; so does the retain set here,
        # or every method (retrain most of all) would be measured forgetting them.
        retain = retain + read_records(Path(request.run) / "benchmark" / "world_facts.jsonl")
    if (method.needs_retain or method.starts_from_base) and not retain:
        raise ForgetkitError(f"method '{config.method}' needs a retain set (--retain FILE)")

    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    from forgetkit.prepare import resolve_device

    device = resolve_device(request.device)
    torch.manual_seed(config.train.seed)
    model, tokenizer = load_model(model_dir, adapter_dir, device=device)
    existing_adapter = adapter_dir is not None and method.trains_existing_adapter and config.mode == "lora"
    if adapter_dir is not None and not existing_adapter:
        model = model.merge_and_unload()  # the adapter becomes part of the frozen starting point

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    data = PairedData()
    if not method.starts_from_base:
        forget_set = tokenize_qa(tokenizer, forget, config.max_length, name="forget")
        data.forget = forget_set.examples
        if method.alternate_answers:
            alt = tokenize_qa(tokenizer, alternate_records(forget, method.alternate_answers), config.max_length,
                              name="alternate answers")
            by_index = {e["index"]: e for e in alt.examples}
            data.forget = [e for e in forget_set.examples if e["index"] in by_index]
            data.alternate = [by_index[e["index"]] for e in data.forget]
    if retain and (method.needs_retain or method.starts_from_base):
        data.retain = tokenize_qa(tokenizer, retain, config.max_length, name="retain").examples

    from forgetkit.methods import Reference, UnlearnContext

    context = UnlearnContext(model, tokenizer, data, forget, config, out, quiet, existing_adapter)
    phases: dict = {}
    phase_start = time.perf_counter()
    after_step = None
    if existing_adapter:  # the adapter that holds the knowledge is trained itself
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
    elif config.mode == "lora":
        lora, phases = method.place_adapter(context, config.lora)
        model = context.model = attach_lora(model, lora, kind=config.adapter)
        if config.adapter == "clipped":
            layers = bounded_layers(model, config.lora.bounded_modules)

            def after_step(_model) -> None:
                clip_adapters(layers, config.lora.clip_norm)
    else:
        model.requires_grad_(True)
    phases.update(method.start(context))
    before_training_s = time.perf_counter() - phase_start

    reference = Reference(model, frozen_copy=existing_adapter) if method.needs_reference else None

    def loss_fn(wrapped, batch):
        return method.loss(wrapped, batch, reference)

    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "config.json", {"unlearn": asdict(config), "config_hash": config_hash(config)})
    on_step = _periodic_eval(request, tokenizer) if request.eval_every else None
    epochs = method.train_steps(config.train.epochs)
    if epochs > 0:
        stats = train_loop(model, loss_fn, data, replace(config.train, epochs=epochs), pad, run_dir=out,
                           desc=f"unlearn ({config.method})", quiet=quiet, after_step=after_step, on_step=on_step)
    else:
        stats = TrainStats(0, 0, 0, float("nan"), float("nan"), 0.0, 0.0, "none",
                           sum(p.numel() for p in model.parameters() if p.requires_grad))
    phase_start = time.perf_counter()
    phases.update(method.finish(context))
    after_training_s = time.perf_counter() - phase_start
    if phases:  # a method with phases around training: they count in its time
        stats.wall_time_s += before_training_s + after_training_s
        phases.update({"before_training_s": before_training_s, "after_training_s": after_training_s})

    from forgetkit.models import save_model

    result_dir = out / ("adapter" if config.mode == "lora" else "model")
    if not main:  # the main process evaluates and writes the results
        return {}
    save_model(model, tokenizer, result_dir)
    summary = {"method": config.method, "mode": config.mode, **stats.to_dict(),
               "forget_examples": len(forget), "retain_examples": len(retain or [])}
    if phases:
        summary["phases"] = phases
    if request.evaluate:
        summary["eval"] = _evaluate(request, model, tokenizer, forget_path, out, quiet)
    ended = datetime.now(timezone.utc).isoformat(timespec="seconds")
    audit = {
        "tool": "forgetkit unlearn",
        "method": config.method,
        "config": asdict(config),
        "config_hash": config_hash(config),
        "model": {"path": str(model_dir), "hash": dir_hash(model_dir)},
        "adapter_in": {"path": str(adapter_dir), "hash": dir_hash(adapter_dir)} if adapter_dir else None,
        "forget": {"file": str(forget_path), "hash": records_hash(forget), "count": len(forget)},
        "retain": {"file": str(retain_path), "hash": records_hash(retain), "count": len(retain)} if retain else None,
        "origin": origin,
        "output": {"path": str(result_dir), "hash": dir_hash(result_dir)},
        "load": load_record(model_dir, adapter_dir, result_dir, in_place=existing_adapter, full=config.mode == "full"),
        "started": started,
        "ended": ended,
        "resumed_from_step": stats.resumed_from_step,
        "metrics": summary.get("eval"),
    }
    if "certificate" in phases:  # a method with a formal (ε, δ) guarantee
        audit["certificate"] = phases["certificate"]
    from forgetkit.audit.ledger import write_request

    write_request(out, audit, summary, request.ledger_path())
    _remove_checkpoint(out)
    return summary


def load_record(model_dir: Path, adapter_in: Path | None, result: Path, in_place: bool, full: bool) -> dict:
    """How to rebuild the unlearned model (``load_unlearned``): a model directory, an adapter merged
    into it first (the LoRA target a method trained a new adapter over), then the result's adapter."""
    if full:
        return {"model": str(result), "merge": None, "adapter": None}
    return {"model": str(model_dir), "merge": None if in_place or adapter_in is None else str(adapter_in),
            "adapter": str(result)}


def load_unlearned(out: str | Path, device: str = "cpu"):
    """``(model, tokenizer)``: the model an ``unlearn`` run in ``out`` produced, rebuilt from its audit record."""
    from forgetkit.adapters.loading import load_adapter
    from forgetkit.models import load_model

    path = Path(out) / "audit.json"
    try:
        load = json.loads(path.read_text(encoding="utf-8"))["load"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ForgetkitError(f"{path}: not a finished forgetkit unlearn run ({exc})") from None
    model, tokenizer = load_model(load["model"], load["merge"], device=device)
    if load["merge"]:
        model = model.merge_and_unload()
    if load["adapter"]:
        model = load_adapter(model, load["adapter"]).to(device)
        model.eval()
    return model, tokenizer


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


def _remove_checkpoint(out: Path) -> None:
    import shutil

    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    shutil.rmtree(out / "refine" / CHECKPOINT_DIR, ignore_errors=True)


def oracle_log_of(run: str | Path, split: str) -> dict | None:
    """The run's oracle evaluation log for the split, if there is one
    (``forgetkit eval --model RUN/oracle_SPLIT ... --out RUN/eval/oracle_SPLIT`` writes it)."""
    from forgetkit.eval.command import read_log

    oracle = Path(run) / "eval" / f"oracle_{split}"
    return read_log(oracle) if (oracle / "eval_log_aggregated.json").is_file() else None


def evaluate_into(out: Path, model, tokenizer, data, oracle_log: dict | None, quiet: bool, settings=None) -> dict:
    """Evaluate, write ``out/eval_log_aggregated.json`` and ``out/summary.json``, return the headline numbers
    an unlearning summary and its audit record keep."""
    from forgetkit.eval.evaluate import evaluate

    eval_log, summary = evaluate(model, tokenizer, data, settings, reference_model=None, oracle_log=oracle_log,
                                 quiet=quiet)
    write_json(out / "eval_log_aggregated.json", eval_log)
    write_json(out / "summary.json", summary)
    return {"forget_quality": summary.get("forget_quality"), "model_utility": summary.get("model_utility"),
            "mia_auc": summary.get("mia", {}).get("auc"), "forget": summary["sets"].get("forget"),
            "empirical_epsilon": summary.get("mia", {}).get("empirical_epsilon")}


def _periodic_eval(request: UnlearnRequest, tokenizer):
    """An ``on_step`` callback: every ``eval_every`` steps, Forget Quality and Model Utility from a quick
    evaluation (forget set, first 100 retain records, world facts; answers of up to 40 tokens)."""
    from forgetkit.eval.evaluate import EvalData, EvalSettings, benchmark_data, evaluate

    full = benchmark_data(Path(request.run) / "benchmark", request.split, retain_limit=100)
    data = EvalData(forget=full.forget, retain=full.retain, world_facts=full.world_facts)
    oracle_log = oracle_log_of(request.run, request.split)
    settings = EvalSettings(max_new_tokens=40, retain_limit=100, gradnorm=False)

    def on_step(step: int, model) -> dict | None:
        if step % request.eval_every:
            return None
        was_training = model.training
        _, summary = evaluate(model, tokenizer, data, settings, oracle_log=oracle_log, quiet=True)
        model.train(was_training)
        return {"forget_quality": summary.get("forget_quality"), "model_utility": summary.get("model_utility"),
                "forget_probability": summary["sets"]["forget"]["probability"]}

    return on_step


def _evaluate(request: UnlearnRequest, model, tokenizer, forget_path: Path, out: Path, quiet: bool) -> dict:
    from forgetkit.eval.evaluate import EvalData, benchmark_data

    if request.run:
        data = benchmark_data(Path(request.run) / "benchmark", request.split)
        oracle_log = oracle_log_of(request.run, request.split)
    else:
        data, oracle_log = EvalData(forget=read_records(forget_path)), None
    return evaluate_into(out / "eval", model, tokenizer, data, oracle_log, quiet)
