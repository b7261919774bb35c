"""What issue 35's checks cost one ``forgetkit unlearn`` request, measured inside the request itself.

The checks (the output's writer lock, the forget/retain overlap check, the step and memory checks of the
training settings, ``max_length`` against the model's context, the canonical adapter config, and with
``--eval`` the evaluation's overlap and oracle-set checks) are wrapped with timers in the modules that call
them; the request then runs as ``forgetkit unlearn`` runs it, in this process. Reported per repeat: the
request's wall time, each check's time, and their sum as a share of the request: the checks' cost side by side
with the run they guard, in the same run.

Usage::

    python benchmarks/fault_checks_cost.py --run runs/micro --split forget10 --method npo [--repeats 3]
    python benchmarks/fault_checks_cost.py --model models/smollm2-135m-instruct --forget F --retain R \\
        --method npo [key=value ...]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager

from forgetkit.request import recipe_config
from forgetkit.unlearn import UnlearnRequest, run_unlearn

# (module whose global name the request calls, the name): every check issue 35 added to a request's path
CHECKS = (
    ("forgetkit.unlearn", "output_lock"),
    ("forgetkit.request", "refuse_overlap"),
    ("forgetkit.request", "find_overlap"),
    ("forgetkit.train", "check_steps"),
    ("forgetkit.train", "check_memory"),
    ("forgetkit.methods.command", "fit_max_length"),
    ("forgetkit.models.loading", "canonical_adapter_config"),
    ("forgetkit.eval.evaluate", "check_oracle_log"),
    ("forgetkit.eval.sets", "EvalData.check_disjoint"),
)


@contextmanager
def timed_checks(spent: dict[str, float]):
    """Wrap every check with a timer adding its seconds to ``spent[name]``; unwrapped afterwards."""
    originals = []
    for module_name, name in CHECKS:
        owner = importlib.import_module(module_name)
        attr = name
        if "." in name:
            cls, attr = name.split(".")
            owner = getattr(owner, cls)
        original = getattr(owner, attr)
        originals.append((owner, attr, original))
        setattr(owner, attr, _timed(name, original, spent, context=name == "output_lock"))
    try:
        yield
    finally:
        for owner, attr, original in originals:
            setattr(owner, attr, original)


def _timed(name: str, original, spent: dict[str, float], context: bool):
    if context:  # a context manager: its entering and leaving are the check, the block is the request
        @contextmanager
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            manager = original(*args, **kwargs)
            manager.__enter__()
            spent[name] += time.perf_counter() - start
            try:
                yield
            finally:
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                spent[name] += time.perf_counter() - start
        return wrapper

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - start
    return wrapper


def one_request(args: argparse.Namespace, out: str) -> dict:
    config = recipe_config(args.method, None, args.overrides)
    request = UnlearnRequest(out=out, config=config, model=args.model, forget=args.forget, retain=args.retain,
                             run=args.run, split=args.split, evaluate=args.eval, ledger=f"{out}.ledger.sqlite")
    spent: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    with timed_checks(spent):
        run_unlearn(request, quiet=True)
    wall = time.perf_counter() - start
    checks = sum(spent.values())
    return {"wall_s": wall, "checks_s": checks, "share": checks / wall, "by_check_s": dict(spent)}


def main() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--model")
    parser.add_argument("--forget")
    parser.add_argument("--retain")
    parser.add_argument("--method", default="npo")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    rows = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            row = one_request(args, f"{tmp}/out")
        rows.append(row)
        slowest = max(row["by_check_s"].items(), key=lambda kv: kv[1])
        print(f"repeat {i + 1}: request {row['wall_s']:.2f} s, checks {row['checks_s'] * 1000:.1f} ms "
              f"({row['share']:.3%}); slowest {slowest[0]} {slowest[1] * 1000:.1f} ms", flush=True)
    shares = [r["share"] for r in rows]
    print(f"checks: {statistics.mean(r['checks_s'] for r in rows) * 1000:.1f} ms on average, "
          f"{statistics.mean(shares):.3%} of the request (max {max(shares):.3%}) over {len(rows)} repeats")
    for name in sorted({n for r in rows for n in r["by_check_s"]}):
        print(f"  {name:<28} {statistics.mean(r['by_check_s'].get(name, 0.0) for r in rows) * 1000:8.2f} ms")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
