"""The ``forgetkit`` command line: parse, build a config, call the library. No logic here.

User errors (:class:`ForgetkitError`) print one line and exit non-zero without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from forgetkit.errors import ForgetkitError


def _cmd_prepare(args: argparse.Namespace) -> int:
    from forgetkit.prepare import format_summary, load_prepare_config, prepare

    config = load_prepare_config(args.config, args.overrides)
    summary = prepare(config, quiet=args.quiet)
    print(format_summary(summary))
    print(f"\nRun directory: {config.run_dir} (summary.json, stage.json per stage)")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    from forgetkit.config import shipped_configs

    for name in shipped_configs():
        print(name)
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Read and validate data files; report counts, hashes and forget/retain overlap."""
    from forgetkit.data.readers import read_records, remove_overlap
    from forgetkit.data.records import FieldMap, records_hash
    from forgetkit.io import write_jsonl

    field_map = FieldMap.parse(args.map)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forgetkit", description="Make a language model forget data, and measure it.")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="build the benchmark, tokenizer, base, target and oracle models (cached)")
    p.add_argument("--config", default="small", help="shipped config name (micro, small) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. target_mode=lora")
    p.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=_cmd_configs)

    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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


def _quiet_libraries() -> None:
    """Hugging Face libraries print bars for loading tiny models; forgetkit shows its own."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


if __name__ == "__main__":
    sys.exit(main())
