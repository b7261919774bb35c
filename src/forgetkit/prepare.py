"""``forgetkit prepare``: the starting point every unlearning run needs, built once and cached.

Stages, each in its own directory of the run directory, each written atomically and reused
when its key (the hash of its own config and of the stages it builds on) is unchanged:

1. ``benchmark/``  the synthetic benchmark (``forgetkit.data.synthetic``), and ``edits/``
                   its edit requests for each forget split (``{query,response}_<split>.jsonl``);
2. ``tokenizer/``  a byte-level BPE tokenizer trained on the benchmark's text;
3. ``base/``       a tiny causal LM pre-trained on world facts and generic people;
   or, with ``base_model: DIR`` (a local pretrained model, e.g. one ``forgetkit import-gguf``
   wrote), no tokenizer stage and a ``base/`` that is a float copy of DIR with its own tokenizer
   (chat template included): the run stays self-contained and its key records DIR's hash;
4. ``target/``     the base fine-tuned on all benchmark people (full weights, or a LoRA
                   adapter when ``target_mode=lora``);
5. ``oracle_<split>/`` the same recipe from the same base on the retain split only.

Every training records its wall time and peak memory in its ``stage.json``: the
denominators of all later cost ratios. ``summary.json`` holds greedy exact-match accuracy
of the target and the oracles on forget and holdout answers, the proof that memorisation
is real and that the oracle never saw the forget set.

``stage.json`` also records the fingerprint of the stage's weights (``weights_hash``, not part
of the key). A stage whose ``stage.json`` or weights no longer parse, or whose weights no longer
match that fingerprint, is set aside (``<stage>.damaged``, never deleted) and built again; so is
a damaged ``summary.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from forgetkit import checks
from forgetkit.adapters.lora import LoraSettings, attach_lora
from forgetkit.config import ADDED_SETTING, config_hash, load_config
from forgetkit.data.edits import EDIT_KINDS, benchmark_edits
from forgetkit.data.formatting import TokenizedSet, has_chat_template, pad_id, tokenize_qa, tokenize_text
from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of
from forgetkit.data.synthetic import SyntheticConfig, holdout_of, retain_of, write_benchmark
from forgetkit.data.user_splits import FORGET_NAME, DatasetSettings, UserSplits, split_user_data, write_user_benchmark
from forgetkit.device import resolve_device
from forgetkit.errors import ConfigError, require_positive
from forgetkit.eval.generation import exact_match, greedy_answers
from forgetkit.io import atomic_path, dir_hash, set_aside, write_json, write_jsonl
from forgetkit.locks import output_lock
from forgetkit.models import build_tiny_model, load_model, save_model, train_tokenizer
from forgetkit.runs import check_run_dir_format, write_run_record
from forgetkit.train import TRAINER_VERSION, TrainConfig, fine_tune

log = logging.getLogger("forgetkit")
TARGET_MODES = ("full", "lora")
FORGET_SPLITS = ("forget01", "forget05", "forget10")
EDITS_VERSION = 1  # bump when benchmark_edits changes
WEIGHTS = "**/*.safetensors"  # a stage's weights, fingerprinted in its stage.json (not in its key)


@dataclass
class ModelSettings:
    family: str = "llama"
    size: str = "small"
    vocab_size: int = 2048
    max_length: int = 64

    def __post_init__(self) -> None:
        require_positive(self, "vocab_size", "max_length")


@dataclass
class PrepareConfig:
    run_dir: str = "runs/small"
    seed: int = 0
    device: str = "auto"
    # A local pretrained model directory to fine-tune instead of the tiny base trained here
    # (model and pretrain are then unused; a relative path is taken from the working directory).
    base_model: str = ""
    # A user's own QA dataset (``prepare --data PATH --group FIELD``) instead of the built-in benchmark: it needs
    # base_model; narratives, world-fact replay and the edit requests belong to the built-in benchmark only.
    data: DatasetSettings = field(default_factory=DatasetSettings, metadata=ADDED_SETTING)
    # Refuse a base model whose tokenizer has no chat template (else such a model is prompted plainly, and said so).
    require_chat_template: bool = field(default=False, metadata=ADDED_SETTING)
    benchmark: SyntheticConfig = field(default_factory=SyntheticConfig)
    model: ModelSettings = field(default_factory=ModelSettings)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    target_mode: str = "full"
    target: TrainConfig = field(default_factory=TrainConfig)
    target_lora: LoraSettings = field(default_factory=LoraSettings)
    train_narratives: bool = True
    # World facts are the utility set: pre-training repeats them so the base knows them, and the
    # fine-tunes replay them once per epoch so a tiny model keeps them (target and oracle alike).
    pretrain_world_facts_repeat: int = 4
    train_world_facts: bool = True
    oracle_splits: list[str] = field(default_factory=lambda: ["forget10"])
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        if self.target_mode not in TARGET_MODES:
            raise ConfigError(f"target_mode must be one of {', '.join(TARGET_MODES)}, got '{self.target_mode}'")
        if self.pretrain_world_facts_repeat < 1:
            raise ConfigError("pretrain_world_facts_repeat must be at least 1")
        for split in self.oracle_splits if not self.data.path else ():  # a user's splits: checked by prepare()
            if split not in FORGET_SPLITS:
                raise ConfigError(f"oracle_splits: unknown split '{split}' (known: {', '.join(FORGET_SPLITS)})")
        if self.data.path and not self.base_model:
            raise ConfigError("data: a user's dataset needs base_model=DIR (the pretrained model to fine-tune; the "
                              "tiny base is trained on the built-in benchmark only)")

    @property
    def user_data(self) -> bool:
        return bool(self.data.path)

    @property
    def trains_narratives(self) -> bool:
        """Whether the fine-tunes train on the people's narratives (the built-in benchmark's only)."""
        return self.train_narratives and not self.user_data

    @property
    def replays_world_facts(self) -> bool:
        """Whether the fine-tunes replay world facts (the built-in benchmark's only: a user's dataset has none)."""
        return self.train_world_facts and not self.user_data


def load_prepare_config(name_or_path: str, overrides: list[str] | None = None) -> PrepareConfig:
    return load_config(name_or_path, overrides, PrepareConfig)


class Stages:
    """Runs each stage at most once per key; an interrupted stage leaves nothing behind."""

    def __init__(self, run_dir: Path, quiet: bool) -> None:
        self.run_dir = run_dir
        self.quiet = quiet
        self.records: dict[str, dict] = {}

    def run(self, name: str, settings: object, parents: list[str], build: Callable[[Path], dict]) -> dict:
        key = config_hash({"settings": settings, "parents": [self.records[p]["key"] for p in parents]})
        path = self.run_dir / name
        record = self._cached(path, key)
        if record is not None:
            self._say(f"[{name}] cached ({path})")
            self.records[name] = record
            return record
        self._say(f"[{name}] building ...")
        start = time.perf_counter()
        with atomic_path(path) as tmp:
            tmp.mkdir()
            record = {"stage": name, "key": key, **build(tmp), "weights_hash": dir_hash(tmp, WEIGHTS)}
            record["stage_wall_time_s"] = round(time.perf_counter() - start, 2)
            write_json(tmp / "stage.json", record)
        self._say(f"[{name}] done in {record['stage_wall_time_s']:.1f}s")
        self.records[name] = record
        return record

    @staticmethod
    def _cached(path: Path, key: str) -> dict | None:
        """The record of the stage built at ``path`` with ``key``, if it is intact: its ``stage.json`` and weights
        parse, and the weights match the fingerprint it recorded (a stage built before fingerprints were
        recorded has none to match). None when there is no such stage; a damaged one is set aside first."""
        if not (path / "stage.json").is_file():
            return None
        reason = checks.damage(path, ("stage.json",))
        record = {} if reason else checks.json_object(path / "stage.json")
        if not reason and record.get("key") != key:  # built with other settings: built again over it
            return None
        reason = reason or checks.damage(path, weights=WEIGHTS, recorded=record.get("weights_hash"),
                                         record="stage.json")
        if reason:
            set_aside(path, reason)
            return None
        return record

    def _say(self, text: str) -> None:
        if not self.quiet:
            print(text, flush=True)


def _concat(*sets: TokenizedSet) -> TokenizedSet:
    out = TokenizedSet()
    for s in sets:
        out.examples.extend(s.examples)
        out.n_truncated += s.n_truncated
        out.n_dropped += s.n_dropped
    return out


def prepare(config: PrepareConfig, quiet: bool = False) -> dict:
    """Build (or reuse) every stage of ``config`` and return the summary."""
    run_dir = checks.output_path(config.run_dir, "run_dir", [config.base_model or None])
    if config.base_model:
        checks.model_dir(config.base_model, "base_model")
        _check_chat_template(config)
    splits = _check_user_data(config) if config.user_data else None
    check_run_dir_format(run_dir)
    with output_lock(run_dir, "run_dir"):  # one prepare per run directory at a time
        return _build(config, run_dir, quiet, splits)


def _check_user_data(config: PrepareConfig) -> UserSplits:
    """A user's dataset, read and split before any work (a bad record is refused with nothing written), with
    every split an oracle is asked for."""
    splits = split_user_data(config.data)
    present = sorted(s for s in splits.files if FORGET_NAME.fullmatch(s))
    for split in config.oracle_splits:
        if split not in present:
            raise ConfigError(f"oracle_splits: no split '{split}' in {config.data.path} (present: "
                              f"{', '.join(present)})")
    return splits


def _check_chat_template(config: PrepareConfig) -> None:
    """A base model without a chat template is prompted plainly (``Question: … Answer: …``), and said so; or
    refused, before any work, when the recipe asks for a template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model, local_files_only=True)
    if has_chat_template(tokenizer):
        return
    message = f"{config.base_model}: its tokenizer has no chat template"
    if config.require_chat_template:
        raise ConfigError(f"{message}, and require_chat_template is set (use a chat model, or unset it to prompt "
                          "plainly)")
    log.warning("%s: prompts are formatted plainly (Question: … / Answer: …)", message)


def _build(config: PrepareConfig, run_dir: Path, quiet: bool, splits: UserSplits | None) -> dict:
    """Every stage of ``config`` in ``run_dir`` (checked and locked by :func:`prepare`), then the summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_record(run_dir)
    device = resolve_device(config.device)
    stages = Stages(run_dir, quiet)
    bench_dir = run_dir / "benchmark"

    def build_benchmark(tmp: Path) -> dict:
        manifest = write_benchmark(config.benchmark, tmp / "data")
        for item in (tmp / "data").iterdir():
            item.rename(tmp / item.name)
        (tmp / "data").rmdir()
        return {"manifest": manifest}

    if config.user_data:
        stages.run("benchmark", {"user_data": config.data.key(splits.source_hash)}, [],
                   lambda tmp: {"manifest": write_user_benchmark(config.data, tmp, splits)})
    else:
        stages.run("benchmark", config.benchmark, [], build_benchmark)

    def split(name: str, kind: str = "qa"):
        return read_records(bench_dir / f"{name}.jsonl", kind=kind)

    def build_edits(tmp: Path) -> dict:
        counts = {}
        for forget in FORGET_SPLITS:
            for kind in EDIT_KINDS:
                edits = benchmark_edits(split(forget), kind)
                write_jsonl(tmp / f"{kind}_{forget}.jsonl", [e.to_dict() for e in edits])
                counts[f"{kind}_{forget}"] = len(edits)
        return {"counts": counts}

    if not config.user_data:  # edit requests are derived from the built-in benchmark's people
        stages.run("edits", EDITS_VERSION, ["benchmark"], build_edits)

    def build_tokenizer(tmp: Path) -> dict:
        texts = []
        for name in ("pretrain", "full", "holdout10", "world_facts"):
            for r in split(name):
                texts.append(f"Question: {r.question}\nAnswer: {r.answer}")
                texts.extend(t for t in (r.paraphrased_answer, r.paraphrased_question, r.vague_answer) if t)
                texts.extend(r.perturbed_answer)
        texts.extend(r.text for r in split("narratives", "text"))
        tokenizer = train_tokenizer(texts, config.model.vocab_size)
        tokenizer.save_pretrained(tmp)
        return {"vocab_size": len(tokenizer), "texts": len(texts)}

    if config.base_model:
        _copy_pretrained_base(config, stages, quiet)

    else:
        _train_tiny_base(config, stages, split, build_tokenizer, quiet)

    _fine_tuned_stages(config, stages, run_dir, split, quiet)
    return _summary(config, run_dir, stages, device, split)


def _fine_tuned_stages(config: PrepareConfig, stages: Stages, run_dir: Path, split, quiet: bool) -> None:
    """The ``target`` stage (the base fine-tuned on every person, LoRA or full) and an ``oracle_<split>`` stage
    per forget split (the same recipe on its retain people): one recipe, so retraining is the same job."""
    lora = config.target_lora  # the target adapter is plain LoRA: only these fields shape it (and the stage key)
    lora_key = {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout, "target_modules": lora.target_modules}
    if config.target_mode == "lora":
        lora_key["init_seed"] = config.seed  # the adapter's initialisation is seeded (stage.json of older runs: not)
    recipe = {"mode": config.target_mode, "train": config.target, "lora": lora_key,
              "narratives": config.trains_narratives, "world_facts": config.replays_world_facts}
    # a trained tiny base descends from the benchmark already; a pretrained one does not, so name it
    parents = ["base", "benchmark"] if config.base_model else ["base"]
    stages.run("target", {**recipe, "on": "full"}, parents, _fine_tune_on(config, run_dir, split, "full", quiet))
    for forget in config.oracle_splits:
        stages.run(f"oracle_{forget}", {**recipe, "on": retain_of(forget)}, parents,
                   _fine_tune_on(config, run_dir, split, retain_of(forget), quiet))


def _fine_tune_on(config: PrepareConfig, run_dir: Path, split, qa_split: str, quiet: bool) -> Callable[[Path], dict]:
    """The build of a stage that fine-tunes the base on ``qa_split`` (with its people's narratives and the
    replayed world facts, as the config says)."""
    max_len = config.model.max_length

    def build(tmp: Path) -> dict:
        model, tokenizer = load_model(run_dir / "base")
        if config.target_mode == "lora":
            torch.manual_seed(config.seed)  # the adapter's initialisation: the same whatever ran before
            model = attach_lora(model, config.target_lora)
        qa = split(qa_split)
        data = tokenize_qa(tokenizer, qa, max_len, name=qa_split)
        if config.trains_narratives:
            people = {group_of(r.id) for r in qa}
            texts = [r for r in split("narratives", "text") if group_of(r.id) in people]
            data = _concat(data, tokenize_text(tokenizer, texts, max_len, name=f"{qa_split} narratives"))
        world = None
        if config.replays_world_facts:  # the replay set when the benchmark keeps one apart from the utility set
            world = "world_replay" if config.benchmark.world_replay else "world_facts"
            data = _concat(data, tokenize_qa(tokenizer, split(world), max_len, name=world))
        stats = fine_tune(model, data, config.target, pad_id(tokenizer), desc=f"fine-tune on {qa_split}",
                          quiet=quiet, setting="target")
        save_model(model, tokenizer, tmp / "model")
        _flatten(tmp)
        return {"mode": config.target_mode, "trained_on": qa_split, "world_facts": world,
                "train": stats.to_dict(),
                "examples": len(data), "truncated": data.n_truncated}
    return build


def _summary(config: PrepareConfig, run_dir: Path, stages: Stages, device, split) -> dict:
    """The run's memorisation summary: reused while every stage and the generation length are as it measured
    them, else measured again and written."""
    summary_file = run_dir / "summary.json"
    summary = checks.cached_object(summary_file)
    if summary is not None:  # every stage as the summary measured it: reuse (minutes of generation on a real model)
        keys = {name: rec["key"] for name, rec in stages.records.items()}
        if summary.get("stage_keys") == keys and summary["config"].get("max_new_tokens") == config.max_new_tokens:
            return summary
    summary = _memorisation_summary(config, run_dir, stages, device, split)
    write_json(summary_file, summary)
    return summary


def _train_tiny_base(config: PrepareConfig, stages: Stages, split, build_tokenizer, quiet: bool) -> None:
    """The ``tokenizer`` and ``base`` stages of the built-in benchmark: a tiny model trained here."""
    run_dir = stages.run_dir
    max_len = config.model.max_length
    stages.run("tokenizer", config.model.vocab_size, ["benchmark"], build_tokenizer)

    def build_base(tmp: Path) -> dict:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer", local_files_only=True)
        model = build_tiny_model(tokenizer, config.model.family, config.model.size, seed=config.seed)
        pretrain = split("pretrain")
        world = [r for r in pretrain if r.id.startswith("world-")]
        data = tokenize_qa(tokenizer, pretrain + world * (config.pretrain_world_facts_repeat - 1), max_len,
                           name="pretrain")
        stats = fine_tune(model, data, config.pretrain, pad_id(tokenizer), desc="pre-train base", quiet=quiet,
                           setting="pretrain")
        save_model(model, tokenizer, tmp / "model")
        _flatten(tmp)
        params = sum(p.numel() for p in model.parameters())
        return {"parameters": params, "train": stats.to_dict(), "examples": len(data)}

    stages.run("base", {"model": config.model, "pretrain": config.pretrain, "seed": config.seed,
                        "world_facts_repeat": config.pretrain_world_facts_repeat, "trainer": TRAINER_VERSION},
               ["tokenizer"], build_base)


def _copy_pretrained_base(config: PrepareConfig, stages: Stages, quiet: bool) -> None:
    """The ``base`` stage from a pretrained model directory: checked, copied as float safetensors
    with its tokenizer; its key holds the source directory's content hash, so a changed source
    rebuilds everything after it."""
    source = Path(config.base_model)  # checked by prepare() before any stage
    fingerprint = dir_hash(source)

    def build(tmp: Path) -> dict:
        model, tokenizer = load_model(source)
        save_model(model, tokenizer, tmp / "model")
        _flatten(tmp)
        params = sum(p.numel() for p in model.parameters())
        return {"pretrained": str(source), "source_hash": fingerprint, "parameters": params,
                "model_type": model.config.model_type, "chat_template": has_chat_template(tokenizer)}

    stages.run("base", {"pretrained": fingerprint}, [], build)


def _flatten(tmp: Path) -> None:
    """Move ``tmp/model/*`` up into ``tmp`` so a stage directory is itself a model directory."""
    for item in (tmp / "model").iterdir():
        item.rename(tmp / item.name)
    (tmp / "model").rmdir()


def load_stage_model(run_dir: Path, stage: str, mode: str, device: torch.device):
    """The model a stage produced: a full model directory, or base + the stage's LoRA adapter."""
    if mode == "lora" and stage != "base":
        model, tok = load_model(run_dir / "base", adapter=run_dir / stage)
    else:
        model, tok = load_model(run_dir / stage)
    return model.to(device), tok


def _memorisation_summary(config: PrepareConfig, run_dir: Path, stages: Stages, device, split) -> dict:
    """Greedy exact match of target and oracles on forget and holdout answers."""
    models = ["target"] + [f"oracle_{s}" for s in config.oracle_splits]
    accuracy: dict[str, dict[str, float]] = {}
    for stage in models:
        model, tokenizer = load_stage_model(run_dir, stage, config.target_mode, device)
        accuracy[stage] = {}
        for forget in config.oracle_splits or ["forget10"]:  # without oracles, the target on forget10's sets
            for name in (forget, holdout_of(forget), retain_of(forget), "world_facts"):
                if name in accuracy[stage] or not (run_dir / "benchmark" / f"{name}.jsonl").is_file():
                    continue  # done, or not in a user's dataset
                records = split(name)[: 200]  # retain sets are large: the first 200 suffice
                preds = greedy_answers(model, tokenizer, [r.question for r in records], config.max_new_tokens)
                hits = exact_match(preds, [r.answer for r in records])
                accuracy[stage][name] = round(sum(hits) / len(hits), 4)
        del model
    costs = {
        name: {k: rec["train"][k] for k in ("wall_time_s", "peak_memory_mb", "memory_kind", "tokens_per_s",
                                           "steps", "trainable_parameters")}
        for name, rec in stages.records.items() if "train" in rec
    }
    return {
        "config": asdict(config),
        "exact_match": accuracy,
        "training_cost": costs,
        "stage_keys": {name: rec["key"] for name, rec in stages.records.items()},
        "note": "exact match of greedy answers; retain accuracy on its first 200 records",
    }


def format_summary(summary: dict) -> str:
    """A short table of what ``prepare`` built and what the models know."""
    acc = summary["exact_match"]
    columns = list(next(iter(acc.values())).keys())
    width = max(len(c) for c in columns) + 2
    lines = ["Greedy exact-match accuracy (fraction of answers reproduced exactly):",
             f"{'model':<18}" + "".join(f"{c:>{width}}" for c in columns)]
    for model, row in acc.items():
        lines.append(f"{model:<18}" + "".join(f"{row[c]:>{width}.3f}" for c in columns))
    lines.append("")
    lines.append("Training cost (the denominators of later cost ratios):")
    lines.append(f"{'stage':<18}{'wall s':>10}{'peak MB':>10}{'tokens/s':>10}{'trainable':>12}")
    for name, c in summary["training_cost"].items():
        lines.append(f"{name:<18}{c['wall_time_s']:>10.1f}{c['peak_memory_mb']:>10.0f}{c['tokens_per_s']:>10.0f}"
                     f"{c['trainable_parameters']:>12,}")
    return "\n".join(lines)
