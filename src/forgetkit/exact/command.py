"""``forgetkit shard-train`` and deletion from sharded adapters (``forgetkit unlearn --method sharded_exact``).

``shard-train`` trains the shards (:mod:`forgetkit.exact.sharded`) on a prepared run's training set (its
people, with the world facts shared by every shard) or on user files, and can evaluate the served model.
A deletion request copies the shard directory into ``OUT/shards``, retrains there only the shards that held
the records, and writes an audit record (guarantee: exact) to ``OUT/audit.json`` and the ledger. The shard
directory remembers the training file (path and hash) and the hashes of every record deleted so far, so
successive requests compose; it never holds a deleted record's text.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from forgetkit import checks
from forgetkit.config import config_hash
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord, records_hash
from forgetkit.errors import ForgetkitError
from forgetkit.eval.command import evaluate_into, oracle_log_of
from forgetkit.eval.result import EvalHeadline
from forgetkit.eval.sets import benchmark_data
from forgetkit.eval.settings import EvalSettings
from forgetkit.exact.sharded import (
    MANIFEST,
    SERVING,
    ShardConfig,
    delete,
    load_sharded,
    read_manifest,
    shard_of,
    shard_train,
)
from forgetkit.io import write_json
from forgetkit.locks import output_lock
from forgetkit.registry import EXACT, SHARDED, register_unlearner, unlearner
from forgetkit.request import AuditRecord, Fingerprint, RecordSet, UnlearnRequest, UnlearnResult, finish, now
from forgetkit.runs import PreparedRun
from forgetkit.summaries import ShardedSummary

SHARDED_METHOD = "sharded_exact"
SHARD_WEIGHTS = "shard_*/*.safetensors"


@dataclass
class ShardedParams(ShardConfig):
    """``sharded_exact``'s parameters: the shard set's settings (a bench trains the set from them; a request
    deletes from the set given as ``--adapter``) and how the set is served after the deletion."""

    serving: str = "route"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.serving not in SERVING:
            raise ForgetkitError(f"sharded_exact: params.serving must be one of {', '.join(SERVING)}, "
                                 f"got '{self.serving}'")

    def shard_config(self) -> ShardConfig:
        return ShardConfig(**{f.name: getattr(self, f.name) for f in fields(ShardConfig)})


register_unlearner(SHARDED_METHOD, ShardedParams, SHARDED, EXACT,
                   "sharded exact unlearning: retrain only the shard adapters that held the records "
                   "(forgetkit shard-train)")


@dataclass
class ShardTrainRequest:
    out: str
    config: ShardConfig = field(default_factory=ShardConfig)
    run: str | None = None  # a prepared run: its base, its people (full.jsonl), its world facts shared
    model: str | None = None
    data: str | None = None
    shared: str | None = None  # records every shard trains on and no request deletes
    evaluate: bool = False
    split: str = "forget10"
    serving: tuple[str, ...] = ("route",)


def _sources(request: ShardTrainRequest) -> tuple[Path, Path, Path | None]:
    """The base model, the training file and the shared file; each checked, and the output with them."""
    if request.run:
        run = PreparedRun(request.run, stages=("base",), splits=(request.split,) if request.evaluate else ())
        base, data, shared = run.root / "base", run.split_file("full"), run.replayed_world_facts_file()
        inputs = run.stages()
        containers = [run.root]
    else:
        if not request.model or not request.data:
            raise ForgetkitError("shard-train: give --model DIR and --data FILE (and --shared FILE), or --run DIR")
        base, data = checks.model_dir(request.model), checks.input_file(request.data, "--data")
        shared = checks.input_file(request.shared, "--shared") if request.shared else None
        inputs, containers = [base, data, shared], []
    checks.output_path(request.out, "--out", inputs, containers=containers)
    return base, data, shared


def run_shard_train(request: ShardTrainRequest, quiet: bool = False) -> dict:
    """Train every shard into ``request.out`` (resumable: a finished shard is kept), return the summary."""
    for mode in request.serving:
        if mode not in SERVING:
            raise ForgetkitError(f"shard-train: --serving must be among {', '.join(SERVING)}, got '{mode}'")
    if request.evaluate and not request.run:
        raise ForgetkitError("shard-train: --eval needs --run (the benchmark's evaluation sets)")
    base, data_file, shared_file = _sources(request)
    records = read_records(data_file)
    shared = read_records(shared_file) if shared_file else []
    out = Path(request.out)
    start = time.perf_counter()
    about = {"data": {"file": str(data_file.resolve()), "hash": records_hash(records), "count": len(records)},
             "shared_file": str(shared_file.resolve()) if shared_file else None, "deleted": []}
    with output_lock(out, "--out"):
        manifest = shard_train(base, records, out, request.config, shared, quiet=quiet, about=about)
        summary = {"shards": len(manifest["shards"]), "records": len(records), "shared": len(shared),
                   "wall_time_s": time.perf_counter() - start,
                   "train_time_s": sum(s["wall_time_s"] for s in manifest["shards"])}
        if request.evaluate:
            summary["routing_accuracy"] = routing_accuracy(out, records)
            run = PreparedRun(request.run)
            summary["eval"] = {mode: evaluate_sharded(out, run, request.split, mode, out / "eval" / mode,
                                                      quiet).to_dict() for mode in request.serving}
        write_json(out / "summary.json", summary)
    return summary


def routing_accuracy(shards: Path, records: list[QARecord]) -> dict:
    """The share of the training questions (and of their paraphrases, where records have them) that the router
    sends to the shard that trained on them."""
    from forgetkit.exact.sharded import route
    from forgetkit.models import load_model

    manifest = read_manifest(shards)
    model, tokenizer = load_model(manifest["base"])
    out = {}
    for field_name in ("question", "paraphrased_question"):
        chosen = [r for r in records if getattr(r, field_name, None)]
        if chosen:
            got = route(shards, model, tokenizer, [getattr(r, field_name) for r in chosen])
            right = sum(g == shard_of(manifest, r) for g, r in zip(got, chosen, strict=True))
            out[field_name] = right / len(chosen)
    return out


def evaluate_sharded(shards: Path, run: PreparedRun, split: str, serving: str, out: Path,
                     quiet: bool) -> EvalHeadline:
    """Every metric of ``forgetkit eval`` on the served shards (GradNorm aside), Forget Quality against the
    run's oracle log where there is one; the logs go to ``out``."""
    model, tokenizer = load_sharded(shards, serving)
    return evaluate_into(out, model, tokenizer, benchmark_data(run.benchmark, split), oracle_log_of(run, split),
                         quiet, EvalSettings(gradnorm=False)).headline()


def _current_training_set(manifest: dict, where: Path) -> tuple[list[QARecord], list[QARecord]]:
    """The records the shards now stand for: the training file less every deletion so far; and the shared set."""
    data = manifest.get("data") or {}
    if not data.get("file"):
        raise ForgetkitError(f"{where / MANIFEST}: field 'data' names no training file (train with forgetkit "
                             "shard-train)")
    records = read_records(data["file"])
    if records_hash(records) != data["hash"]:
        raise ForgetkitError(f"{data['file']}: changed since forgetkit shard-train (hash {records_hash(records)}, "
                             f"expected {data['hash']}); the shards cannot be retrained exactly")
    gone = set(manifest.get("deleted", []))
    shared_file = manifest.get("shared_file")
    shared = read_records(shared_file) if shared_file else []
    return [r for r in records if r.content_hash() not in gone], shared


def run_shard_delete(request: UnlearnRequest, quiet: bool = False) -> UnlearnResult:
    """A deletion request from the shard set given as ``--adapter`` (the output of ``forgetkit shard-train``)."""
    if not request.adapter:
        raise ForgetkitError("sharded_exact: give --adapter DIR, the output of forgetkit shard-train")
    source = Path(request.adapter)
    manifest = read_manifest(source)
    params = unlearner(SHARDED_METHOD).build({"serving": "route", **request.config.params})
    if request.run:
        forget_file = request.prepared_run().forget_file(request.split)
        forget = read_records(forget_file)
    elif request.forget or request.forget_records is not None:
        forget_file = Path(request.forget) if request.forget else None
        forget = read_records(forget_file) if forget_file else request.forget_records
    else:
        raise ForgetkitError("sharded_exact: give --forget FILE (or --run DIR --split NAME)")
    strangers = [r.id for r in forget if shard_of(manifest, r) is None]
    if strangers:
        raise ForgetkitError(f"{forget_file or 'the forget records'}: record '{strangers[0]}' (field id) belongs to "
                             f"no shard of {source}")
    records, shared = _current_training_set(manifest, source)
    started = now()
    out = Path(request.out)
    result, partial = out / "shards", out / "shards.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # a shard set aside as damaged (shard_<i>.damaged) is not part of the set
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns("eval", "summary.json", "*.damaged", "*.damaged.*"))
    report = delete(partial, records, forget, shared, quiet=quiet)
    shutil.rmtree(result, ignore_errors=True)
    partial.rename(result)
    remaining = [r for r in records if r.content_hash() not in {f.content_hash() for f in forget}]
    summary = ShardedSummary(method=SHARDED_METHOD, mode="lora", **report, forget_examples=len(forget),
                             retain_examples=len(remaining), shards=len(manifest["shards"]),
                             share_retrained=len(report["retrained"]) / len(manifest["shards"]))
    if request.evaluate:
        if not request.run:
            raise ForgetkitError("sharded_exact: --eval needs --run (the benchmark's evaluation sets)")
        summary.eval = evaluate_sharded(result, request.prepared_run(), request.split, params.serving,
                                           out / "eval", quiet)
    config = {**asdict(request.config), "shards": manifest["config"]}
    audit = AuditRecord(method=SHARDED_METHOD, config=config, config_hash=config_hash(request.config),
                        model=Fingerprint.of(Path(manifest["base"])), forget=RecordSet.of(forget_file, forget),
                        output=Fingerprint.of(result, SHARD_WEIGHTS), started=started, guarantee=EXACT,
                        adapter_in=Fingerprint.of(source, SHARD_WEIGHTS),
                        retain=RecordSet.of(manifest["data"]["file"], remaining),
                        details={"retrained_shards": report["retrained"], "untouched_shards": report["untouched"]})
    return finish(request, audit, summary)
