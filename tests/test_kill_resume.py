"""A `kill -9` in the middle of `eval`, `bench`, `shard-train` and `import-gguf`: nothing half-written is
left where a reader would look, and rerunning the same command finishes.

The kill is placed, not timed: the command runs in a child process whose ``os.replace`` (the rename that
publishes every file and directory forgetkit writes) sends SIGKILL to its own process on the N-th rename
onto a given name, after the content was written to its temporary sibling.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from forgetkit.cli import main

KILLER = """
import os, signal, sys
real, seen = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == {name!r}:
        seen[0] += 1
        if seen[0] == {nth}:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)

os.replace = replace
from forgetkit.cli import main
sys.exit(main({argv!r}))
"""


def _killed_at(name: str, argv: list[str], nth: int = 1) -> None:
    """Run ``forgetkit ARGV`` in a child process killed at its ``nth`` rename onto ``name``."""
    code = textwrap.dedent(KILLER.format(name=name, nth=nth, argv=argv))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def _leftovers(root: Path) -> list[Path]:
    """Temporary siblings of atomic writes still on disk."""
    return sorted(p for p in root.rglob(".*.tmp"))


def test_kill_during_eval_leaves_no_stale_summary_and_a_rerun_finishes(unlearn_run, tmp_path):
    out = tmp_path / "eval"
    argv = ["--quiet", "eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
            "--out", str(out), "--retain-limit", "10", "--max-new-tokens", "8", "--canary-candidates", "10",
            "--no-gradnorm"]
    assert main(argv) == 0
    first = json.loads((out / "eval_log_aggregated.json").read_text())
    _killed_at("summary.json", argv)  # the log of the new run is written, its summary is not
    assert not (out / "summary.json").exists(), "a summary of the earlier run beside a newer log"
    assert _leftovers(out), "the kill was placed after the summary's content was written"
    assert main(argv) == 0
    assert (out / "summary.json").is_file() and _leftovers(out) == []
    assert json.loads((out / "eval_log_aggregated.json").read_text()).keys() == first.keys()


def test_kill_during_shard_train_keeps_finished_shards_and_a_rerun_finishes(unlearn_run, tmp_path):
    out = tmp_path / "shards"
    argv = ["--quiet", "shard-train", "--run", str(unlearn_run), "--out", str(out), "shards=3", "train.epochs=1",
            "train.batch_size=8"]
    _killed_at("shard.json", argv, nth=2)  # shard 0 finished, shard 1 trained but not yet marked finished
    assert (out / "shard_0" / "shard.json").is_file() and not (out / "shard_1" / "shard.json").exists()
    assert not (out / "shards.json").exists()
    kept = {f: f.stat().st_mtime_ns for f in (out / "shard_0").iterdir()}
    assert main(argv) == 0
    assert {f: f.stat().st_mtime_ns for f in (out / "shard_0").iterdir()} == kept  # not retrained
    assert len(json.loads((out / "shards.json").read_text())["shards"]) == 3
    assert _leftovers(out) == []


def test_kill_during_bench_keeps_finished_cells_and_a_rerun_finishes(unlearn_run, tmp_path):
    config = tmp_path / "bench.yaml"
    config.write_text(textwrap.dedent(f"""
        name: killed
        run: {unlearn_run}
        out: {tmp_path / 'bench'}
        methods: [{{name: npo, overrides: {{train.epochs: 1, train.batch_size: 8}}}}]
        attacks: {{relearn: {{enabled: false}}, quantize_bits: [], prompt: false}}
        eval: {{retain_limit: 10, quick_retain: 5, max_new_tokens: 8, verbatim_new_tokens: 8,
               canary_candidates: 10}}
    """))
    argv = ["--quiet", "bench", "--config", str(config)]
    _killed_at("result.json", argv, nth=2)  # the oracle's cell finished, the target's result not yet renamed
    cells = tmp_path / "bench" / "cells"
    assert len(list(cells.glob("*/result.json"))) == 1
    assert not (tmp_path / "bench" / "leaderboard.json").exists()
    assert main(argv) == 0
    results = json.loads((tmp_path / "bench" / "cells.json").read_text())
    assert [r["cached"] for r in results].count(True) == 1 and all(r["status"] == "done" for r in results)
    assert (tmp_path / "bench" / "leaderboard.json").is_file()
    assert _leftovers(tmp_path / "bench") == []


def test_kill_during_import_gguf_writes_nothing_and_a_rerun_finishes(tmp_path):
    from chat_models import chatml_tokenizer, tiny_chat_model, write_llama_gguf

    tokenizer = chatml_tokenizer()
    gguf = write_llama_gguf(tiny_chat_model(tokenizer), tokenizer, tmp_path / "tiny.gguf")
    out = tmp_path / "imported"
    argv = ["import-gguf", str(gguf), "--out", str(out)]
    _killed_at("imported", argv)  # everything written and checked in the temporary directory, not yet renamed
    assert not out.exists()
    assert main(argv) == 0
    assert (out / "import.json").is_file() and _leftovers(tmp_path) == []
