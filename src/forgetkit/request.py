"""One unlearning request, the unit every command and benchmark is built from, and its typed result.

A request says what to forget (a file, a prepared run's split, or records in memory), from which model
(and adapter), what to keep, and where to write. :func:`check_request` refuses bad input before any work;
:func:`resolve_inputs` turns a request into the model, adapter and record sets every kind of unlearner
starts from; :func:`finish` writes what every kind leaves behind (``audit.json``, its ledger row,
``summary.json``, in that order) and returns the :class:`UnlearnResult`. The algorithms (``methods/``,
``editors/``, ``exact/``) sit above this layer; ``forgetkit.unlearn`` picks one from the registry.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from forgetkit import checks
from forgetkit.adapters.lora import ADAPTER_KINDS, LoraSettings
from forgetkit.audit.ledger import LEDGER_FILE, check_ledger, write_request
from forgetkit.config import (
    ADDED_SETTING,
    apply_overrides,
    build,
    config_hash,
    config_path,
    read_yaml,
    set_dotted,
    shipped_configs,
)
from forgetkit.data.edits import EDIT_KINDS
from forgetkit.data.readers import find_overlap, read_records, refuse_overlap
from forgetkit.data.records import QARecord, records_hash
from forgetkit.data.twins import counterfactual_twins, twin_groups
from forgetkit.errors import ConfigError, ForgetkitError, SettingError, require_positive
from forgetkit.eval.calibration import UNTIL, CriterionSettings, auc_tolerance, calibration_needed
from forgetkit.eval.settings import EvalSettings
from forgetkit.io import dir_hash
from forgetkit.models.latent import AdversarySettings
from forgetkit.registry import CERTIFIED, EMPIRICAL
from forgetkit.runs import PreparedRun, check_run, run_stages
from forgetkit.summaries import RequestSummary, read_summary
from forgetkit.train import TrainConfig

MODES = ("lora", "full")


@dataclass
class UnlearnConfig:
    method: str = "graddiff"
    params: dict = field(default_factory=dict)  # the method's hyper-parameters
    mode: str = "lora"
    adapter: str | None = None  # lora, sine or clipped (LoRA mode); None: the method's default
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=5, batch_size=16, lr=1e-3))
    max_length: int = 128
    # oracle-free stopping (gradient methods): "indistinguishable" stops when the forget set cannot be told from
    # a calibration set the model never trained on; train.epochs is then the most the run may take
    until: str | None = field(default=None, metadata=ADDED_SETTING)
    criterion: CriterionSettings = field(default_factory=CriterionSettings, metadata=ADDED_SETTING)
    # latent adversarial unlearning (gradient methods): the forget term under a residual-stream attacker
    adversary: AdversarySettings = field(default_factory=AdversarySettings, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        if self.until is not None and self.until not in UNTIL:
            raise SettingError("until", f"must be one of {', '.join(UNTIL)}, got '{self.until}'")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        if self.adapter is not None and self.adapter not in ADAPTER_KINDS:
            raise ConfigError(f"adapter must be one of {', '.join(ADAPTER_KINDS)}, got '{self.adapter}'")
        require_positive(self, "max_length")


def recipe_config(method: str | None, recipe: str | None = None, overrides: list[str] = (),
                  values: dict | None = None, where: str = "") -> UnlearnConfig:
    """The one way a config is made from a recipe, for the CLI and the bench alike: the recipe named (a shipped
    name or a path; default: the method's shipped one, if there is one), then ``key=value`` overrides as typed on
    a command line, then typed ``values``; the method last. Errors name the recipe file, or ``where``."""
    name = recipe or (method if method and method in shipped_configs("unlearn") else None)
    path = config_path(name, "unlearn") if name else None
    try:
        # the recipe built first, so that a block it leaves out keeps UnlearnConfig's defaults for it (an override
        # of train.seed must not turn the 5 epochs of UnlearnConfig's train into TrainConfig's 1)
        data = asdict(build(UnlearnConfig, read_yaml(path) if path else {}))
        data = apply_overrides(data, list(overrides))
        for key, value in {**(values or {}), **({"method": method} if method else {})}.items():
            set_dotted(data, key, value)
        return build(UnlearnConfig, data, where)
    except ConfigError as exc:
        if where or path is None:
            raise
        raise ConfigError(f"{path.name}: {exc}") from None


@dataclass
class UnlearnRequest:
    """Inputs by path (``--model``, ``--forget`` …, or ``--run`` and ``--split``), or the forget and retain
    records in memory (``forget_records``, ``retain_records``: a caller that has them, like the bench's
    sequential attack, passes them instead of writing files). The config is never changed by a run."""

    out: str
    config: UnlearnConfig
    model: str | None = None
    adapter: str | None = None
    forget: str | None = None
    retain: str | None = None
    run: str | None = None  # a prepared run directory (built-in benchmark)
    split: str = "forget10"
    evaluate: bool = False
    eval_settings: EvalSettings = field(default_factory=EvalSettings)  # how --eval evaluates the result
    eval_every: int = 0  # with --run: Forget Quality and Model Utility every N steps, into the step log
    # eval_every's Forget Quality is taken against this oracle evaluation directory (default: RUN/eval/oracle_SPLIT)
    oracle_log: str | None = None
    device: str = "auto"
    edits: str | None = None  # closed-form editors: an edit file (or, with --run, "query" / "response")
    ledger: str | None = None  # the audit ledger (SQLite); None: RUN/ledger.sqlite, else beside --out
    forget_records: list[QARecord] | None = None
    retain_records: list[QARecord] | None = None
    calibration: str | None = None  # never-trained examples like the forget set's (--until); with --run: the run's
    calibration_records: list[QARecord] | None = None
    allow_overlap: bool = False  # --allow-overlap: forget records in the retain or calibration set are accepted

    def ledger_path(self) -> Path:
        return default_ledger(self.ledger, self.run, self.out)

    def prepared_run(self, stages: tuple[str, ...] = ()) -> PreparedRun:
        return PreparedRun(self.run, stages=stages, splits=(self.split,))


def default_ledger(ledger: str | None, run: str | None, out: str | None) -> Path:
    """The ledger a request is recorded in (and ``forgetkit audit`` reads): ``--ledger``, else the prepared
    run's ``ledger.sqlite``, else the one beside the request's output directory (``forgetkit audit``, which has
    none: the working directory's)."""
    if ledger:
        return Path(ledger)
    if run:
        return Path(run) / LEDGER_FILE
    return Path(out).resolve().parent / LEDGER_FILE if out else Path(LEDGER_FILE)


AUTO_CALIBRATION = "auto"  # --calibration auto: the never-seen reference built from the forget set (data.twins)


def check_request(request: UnlearnRequest, adapter_is_shard_set: bool = False) -> None:
    """What every kind of request is checked for before any work: its inputs exist and open, its output
    can be written and is inside none of them, its ledger is a ledger. Nothing is written."""
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
        if request.adapter and not adapter_is_shard_set:
            checks.adapter_dir(request.adapter)
        for role in ("forget", "retain"):
            if getattr(request, role):
                checks.input_file(getattr(request, role), role)
    if request.calibration or request.calibration_records is not None:
        if request.config.criterion.reference == "twins":
            raise ConfigError("give --calibration FILE (never-trained examples) or criterion.reference=twins "
                              "(--calibration auto: twins of the forget records), not both")
        if request.calibration:
            inputs.append(checks.input_file(request.calibration, "calibration"))
    checks.output_path(request.out, "--out", inputs, containers=containers)
    check_ledger(request.ledger_path())


@dataclass
class RequestInputs:
    """A request resolved: the model to start from (and the adapter on it), the record sets, their files
    (None for records given in memory) and where they came from (the prepared run's stage)."""

    model: Path
    adapter: Path | None
    forget: list[QARecord]
    forget_file: Path | None
    retain: list[QARecord] | None
    retain_file: Path | None
    origin: dict

    def forget_set(self) -> RecordSet:
        return RecordSet.of(self.forget_file, self.forget)

    def retain_set(self) -> RecordSet | None:
        return RecordSet.of(self.retain_file, self.retain) if self.retain else None


def resolve_inputs(request: UnlearnRequest, starts_from_base: bool = False) -> RequestInputs:
    """The model, adapter and record sets of a request. With ``--run``: the target (or the base, for an
    unlearner that starts from it), the split, and its retain split with the replayed world facts (the
    target and the oracle replayed them in training, so a retain set does too, or every method, retraining
    most of all, would be measured forgetting them)."""
    if request.run:
        start = "base" if starts_from_base else "target"
        run = request.prepared_run(stages=(start,))
        ref = run.model_of(start)
        stage = run.stage(start)
        inputs = RequestInputs(ref.model, ref.adapter, read_records(run.forget_file(request.split)),
                               run.forget_file(request.split), run.retain_records(request.split),
                               run.retain_file(request.split),
                               {"run": str(run.root), "stage": start, "stage_key": stage.get("key")})
        return _disjoint(inputs, request)
    if not request.model or not (request.forget or request.forget_records is not None):
        raise ForgetkitError("unlearn: give --model DIR and --forget FILE (and usually --retain FILE), or --run DIR")
    forget = request.forget_records if request.forget_records is not None else read_records(request.forget)
    retain = request.retain_records if request.retain_records is not None else (
        read_records(request.retain) if request.retain else None)
    return _disjoint(RequestInputs(Path(request.model), Path(request.adapter) if request.adapter else None, forget,
                                   Path(request.forget) if request.forget_records is None else None, retain,
                                   Path(request.retain) if request.retain and request.retain_records is None else None,
                                   {}), request)


def _disjoint(inputs: RequestInputs, request: UnlearnRequest) -> RequestInputs:
    """The inputs, once their retain set is checked to hold no forget record (or ``--allow-overlap`` says so)."""
    refuse_overlap(inputs.forget, inputs.retain, "retain", source=inputs.retain_file, allow=request.allow_overlap)
    return inputs


def calibration_of(request: UnlearnRequest, forget: list[QARecord],
                   retain: list[QARecord] | None) -> tuple[list[QARecord], Path | None]:
    """The calibration set of a request (``--calibration``, or the prepared run's never-trained calibration
    people) and its file, checked disjoint from the forget and retain sets it calibrates against."""
    if request.config.criterion.reference == "twins":
        records = counterfactual_twins(forget, retain, request.config.criterion.twins)
        # the check compares only the forget records that have twins (eval.calibration.CriterionSets)
        _refuse_too_small(None, len(set(twin_groups(forget, records))), len(records), request.config.criterion.z,
                          twins=True)
        return records, None  # disjoint from forget and retain by construction
    if request.calibration_records is not None:
        records, file = request.calibration_records, None
    elif request.calibration:
        file = Path(request.calibration)
        records = read_records(file)
    elif request.run:
        file = request.prepared_run().calibration_file()
        if file is None:
            raise ForgetkitError(f"{request.run}: the prepared run has no calibration people (prepared before "
                                 "benchmark.calibration_people existed, or with 0); prepare it with "
                                 "benchmark.calibration_people=N, or give --calibration FILE")
        records = read_records(file)
    else:
        raise ForgetkitError("--until indistinguishable needs a calibration set: --calibration FILE (examples like "
                             "the forget set's that the model never trained on)")
    if not records:
        raise ForgetkitError(f"{file or 'the calibration records'}: the calibration set is empty")
    ids = {r.id for r in forget + (retain or [])}
    for r in records:
        if r.id in ids:
            raise ForgetkitError(f"{file or 'the calibration records'}: record '{r.id}' (field id) is also in the "
                                 "forget or retain set; a calibration set must be data the model never trained on")
    for role, trained in (("forget", forget), ("retain", retain or [])):
        overlap = find_overlap(records, trained)
        if overlap:
            raise ForgetkitError(f"{file or 'the calibration records'}: {len(overlap)} record(s) of the {role} set "
                                 f"are also in the calibration set (the first: {role} record '{trained[overlap[0]].id}'"
                                 ", field id); a calibration set must be data the model never trained on")
    _refuse_too_small(file, len(forget), len(records), request.config.criterion.z)
    return records, file


def _refuse_too_small(file: Path | None, n_forget: int, n_calibration: int, z: float, twins: bool = False) -> None:
    """A calibration set whose check could not tell a perfectly known forget set from unseen data (tolerance
    ≥ 0.5) is refused with the number it needs."""
    tolerance = auc_tolerance(n_forget, n_calibration, z)
    if tolerance < 0.5:
        return
    needed = calibration_needed(n_forget, z)
    need = (f"it needs at least {needed} examples" if needed else
            f"no calibration set is enough for {n_forget} forget example(s) at criterion.z={z:g}: forget more "
            "records at once, or lower criterion.z")
    if twins:
        raise ForgetkitError(f"--calibration auto: the forget set's {n_forget} record(s) gave {n_calibration} "
                             f"twin(s), a check tolerance of ±{tolerance:.2f}: too few or too uniform to tell a "
                             f"known forget set from unseen data ({need}); forget more records at once, raise "
                             "criterion.twins.per_record, or give --calibration FILE")
    raise ForgetkitError(f"{file or 'the calibration records'}: {n_calibration} calibration example(s) give the "
                         f"check a tolerance of ±{tolerance:.2f} against {n_forget} forget example(s), so even a "
                         f"forget set the model knows perfectly would pass as never seen; {need}")


@dataclass(frozen=True)
class RecordSet:
    """An audit record's view of a set of records: its file (None when given in memory), content hash and count;
    never the records' text."""

    file: str | None
    hash: str
    count: int

    @classmethod
    def of(cls, file: Path | str | None, records: list) -> RecordSet:
        return cls(str(file) if file else None, records_hash(records), len(records))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Fingerprint:
    """An audit record's view of a directory (or an in-memory object): its absolute path and fingerprint, and the
    pattern of the files fingerprinted when not the default, so that ``forgetkit audit verify`` can recompute it."""

    path: str | None
    hash: str | None
    pattern: str | None = None

    @classmethod
    def of(cls, path: Path | str | None, pattern: str | None = None) -> Fingerprint | None:
        """The directory's fingerprint; None for no directory."""
        if not path:
            return None
        return cls(str(Path(path).resolve()), dir_hash(path, pattern), pattern)

    def to_dict(self) -> dict:
        return {"path": self.path, "hash": self.hash, **({"pattern": self.pattern} if self.pattern else {})}


@dataclass(frozen=True)
class LoadRecord:
    """How to rebuild an unlearned model: a model directory, an adapter merged into it first (the LoRA target a
    method trained a new adapter over), then the result's adapter; or, for an input-based result, the unchanged
    model with the context its prompts carry."""

    model: str
    merge: str | None = None
    adapter: str | None = None
    context: str | None = None

    @classmethod
    def of(cls, model_dir: Path, adapter_in: Path | None, result: Path, in_place: bool, full: bool,
           context: bool = False) -> LoadRecord:
        """A full-mode result is the model itself; an adapter result goes over the model (with the adapter it
        was trained over merged first unless it edited that adapter ``in_place``); a ``context`` result is the
        model with ``result`` as its context."""
        if full:
            return cls(str(result))
        merge = None if in_place or adapter_in is None else str(adapter_in)
        if context:
            return cls(str(model_dir), merge, context=str(result))
        return cls(str(model_dir), merge, str(result))

    @classmethod
    def from_dict(cls, data: dict) -> LoadRecord:
        return cls(data["model"], data.get("merge"), data.get("adapter"), data.get("context"))

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["context"] is None:
            del data["context"]
        return data


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class AuditRecord:
    """What ``audit.json`` and the ledger keep of one request, for every kind of unlearner: hashes, counts,
    the method, its config and guarantee, never a record's text. ``forget`` is the set removed (or edited),
    ``retain`` the set kept; ``details`` holds what only one kind records (a certificate, the shards it
    retrained, the step it resumed from) and is written at the top level."""

    method: str
    config: dict
    config_hash: str
    model: Fingerprint
    forget: RecordSet
    output: Fingerprint
    started: str
    guarantee: str = EMPIRICAL
    request: str = "removal"  # removal, query or response
    adapter_in: Fingerprint | None = None
    retain: RecordSet | None = None
    origin: dict = field(default_factory=dict)
    load: LoadRecord | None = None  # how UnlearnResult.load_model rebuilds the result (None: not one model)
    metrics: dict | None = None
    details: dict = field(default_factory=dict)
    tool: str = "forgetkit unlearn"
    ended: str = ""

    def to_dict(self) -> dict:
        """``audit.json``'s object: the typed parts as their files hold them, ``details`` at the top level."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "details"}
        return {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in {**data, **self.details}.items()}


def audit_of(config: UnlearnConfig, model: Path, adapter: Path | None, forget: RecordSet, output: Path, started: str,
             **extra) -> AuditRecord:
    """An :class:`AuditRecord` of ``config``'s method: the model, the adapter it started from, the removed set
    and the output fingerprinted."""
    return AuditRecord(method=config.method, config=asdict(config), config_hash=config_hash(config),
                       model=Fingerprint.of(model), adapter_in=Fingerprint.of(adapter), forget=forget,
                       output=Fingerprint.of(output), started=started, **extra)


@dataclass
class UnlearnResult:
    """What a request produced: its summary (time, memory, steps, the evaluation's headline numbers) and audit
    record, read from ``out`` or just written; ``model`` is the result in memory when the run has it."""

    out: Path
    summary: RequestSummary
    audit: dict
    model: object | None = None
    tokenizer: object | None = None

    @classmethod
    def read(cls, out: str | Path) -> UnlearnResult:
        """A finished request's result from its directory (one-line error when it is not one)."""
        out = Path(out)
        try:
            audit, summary = checks.json_object(out / "audit.json"), checks.json_object(out / "summary.json")
        except ForgetkitError as exc:
            raise ForgetkitError(f"{out}: not a finished forgetkit unlearn run ({exc})") from None
        return cls(out, read_summary(summary), audit)

    @staticmethod
    def finished(out: str | Path) -> bool:
        return (Path(out) / "summary.json").is_file() and (Path(out) / "audit.json").is_file()

    def load_model(self, device: str = "cpu"):
        """``(model, tokenizer)``: the one in memory (in eval mode), else rebuilt from the audit's ``load``
        record: the model directory, an adapter merged into it first, then the result's adapter (or, for an
        input-based unlearner, the tokenizer made to carry the result's context)."""
        if self.model is not None:
            self.model.eval().requires_grad_(False)
            return self.model, self.tokenizer
        from forgetkit.adapters.loading import load_adapter
        from forgetkit.models import load_model

        if not self.audit.get("load"):
            raise ForgetkitError(f"{self.out}/audit.json: field 'load' is missing: this result is not one model "
                                 "(a shard set is served by forgetkit.exact.sharded.load_sharded)")
        load = LoadRecord.from_dict(self.audit["load"])
        model, tokenizer = load_model(load.model, load.merge, device=device)
        if load.merge:
            model = model.merge_and_unload()
        if load.adapter:
            model = load_adapter(model, load.adapter).to(device)
            model.eval()
        if load.context:  # an input-based unlearner: the model unchanged, its prompts behind the context
            from forgetkit.data.context import read_context, with_context

            tokenizer = with_context(tokenizer, read_context(load.context))
        return model, tokenizer


def finish(request: UnlearnRequest, audit: AuditRecord, summary: RequestSummary, model=None,
           tokenizer=None) -> UnlearnResult:
    """End any request: ``audit.json`` (with its guarantee: a certified unlearner whose certificate was withheld
    is an empirical one), its ledger row (the id goes into the summary), then ``summary.json``."""
    audit.ended = now()
    audit.metrics = summary.eval.to_dict() if summary.eval is not None else None
    if audit.guarantee == CERTIFIED and "certificate" not in audit.details:
        audit.guarantee = EMPIRICAL
    record = audit.to_dict()
    out = Path(request.out)
    written = summary.to_dict()
    write_request(out, record, written, request.ledger_path())
    summary.ledger = written["ledger"]
    return UnlearnResult(out, summary, record, model, tokenizer)
