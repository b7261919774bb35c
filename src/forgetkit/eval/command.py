"""What ``forgetkit eval`` and ``forgetkit aggregate`` do, behind the command line.

``run_eval`` loads the model (and adapter, and reference model), gathers the sets, evaluates,
and writes ``eval_log_aggregated.json`` (per example, TOFU's layout) and ``summary.json`` into
the output directory, each atomically, the summary last (a directory with a log and no summary holds
an evaluation that was interrupted while writing). ``read_log`` reads forgetkit's and TOFU's logs alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from forgetkit import checks
from forgetkit.data.readers import read_records
from forgetkit.errors import DataError, ForgetkitError
from forgetkit.eval import tofu
from forgetkit.eval.bias import SHIPPED_WEAT, read_weat_tests
from forgetkit.eval.calibration import forget_vs_calibration
from forgetkit.eval.evaluate import check_oracle_log, evaluate
from forgetkit.eval.result import EvalResult
from forgetkit.eval.sets import EvalData, benchmark_data, read_canaries
from forgetkit.eval.settings import EvalSettings
from forgetkit.io import write_json
from forgetkit.locks import output_lock
from forgetkit.runs import PreparedRun

LOG_FILE = "eval_log_aggregated.json"
SUMMARY_FILE = "summary.json"


@dataclass
class EvalRequest:
    model: str
    out: str
    adapter: str | None = None
    data: str | None = None  # a benchmark directory, with ``split``
    split: str = "forget10"
    files: dict[str, str] = field(default_factory=dict)  # role -> file, overriding or replacing ``data``
    oracle_log: str | None = None
    reference_model: str | None = None
    reference_adapter: str | None = None
    device: str = "auto"
    dtype: str = "float32"
    trust_remote_code: bool = False
    lm_eval_tasks: list[str] = field(default_factory=list)
    lm_eval_include: str | None = None
    settings: EvalSettings = field(default_factory=EvalSettings)
    context: str | None = None  # a prompt context directory (an input-based unlearner's context/)
    allow_overlap: bool = False  # --allow-overlap: forget records in the retain or holdout set are accepted


def read_log(path: str | Path) -> tofu.EvalLog:
    """A per-example log: forgetkit's ``eval_log_aggregated.json`` or TOFU's, or a directory holding one (the log
    remembers its file, which messages name)."""
    path = Path(path)
    if path.is_dir():
        path = path / LOG_FILE
    if not path.is_file():
        raise ForgetkitError(f"{path}: log file not found")
    doc = checks.json_value(path)
    known = set(tofu.SET_FILES.values())
    if not isinstance(doc, dict) or not known & set(doc):
        raise DataError(path, f"not an evaluation log: expected top-level keys among {', '.join(sorted(known))}")
    for key in known & set(doc):
        if not isinstance(doc[key], dict) or not all(isinstance(v, dict) for v in doc[key].values()):
            raise DataError(path, "expected per-metric objects keyed by example", field=key)
    return tofu.EvalLog(doc, str(path))


def _eval_data(request: EvalRequest) -> EvalData:
    if request.data:
        data = benchmark_data(request.data, request.split, request.settings.retain_limit)
    elif "forget" in request.files:
        data = EvalData(forget=read_records(request.files["forget"]))
    else:
        raise ForgetkitError("eval: give --data DIR (a benchmark) or --forget FILE")
    for role, path in request.files.items():
        if role in ("forget_text", "heldout_text"):
            setattr(data, role, read_records(path, kind="text"))
        elif role in ("canaries", "holdout_canaries"):
            setattr(data, role, read_canaries(Path(path)))
        else:
            setattr(data, role, read_records(path))
        data.sources[role] = str(path)
    return data


def _check_request(request: EvalRequest) -> None:
    """The model directories open and the output is writable and inside no input, before any work."""
    checks.model_dir(request.model)
    if request.adapter:
        checks.adapter_dir(request.adapter)
    if request.reference_model:
        checks.model_dir(request.reference_model, "reference model")
    if request.reference_adapter:
        checks.adapter_dir(request.reference_adapter)
    for role, path in request.files.items():
        checks.input_file(path, role.replace("_", " "))
    if request.settings.weat not in (None, SHIPPED_WEAT):
        checks.input_file(request.settings.weat, "--weat")
        read_weat_tests(request.settings.weat)  # a malformed file is refused before any work
    inputs = [request.model, request.adapter, request.reference_model, request.reference_adapter, request.data,
              request.oracle_log, *request.files.values()]
    checks.output_path(request.out, "--out", inputs)


def run_eval(request: EvalRequest, quiet: bool = False) -> dict | None:
    """Evaluate, write the log and summary into ``request.out``, and return the summary.

    Under a multi-process launch every process evaluates its share; the main process writes the
    files and returns the summary, the others return None.
    """
    _check_request(request)
    with output_lock(request.out, "--out"):  # one writer per output: a second evaluation into it is refused
        return _run(request, quiet)


def _run(request: EvalRequest, quiet: bool) -> dict | None:
    """:func:`run_eval` once its request is checked and its output locked."""
    import torch
    from accelerate import Accelerator

    from forgetkit.cost import measure
    from forgetkit.models import load_model

    # On a machine without an accelerator, accelerate only forms a multi-process (gloo) group when
    # told it runs on CPU; so "auto" there means CPU, and torchrun-style launches shard the work.
    on_cpu = request.device == "cpu" or (request.device == "auto" and not torch.accelerator.is_available())
    accelerator = Accelerator(cpu=on_cpu)
    device = accelerator.device if request.device in ("auto", "cpu") else request.device
    data = _eval_data(request)
    data.allow_overlap = request.allow_overlap
    data.check_disjoint()  # before the model is loaded
    oracle_log = read_log(request.oracle_log) if request.oracle_log else None
    if oracle_log is not None:  # of the same forget set, before the model is loaded
        check_oracle_log(data, oracle_log, request.files.get("forget") or f"{request.data}/{request.split}.jsonl")
    model, tokenizer = load_model(request.model, request.adapter, request.dtype, device, request.trust_remote_code)
    if request.context:
        from forgetkit.data.context import read_context, with_context

        tokenizer = with_context(tokenizer, read_context(request.context))
    reference = None
    if request.reference_model:
        reference, _ = load_model(request.reference_model, request.reference_adapter, request.dtype, device,
                                  request.trust_remote_code)
    with measure(device) as cost:
        eval_log, summary = evaluate(model, tokenizer, data, request.settings, reference, oracle_log,
                                     accelerator, quiet)
    summary["cost"]["peak_memory_mb"] = round(cost.peak_memory_mb, 1)
    summary["cost"]["memory_kind"] = cost.memory_kind
    summary["model"] = {"path": request.model, "adapter": request.adapter, "reference_model": request.reference_model,
                        "oracle_log": request.oracle_log}
    if request.lm_eval_tasks:
        from forgetkit.eval.lm_eval_bridge import run_lm_eval

        summary["lm_eval"] = run_lm_eval(model, tokenizer, request.lm_eval_tasks, request.lm_eval_include,
                                         device=str(device))
    if accelerator.is_main_process:
        out = Path(request.out)
        (out / SUMMARY_FILE).unlink(missing_ok=True)  # written last: a summary is never an older run's
        write_json(out / LOG_FILE, eval_log)
        write_json(out / SUMMARY_FILE, summary)
    accelerator.wait_for_everyone()
    return summary if accelerator.is_main_process else None


def aggregate_logs(logs: str | Path, oracle_logs: str | Path | None) -> dict:
    """Forget Quality and Model Utility of a saved log, against an oracle's saved log."""
    log = read_log(logs)
    oracle = read_log(oracle_logs) if oracle_logs else None
    return tofu.aggregate(log, oracle, log.path, oracle.path if oracle is not None else "oracle log")


def oracle_log_of(run: PreparedRun, split: str) -> dict | None:
    """The prepared run's oracle evaluation log for the split, if there is one
    (``forgetkit eval --model RUN/oracle_SPLIT ... --out RUN/eval/oracle_SPLIT`` writes it)."""
    oracle = run.oracle_eval_dir(split)
    return read_log(oracle) if (oracle / "eval_log_aggregated.json").is_file() else None


def evaluate_into(out: Path, model, tokenizer, data: EvalData, oracle_log: dict | None, quiet: bool,
                  settings: EvalSettings | None = None, own_oracle: bool = False,
                  calibration: list | None = None) -> EvalResult:
    """Evaluate, write ``out/eval_log_aggregated.json`` and ``out/summary.json`` (the summary last); the headline
    numbers. ``own_oracle``: the model is the oracle, so its Forget Quality is taken against its own log (the KS
    p-value of equal samples, as for TOFU's retain model). ``calibration``: never-trained examples like the forget
    set's; the oracle-free criterion's numbers for this model go beside the oracle-based ones."""
    eval_log, summary = evaluate(model, tokenizer, data, settings, reference_model=None,
                                 oracle_log=None if own_oracle else oracle_log, quiet=quiet)
    if own_oracle:
        summary["forget_quality"] = tofu.aggregate(eval_log, eval_log)["forget_quality"]
        summary.pop("forget_quality_note", None)
    if calibration:
        summary["calibration"] = forget_vs_calibration(model, tokenizer, data.forget, calibration)
    write_json(out / LOG_FILE, eval_log)
    write_json(out / SUMMARY_FILE, summary)
    return EvalResult.from_summary(summary)


def evaluate_run_into(out: Path, model, tokenizer, run: PreparedRun | None, split: str, forget: list,
                      quiet: bool, settings: EvalSettings | None = None) -> EvalResult:
    """An unlearning request's ``--eval``: with a prepared run, the split's benchmark sets against the run's oracle
    log; else the forget records alone (no Forget Quality)."""
    settings = settings or EvalSettings()
    if run is not None:
        data, oracle_log = benchmark_data(run.benchmark, split, settings.retain_limit), oracle_log_of(run, split)
    else:
        data, oracle_log = EvalData(forget=forget), None
    return evaluate_into(out, model, tokenizer, data, oracle_log, quiet, settings)
