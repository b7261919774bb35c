"""The ``forgetkit`` command line: parse, build a config, call the library. No logic here.

User errors (:class:`ForgetkitError`, the command line's own usage errors, and environmental faults such as a
full disk, a quota or a read-only file system) print one line and exit with code 2 (3 for a diverged training)
without a traceback. Anything else is a bug: a
one-line summary, then the traceback, and exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import typing
import warnings
from pathlib import Path

from forgetkit.errors import ConfigError, ForgetkitError, SettingError, environment_fault, first_line
from forgetkit.eval.settings import EvalSettings

AUDIT_MISMATCH = 4  # forgetkit audit verify: the output is gone or no longer has its recorded fingerprint
# --until ended without the forget set indistinguishable from never-seen data: written and recorded, not a deletion
NOT_INDISTINGUISHABLE = 5


def add_setting_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """One flag per field of settings dataclass ``cls`` that has a help (``config.flag_setting``), named
    ``--PREFIX-FIELD``: a true-by-default bool is ``--PREFIX-no-FIELD``, a false one ``--PREFIX-FIELD``; a field with a
    ``const`` takes an optional value."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"--{prefix}* settings (forgetkit eval's)" if prefix else "settings")
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        name, dest, kind = f.name.replace("_", "-"), prefix.replace("-", "_") + f.name, hints[f.name]
        if kind is bool:
            flag = f"--{prefix}no-{name}" if f.default else f"--{prefix}{name}"
            group.add_argument(flag, dest=dest, action="store_false" if f.default else "store_true",
                               help=("leave out " if f.default else "") + f.metadata["help"])
            continue
        extra = {"nargs": "?", "const": f.metadata["const"]} if "const" in f.metadata else {}
        convert = kind if kind in (int, float) else str
        group.add_argument(f"--{prefix}{name}", dest=dest, type=convert, default=f.default,
                           metavar=f.metadata.get("metavar"), help=f.metadata["help"] + (
                               f" (default {f.default})" if f.default is not None else ""), **extra)


def settings_of(args: argparse.Namespace, cls: type, prefix: str = ""):
    """The settings dataclass ``cls`` from the flags ``add_setting_flags`` added; a bad value names its flag."""
    dest = prefix.replace("-", "_")
    values = {f.name: getattr(args, dest + f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}
    try:
        return cls(**values)
    except SettingError as exc:  # name the flag the user typed
        raise ConfigError(f"--{prefix}{exc.setting.replace('_', '-')}: {exc.problem}") from None


def _cmd_prepare(args: argparse.Namespace) -> int:
    from forgetkit.prepare import format_summary, load_prepare_config, prepare

    given = [f"data.path={json.dumps(args.data)}"] if args.data else []
    given += [f"data.group={json.dumps(args.group)}"] if args.group else []
    config = load_prepare_config(args.config or ("user_data" if args.data else "small"), given + args.overrides)
    summary = prepare(config, quiet=args.quiet)
    print(format_summary(summary))
    print(f"\nRun directory: {config.run_dir} (summary.json, stage.json per stage)")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from forgetkit.config import shipped_configs

    for name in shipped_configs():
        print(name)
    print("unlearn recipes (forgetkit unlearn --config NAME): " + ", ".join(shipped_configs("unlearn")))
    return 0


def _cmd_methods(args: argparse.Namespace) -> int:
    from forgetkit.unlearn import UNLEARNERS

    for name, entry in sorted(UNLEARNERS.items()):
        print(f"{name:<17} [{entry.kind}; {entry.guarantee}] {entry.summary}")
    return 0


def _cmd_unlearn(args: argparse.Namespace) -> int:
    from forgetkit.request import AUTO_CALIBRATION, recipe_config
    from forgetkit.unlearn import UnlearnRequest, run_unlearn

    auto = args.calibration == AUTO_CALIBRATION
    overrides = (list(args.overrides) + ([f"until={args.until}"] if args.until else [])
                 + (["criterion.reference=twins"] if auto else []))
    config = recipe_config(args.method, args.config, overrides)
    request = UnlearnRequest(out=args.out, config=config, model=args.model, adapter=args.adapter, forget=args.forget,
                             retain=args.retain, run=args.run, split=args.split, evaluate=args.eval,
                             eval_every=args.eval_every, device=args.device, edits=args.edits, ledger=args.ledger,
                             calibration=None if auto else args.calibration, allow_overlap=args.allow_overlap,
                             eval_settings=settings_of(args, EvalSettings, prefix="eval-"))
    result = run_unlearn(request, quiet=args.quiet)
    if result is None:  # not the main process of a multi-process launch
        return 0
    summary = result.summary
    print(summary.headline())
    if summary.criterion is not None:
        c = summary.criterion
        step, auc = (c.chosen.step, c.chosen.auc) if c.chosen else (None, float("nan"))
        print(f"until indistinguishable: {c.stopped} after {c.checks} checks; kept step {step} "
              f"(forget vs calibration AUC {auc:.3f}, tolerance ±{c.tolerance:.3f} "
              f"for {c.forget_examples} vs {c.calibration_examples} examples"
              f"{'; rolled back' if c.rolled_back else ''})")
        print(f"verdict: {c.verdict}")
    if summary.eval is not None:
        ev = summary.eval
        fq = ev.forget_quality
        print(f"forget quality: {fq:.4g}" if fq is not None else "forget quality: missing (no oracle log)")
        if ev.model_utility is not None:
            print(f"model utility: {ev.model_utility:.4f}")
        if ev.success is not None:
            print(f"{ev.success['request']} success: {ev.success['success']:.3f} ({ev.success['count']} examples)")
    print(f"Wrote {args.out}: {summary.outputs()}, summary.json, audit.json")
    print(f"Recorded request {summary.ledger['id']} in {summary.ledger['path']} (forgetkit audit show ID)")
    if not summary.reached:
        return _not_a_deletion(summary.criterion.verdict)
    return 0


def _not_a_deletion(verdict: str) -> int:
    """What ``unlearn --until`` and ``forget`` say when the kept check is still outside the tolerance: the
    output and its audit record are written, but the request is not a finished deletion (exit 5)."""
    print(f"error: {verdict}: the request is NOT a finished deletion (exit {NOT_INDISTINGUISHABLE}); its output "
          "and audit record say so", file=sys.stderr)
    return NOT_INDISTINGUISHABLE


def _cmd_forget(args: argparse.Namespace) -> int:
    from forgetkit.deletion import forget

    result, verdict = forget(args.model, args.records, args.retain, args.out, args.method, args.config,
                             args.overrides, adapter=args.adapter, calibration=args.calibration, ledger=args.ledger,
                             device=args.device, quiet=args.quiet)
    for line in verdict.lines():
        print(line)
    summary = result.summary
    made = "adapter" if summary.mode == "lora" else "model"
    print(f"Wrote {args.out}/{made}, summary.json, audit.json; recorded request {summary.ledger['id']} in "
          f"{summary.ledger['path']} (forgetkit audit show ID)")
    if not verdict.reached:
        return _not_a_deletion(verdict.verdict)
    if made == "adapter":
        print(f"Serve it: forgetkit export --gguf --model MODEL --adapter {args.out}/adapter --out FILE.gguf "
              "(recorded in the request's audit)")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    if args.merge == args.gguf:
        raise ForgetkitError("export: give --merge (the adapter is merged into a plain Hugging Face checkpoint) or "
                             "--gguf (the model, with the adapter merged when given, as one GGUF file)")
    if args.gguf_type is not None and not args.gguf:
        raise ForgetkitError("export: --gguf-type goes with --gguf")
    if args.merge:
        from forgetkit.models import export_merged

        if args.adapter is None:
            raise ForgetkitError("export --merge: give --adapter (the adapter directory to merge into --model)")
        out = export_merged(args.model, args.adapter, args.out)
        print(f"Wrote {out}: a plain Hugging Face checkpoint (safetensors) with the adapter merged in")
        return 0
    from forgetkit.audit.ledger import file_fingerprint, record_export, request_of
    from forgetkit.models.gguf_export import DEFAULT_GGUF_TYPE, export_gguf

    request = request_of(Path(args.adapter or args.model), args.ledger)  # checked before the export
    record = export_gguf(args.model, args.out, args.adapter, args.gguf_type or DEFAULT_GGUF_TYPE)
    types = ", ".join(f"{n} {kind}" for kind, n in sorted(record["tensor_types"].items()))
    print(f"Wrote {record['out']}: {record['architecture']} GGUF, {record['gguf_type']} ({types} tensors), "
          f"{record['parameters']:,} parameters{', adapter merged' if record['adapter_merged'] else ''}, "
          f"tokenizer ({record['tokenizer_pre']}){' with chat template' if record['chat_template'] else ''}; "
          f"{record['bytes'] / 2**20:.1f} MiB in {record['seconds']:.1f}s")
    if request is not None:
        ledger, e = request
        fingerprint = file_fingerprint(Path(record["out"]))
        record_export(ledger, e["id"], Path(record["out"]), fingerprint, f"gguf {record['gguf_type']}")
        print(f"Recorded in request {e['id']} of {ledger}: served as {record['out']} (fingerprint {fingerprint}; "
              "forgetkit audit show ID, audit verify ID)")
    return 0


def _cmd_import_gguf(args: argparse.Namespace) -> int:
    from forgetkit.models.gguf import import_gguf

    record = import_gguf(args.file, args.out)
    print(f"Wrote {args.out}: {record['architecture']} ({record['model_type']}), {record['parameters']:,} parameters, "
          f"float32 safetensors, tokenizer{' with chat template' if record['chat_template'] else ''}; reload checked "
          f"(max |logit difference| {record['probe_max_abs_logit_difference']:.2g})")
    if not record["chat_template"]:
        print("Its tokenizer has no chat template: forgetkit prompts it plainly (Question: … / Answer: …); "
              "prepare's require_chat_template=true refuses such a model")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Read and validate data files; report counts, hashes and forget/retain overlap."""
    from forgetkit.data.readers import read_records, remove_overlap
    from forgetkit.data.records import FieldMap, records_hash
    from forgetkit.io import write_jsonl

    field_map = FieldMap.parse(args.map)
    if args.out:
        from forgetkit.checks import output_path

        output_path(args.out, "--out", [args.forget, args.retain, args.file], kind="file")
    sets = {}
    for role in ("forget", "retain", "file"):
        path = getattr(args, role, None)
        if path:
            sets[role] = read_records(path, kind=args.kind, field_map=field_map, split=args.split)
            print(f"{role}: {path}: {len(sets[role])} records, hash {records_hash(sets[role])}")
    if not sets:
        raise ForgetkitError("data check: give a FILE, or --forget and/or --retain")
    if "forget" in sets and "retain" in sets:
        retain, overlap = remove_overlap(sets["forget"], sets["retain"], dedupe=args.dedupe)
        print(f"overlap: {overlap} retain record(s) also in the forget set")
        if args.dedupe and args.out:
            write_jsonl(Path(args.out), (r.to_dict() for r in retain))
            print(f"wrote {len(retain)} retain records to {args.out}")
    return 0


EVAL_FILE_ROLES = ("forget", "retain", "holdout", "world_facts", "real_authors", "forget_text", "heldout_text",
                   "canaries", "holdout_canaries")


def _cmd_eval(args: argparse.Namespace) -> int:
    from forgetkit.eval.command import EvalRequest, run_eval
    from forgetkit.eval.report import format_summary
    settings = settings_of(args, EvalSettings)
    files = {role: getattr(args, role) for role in EVAL_FILE_ROLES if getattr(args, role)}
    request = EvalRequest(model=args.model, adapter=args.adapter, data=args.data, split=args.split, files=files,
                          out=args.out, oracle_log=args.oracle_log, reference_model=args.reference_model,
                          reference_adapter=args.reference_adapter, device=args.device, dtype=args.dtype,
                          trust_remote_code=args.trust_remote_code, lm_eval_tasks=args.lm_eval_tasks or [],
                          lm_eval_include=args.lm_eval_include, settings=settings, context=args.context,
                          allow_overlap=args.allow_overlap)
    summary = run_eval(request, quiet=args.quiet)
    if summary is None:  # not the main process of a multi-process launch
        return 0
    print(format_summary(summary))
    if "smoothing" in summary:
        s = summary["smoothing"]
        print(f"smoothing {s['noise']}: emission rate {s['emission_rate']:.3f} (unperturbed "
              f"{s['unperturbed_emission_rate']:.3f}); with confidence {1 - s['alpha']:.2f}, P(emit) ≤ "
              f"{s['set_upper_bound']:.3f} for a random forget question, ≤ {s['max_question_upper_bound']:.3f} for "
              f"every one ({s['forward_passes']} passes)")
    for test, score in summary.get("bias", {}).get("weat", {}).items():
        print(f"WEAT {test}: effect size {score['effect_size']:+.3f}, p = {score['p_value']:.3g}")
    if "toxicity" in summary:
        t = summary["toxicity"]
        print(f"toxic generation rate ({t['scorer']}): {t['toxic_rate']:.3f} of {t['n_prompts']} prompts "
              f"(provocative {t['provocative_rate']:.3f}, neutral {t['neutral_rate']:.3f})")
    if "lm_eval" in summary:
        for task, metrics in summary["lm_eval"].items():
            print(f"lm-eval {task}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    print(f"\nWrote {args.out}/eval_log_aggregated.json (per example) and {args.out}/summary.json")
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    import json

    from forgetkit.eval.command import aggregate_logs

    result = aggregate_logs(args.logs, args.oracle_logs)
    if args.json:
        print(json.dumps(result))
        return 0
    fq, mu = result["forget_quality"], result["model_utility"]
    print(f"forget_quality: {fq:.6g}" if fq is not None else f"forget_quality: {result['forget_quality_note']}")
    print(f"model_utility: {mu:.6f}" if mu is not None
          else f"model_utility: {result.get('model_utility_note', 'missing (no utility set in the log)')}")
    for name, value in result["model_utility_components"].items():
        print(f"  {name}: {value:.6f}")
    return 0


SHOWN_COLUMNS = ("FQ", "MU", "forget prob", "MIA AUC", "× retrain time", "relearn recovery", "4-bit forget prob",
                 "prompt forget ROUGE-L")  # the bench's printed table (leaderboard.md has every column)


def _cmd_bench(args: argparse.Namespace) -> int:
    from forgetkit.bench.command import run_bench
    from forgetkit.bench.config import load_bench_config
    from forgetkit.bench.executors import parse_slice
    from forgetkit.bench.leaderboard import COLUMNS, format_markdown

    cells_slice = parse_slice(args.cells) if args.cells else None
    shown = [label.strip() for label in args.columns.split(",")] if args.columns else list(SHOWN_COLUMNS)
    labels = [label for _, label in COLUMNS]
    if unknown := [label for label in shown if label not in labels]:
        raise ConfigError(f"--columns: unknown {', '.join(unknown)} (known: {', '.join(labels)})")
    result = run_bench(load_bench_config(args.config, args.overrides), quiet=args.quiet, executor=args.executor,
                       ray_address=args.ray_address, cells_slice=cells_slice, report_only=args.report_only)
    if cells_slice:
        done = sum(r["status"] == "done" for r in result["results"])
        print(f"slice {cells_slice[0]}/{cells_slice[1]}: {len(result['results'])} cells ({done} done)")
        for row in result["results"]:
            if row["status"] != "done":
                print(f"  {row['cell']['id']}: {row['status']}: {row.get('reason', '')}")
        print(f"Gather every slice with: forgetkit bench --config {args.config} --report-only")
        return 0
    meta = result["meta"]
    print(format_markdown(result["rows"], [next(c for c in COLUMNS if c[1] == label) for label in shown]))
    print(f"{meta['cells']} cells ({meta['computed now']} computed now, {meta['done']} done, "
          f"{meta['refused or diverged']} refused or diverged, {meta['crashed']} crashed)")
    if "oracle-free criterion vs Forget Quality" in meta:
        print(f"Oracle-free criterion vs Forget Quality: {meta['oracle-free criterion vs Forget Quality']}")
    if result["missing"]:
        print(f"{len(result['missing'])} cell(s) not computed yet (left out of the leaderboard): "
              + ", ".join(result["missing"]))
    for row in result["results"]:
        if row["status"] != "done":
            print(f"  {row['cell']['id']}: {row['status']}: {row.get('reason', '')}")
    print(f"Leaderboard: {result['files']['markdown']}, .csv, .json")
    print(f"Report: {result['files']['report']}")
    return 0


def _cmd_shard_train(args: argparse.Namespace) -> int:
    from forgetkit.config import apply_overrides, build
    from forgetkit.exact.command import ShardTrainRequest, run_shard_train
    from forgetkit.exact.sharded import ShardConfig

    config = build(ShardConfig, apply_overrides({}, list(args.overrides)), "shard-train")
    request = ShardTrainRequest(out=args.out, config=config, run=args.run, model=args.model, data=args.data,
                                shared=args.shared, evaluate=args.eval, split=args.split,
                                serving=tuple(args.serving.split(",")))
    summary = run_shard_train(request, quiet=args.quiet)
    print(f"{summary['shards']} shards trained on {summary['records']} records (+{summary['shared']} shared) in "
          f"{summary['train_time_s']:.1f}s")
    if "routing_accuracy" in summary:
        print("routing accuracy: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["routing_accuracy"].items()))
    for mode, ev in summary.get("eval", {}).items():
        fq = ev["forget_quality"]
        print(f"{mode}: model utility {ev['model_utility']:.4f}, forget quality "
              + (f"{fq:.4g}" if fq is not None else "missing (no oracle log)"))
    print(f"Wrote {args.out}: shard_N/ adapters, shards.json, summary.json; delete records with "
          f"forgetkit unlearn --method sharded_exact --adapter {args.out} ...")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    import json

    from forgetkit.audit.ledger import entries, entry, format_entry, verify, verify_exports
    from forgetkit.request import default_ledger

    ledger = default_ledger(args.ledger, args.run, out=None)
    if args.out:
        from forgetkit.checks import output_path

        output_path(args.out, "--out", [ledger], kind="file")
    if args.action == "show":
        if not args.id:
            raise ForgetkitError("audit show: give the request id (forgetkit audit list shows them)")
        print(format_entry(entry(ledger, args.id)))
    elif args.action == "verify":
        if not args.id:
            raise ForgetkitError("audit verify: give the request id (forgetkit audit list shows them)")
        e = entry(ledger, args.id)
        checks = [("output", verify(e))] + [("served file", x) for x in verify_exports(e)]
        for what, check in checks:
            if check["now"] is None:
                print(f"request {e['id']}: DOES NOT MATCH: its {what} {check['path']} is gone "
                      f"(recorded {check['recorded']})")
            else:
                print(f"request {e['id']}: {what} {check['path']}: fingerprint {check['now']} "
                      + ("matches the record" if check["matches"]
                         else f"DOES NOT MATCH the recorded {check['recorded']}"))
        return 0 if all(check["matches"] for _, check in checks) else AUDIT_MISMATCH
    elif args.action == "export":
        text = json.dumps(entries(ledger), indent=2, ensure_ascii=False) + "\n"
        if args.out:
            from forgetkit.io import write_text

            write_text(args.out, text)
            print(f"Wrote {args.out}")
        else:
            print(text, end="")
    else:
        rows = entries(ledger)
        for e in rows:
            print(f"{e['id']}  {e['recorded']}  {e['method']:<17} {e['request_kind']:<8} {e['forget_count']:>6} "
                  f"records  {e['guarantee']}")
        print(f"{len(rows)} request(s) in {ledger}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit code 2, as every user error)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="forgetkit", description="Make a language model forget data, and measure it.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (_add_prepare, _add_configs, _add_methods, _add_unlearn, _add_export, _add_import_gguf,
                _add_data, _add_eval, _add_aggregate, _add_bench, _add_shard_train, _add_audit):
        add(sub)
    return parser


def _add_prepare(sub) -> None:
    """``forgetkit prepare``'s flags."""
    p = sub.add_parser("prepare", help="build the benchmark, tokenizer, base, target and oracle models (cached)")
    p.add_argument("--config", help="shipped config name (micro, small, smollm2, tofu_smollm2 …) or a YAML path "
                   "(default: small; with --data, user_data)")
    p.add_argument("--data", help="a QA dataset of your own (JSONL/JSON/CSV/Parquet, a datasets directory, or a "
                   "directory in TOFU's layout) instead of the built-in benchmark: data.path")
    p.add_argument("--group", help="the field that groups --data's records (author, person, subject): data.group")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. target_mode=lora")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_prepare)


def _add_configs(sub) -> None:
    """``forgetkit configs``'s flags."""
    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=_cmd_configs)


def _add_methods(sub) -> None:
    """``forgetkit methods``'s flags."""
    p = sub.add_parser("methods", help="list the unlearning methods")
    p.set_defaults(func=_cmd_methods)


def _add_unlearn(sub) -> None:
    """``forgetkit unlearn``'s flags."""
    p = sub.add_parser("unlearn", help="make a model forget a set: train an adapter with a method")
    p.add_argument("--method", help="method name (forgetkit methods); its shipped recipe is the default config")
    p.add_argument("--config", help="unlearn recipe: a shipped name (forgetkit configs) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. params.beta=0.2 train.lr=1e-4 mode=full lora.r=16")
    p.add_argument("--model", help="model directory (local)")
    p.add_argument("--adapter", help="peft adapter on --model (merged into the frozen starting point)")
    p.add_argument("--forget", help="forget set file")
    p.add_argument("--retain", help="retain set file")
    p.add_argument("--run", help="a prepared run directory (built-in benchmark) instead of --model/--forget/--retain")
    p.add_argument("--split", default="forget10", help="with --run: the forget split")
    p.add_argument("--edits", help="closed-form editors: an edit file (query or response edits); with --run, "
                                   "'query' or 'response' name the run's edit files for the split")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--eval", action="store_true", help="evaluate the result (forgetkit eval's metrics; the --eval-* "
                                                        "flags below are forgetkit eval's settings)")
    add_setting_flags(p, EvalSettings, prefix="eval-")
    p.add_argument("--eval-every", type=int, default=0, metavar="N",
                   help="with --run: Forget Quality and Model Utility every N steps (quick evaluation) in the step log")
    p.add_argument("--until", choices=("indistinguishable",),
                   help="stop when the forget set cannot be told from the calibration set (no oracle needed); "
                        "train.epochs is the most it may train; criterion.* tunes the checks")
    p.add_argument("--calibration", help="with --until: examples like the forget set's that the model never trained "
                                         "on (default with --run: the run's calibration people), or 'auto': "
                                         "counterfactual twins built from the forget and retain records "
                                         "(criterion.reference=twins; criterion.twins.* tunes them)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="accept retain records that are also in the forget set (refused by default: the method would "
                        "train on what it is asked to forget)")
    p.add_argument("--device", default="auto")
    p.add_argument("--ledger", help="the audit ledger (SQLite) to append the request to (default: RUN/ledger.sqlite "
                                    "with --run, else ledger.sqlite beside --out)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_unlearn)


def _add_export(sub) -> None:
    """``forgetkit export``'s flags."""
    p = sub.add_parser("forget", help="one deletion request: make a model (directory or GGUF) forget the records, "
                                      "stopping where they look never seen (no oracle, no calibration set needed)")
    p.add_argument("--model", required=True, help="the model: a Hugging Face directory, or a .gguf file (imported "
                                                  "once into the cache: FORGETKIT_CACHE, else ~/.cache/forgetkit)")
    p.add_argument("--adapter", help="a LoRA adapter on --model that holds the records (merged into the start)")
    p.add_argument("--records", required=True, help="the records to delete (any format forgetkit data check reads)")
    p.add_argument("--retain", required=True, help="records the model must keep (the retain term and the guard)")
    p.add_argument("--out", required=True, help="output directory: adapter/, summary.json, audit.json")
    p.add_argument("--method", default=None, help="a method with its shipped recipe (default: the deletion recipe, "
                                                  "configs/unlearn/deletion.yaml: npo)")
    p.add_argument("--config", help="an unlearn recipe instead of the method's shipped one")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides, e.g. train.epochs=20 criterion.twins.per_record=3")
    p.add_argument("--calibration", help="never-trained examples like the records, instead of their counterfactual "
                                         "twins")
    p.add_argument("--ledger", help="the audit ledger (default: ledger.sqlite beside --out)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_forget)

    p = sub.add_parser("export", help="merge an adapter (lora, sine, clipped) into its model: a plain HF checkpoint "
                                       "(--merge) or one GGUF file for llama.cpp and Ollama (--gguf)")
    p.add_argument("--model", required=True, help="the base model directory")
    p.add_argument("--adapter", help="the adapter directory (e.g. OUT/adapter of forgetkit unlearn); required with "
                                     "--merge, optional with --gguf")
    p.add_argument("--merge", action="store_true", help="merge the adapter into the weights: a Hugging Face directory")
    p.add_argument("--gguf", action="store_true", help="write one GGUF file (llama, qwen2): weights (adapter merged), "
                                                      "tokenizer, special tokens, chat template")
    p.add_argument("--gguf-type", choices=("f32", "f16", "q8_0"),
                   help="the weight matrices' type in the GGUF file (default f16, llama.cpp's default; f32 is exact; "
                        "norms stay f32)")
    p.add_argument("--out", required=True, help="output directory (--merge) or new .gguf file (--gguf)")
    p.add_argument("--ledger", help="with --gguf: the ledger of the request whose output --adapter (or --model) is "
                                    "(default: the one its summary.json names); the file is recorded in its row")
    p.set_defaults(func=_cmd_export)


def _add_import_gguf(sub) -> None:
    """``forgetkit import-gguf``'s flags."""
    p = sub.add_parser("import-gguf", help="convert a GGUF file (llama.cpp, Ollama) into a Hugging Face model "
                                            "directory (float safetensors, tokenizer, chat template)")
    p.add_argument("file", help="the .gguf file")
    p.add_argument("--out", required=True, help="the model directory to write")
    p.set_defaults(func=_cmd_import_gguf)


def _add_data(sub) -> None:
    """``forgetkit data``'s flags."""
    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    c = data_sub.add_parser("check", help="validate data files and report forget/retain overlap")
    c.add_argument("file", nargs="?", help="a data file to validate")
    c.add_argument("--forget", help="forget set file")
    c.add_argument("--retain", help="retain set file")
    c.add_argument("--kind", choices=["qa", "text"], default="qa")
    c.add_argument("--split", help="split of a datasets DatasetDict directory")
    c.add_argument("--map", nargs="*", default=[], metavar="FIELD=COLUMN",
                   help="field names in your file, e.g. question_key=prompt answer_key=completion")
    c.add_argument("--dedupe", action="store_true", help="drop retain records that are also in the forget set")
    c.add_argument("--out", help="with --dedupe: write the deduplicated retain set here (JSONL)")
    c.set_defaults(func=_cmd_data_check)


def _add_eval(sub) -> None:
    """``forgetkit eval``'s flags."""
    p = sub.add_parser("eval", help="evaluate a model on a forget set: TOFU metrics, MIA, memorisation, utility")
    p.add_argument("--model", required=True, help="model directory (local)")
    p.add_argument("--adapter", help="peft adapter directory on top of --model")
    p.add_argument("--data", help="a built-in benchmark directory (e.g. runs/small/benchmark)")
    p.add_argument("--split", default="forget10", help="forget split of --data (forget01, forget05, forget10)")
    for role in EVAL_FILE_ROLES:
        kind = "JSONL with prefix and secret" if "canaries" in role else "data file"
        p.add_argument(f"--{role.replace('_', '-')}", dest=role, metavar="FILE",
                       help=f"{role.replace('_', ' ')} set ({kind}); overrides the one found in --data")
    p.add_argument("--out", required=True, help="output directory (eval_log_aggregated.json, summary.json)")
    p.add_argument("--oracle-log", help="the retrain oracle's log on the same forget set (for Forget Quality, "
                                        "PrivLeak)")
    p.add_argument("--allow-overlap", action="store_true",
                   help="accept retain or holdout records that are also in the forget set (refused by default: the "
                        "forget set would be measured against itself)")
    p.add_argument("--reference-model", help="reference model directory for the Reference MIA")
    p.add_argument("--reference-adapter", help="peft adapter on top of --reference-model")
    add_setting_flags(p, EvalSettings)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the model (off)")
    p.add_argument("--lm-eval-tasks", nargs="*", metavar="TASK", help="lm-evaluation-harness tasks (local)")
    p.add_argument("--lm-eval-include", metavar="DIR", help="directory of local lm-eval task YAMLs")
    p.add_argument("--context", metavar="DIR",
                   help="ask every question behind a prompt context (an input-based unlearner's OUT/context)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_eval)


def _add_aggregate(sub) -> None:
    """``forgetkit aggregate``'s flags."""
    p = sub.add_parser("aggregate", help="Forget Quality and Model Utility from saved logs (forgetkit's or TOFU's)")
    p.add_argument("--logs", required=True, help="the evaluated model's log (file or eval output directory)")
    p.add_argument("--oracle-logs", help="the retrain oracle's log on the same forget set")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_aggregate)


def _add_bench(sub) -> None:
    """``forgetkit bench``'s flags."""
    p = sub.add_parser("bench", help="run a grid of methods x forget splits x seeds with attacks; leaderboard, "
                                     "plots and an HTML report (cells cached: a rerun computes only what is missing)")
    p.add_argument("--config", default="demo", help="bench config: a shipped name (demo, full, tofu_llama) or a "
                                                   "YAML path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. seeds=[0,1,2]")
    p.add_argument("--executor", default="serial", choices=["serial", "ray"],
                   help="serial: one cell after another in this process; ray: each cell a Ray task in its own "
                        "worker process (pip install 'forgetkit[ray]')")
    p.add_argument("--ray-address", help="with --executor ray: 'auto' joins the running cluster, or a cluster's "
                                         "address; none starts a local Ray runtime on this machine")
    p.add_argument("--cells", metavar="I/N", help="compute slice I of N of the grid only (1 ≤ I ≤ N; stable by "
                                                  "cell id), e.g. one job of a Slurm array; no leaderboard")
    p.add_argument("--report-only", action="store_true",
                   help="compute nothing: gather the finished cells (e.g. of every slice) into the leaderboard, "
                        "plots and report")
    p.add_argument("--columns", help="the printed table's columns, comma-separated leaderboard labels, e.g. "
                                     "'FQ,MU,MIA AUC,× retrain time' (default: " + ",".join(SHOWN_COLUMNS) + "; "
                                     "leaderboard.md has every column)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_bench)


def _add_shard_train(sub) -> None:
    """``forgetkit shard-train``'s flags."""
    p = sub.add_parser("shard-train", help="exact unlearning: train one LoRA adapter per shard of the data "
                                            "(delete with unlearn --method sharded_exact)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="shard settings, e.g. shards=4 lora.r=32 train.epochs=15 train.lr=5e-3")
    p.add_argument("--run", help="a prepared run: its base, its people's records, its world facts shared")
    p.add_argument("--model", help="base model directory (local)")
    p.add_argument("--data", help="training records (a person's or group's records share one shard)")
    p.add_argument("--shared", help="records every shard trains on and no request deletes")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--eval", action="store_true", help="with --run: evaluate the served shards")
    p.add_argument("--split", default="forget10", help="with --eval: the forget split to evaluate on")
    p.add_argument("--serving", default="route", help="route, average or route,average (evaluated)")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_shard_train)


def _add_audit(sub) -> None:
    """``forgetkit audit``'s flags."""
    p = sub.add_parser("audit", help="the ledger of unlearning requests: list, show one, export as JSON, verify "
                                     "that a request's output still has its recorded fingerprint")
    p.add_argument("action", choices=("list", "show", "export", "verify"))
    p.add_argument("id", nargs="?", help="show, verify: a request id (or its unique suffix)")
    p.add_argument("--ledger", help="the ledger file (default: RUN/ledger.sqlite with --run, else ./ledger.sqlite)")
    p.add_argument("--run", help="a prepared run directory whose ledger to read")
    p.add_argument("--json", action="store_true", help="export: JSON (the only format; accepted for clarity)")
    p.add_argument("--out", help="export: write to this file (atomically) instead of stdout")
    p.set_defaults(func=_cmd_audit)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed in one line)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    _quiet_libraries()
    try:
        return args.func(args)
    except ForgetkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: completed stages are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a full disk or a vanished path is the user's; anything else is a bug
        fault = environment_fault(exc, where=getattr(args, "out", None))
        if fault is not None:
            print(f"error: {fault}", file=sys.stderr)
            return fault.exit_code
        import traceback

        print(f"internal error (a bug in forgetkit, please report it with the traceback below): "
              f"{type(exc).__name__}: {first_line(exc)}", file=sys.stderr)
        traceback.print_exc()
        return 1


def _quiet_libraries() -> None:
    """Hugging Face libraries print bars for loading tiny models; forgetkit shows its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # peft and accelerate read transformers' deprecated alias on every model they wrap: not the user's concern
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
