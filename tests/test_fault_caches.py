"""Damaged caches recompute (issue 35): a cache entry whose JSON or safetensors does not parse (or whose weights no
longer match their recorded fingerprint) is reported once, set aside as ``NAME.damaged`` with its bytes, and
recomputed: bench cells (``result.json``, attack files, the evaluation, the finished unlearning run, ``crash.json``),
prepared stages (``stage.json``, weights) and the prepare summary, and trained shards. Each test damages a copy of
something the session already computed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from forgetkit.config import build
from forgetkit.errors import DataError
from forgetkit.io import dir_hash

TINY_EVAL = {"retain_limit": 5, "quick_retain": 5, "max_new_tokens": 4, "verbatim_new_tokens": 4,
             "canary_candidates": 5, "world_facts_limit": 4}
DAMAGES = {"malformed": b'{"status": "do', "not an object": b"[1, 2]", "not UTF-8": b'{"a": "\xff\xfe"}'}


def _damage(path: Path, data: bytes = DAMAGES["malformed"]) -> bytes:
    path.write_bytes(data)
    return data


def _warned_once(err: str, path: Path) -> None:
    """Exactly one set-aside warning is in ``err`` (what went to stderr), and it names ``path``."""
    lines = [line for line in err.splitlines() if "set aside as" in line]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {path}:"), lines


def _flip_weights(path: Path) -> None:
    """Change a safetensors file's first tensor (the file still parses)."""
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + torch.ones_like(tensors[name])
    save_file(tensors, path, metadata={"format": "pt"})


def _set_aside(path: Path, data: bytes) -> None:
    """The file ``path`` was moved to ``path.damaged``, which holds the damaged bytes ``data``."""
    assert path.with_name(path.name + ".damaged").read_bytes() == data


# -- bench cells ---------------------------------------------------------------------------------------------
def _bench_config(run: Path, out: Path):
    from forgetkit.bench.config import BenchConfig

    return build(BenchConfig, {
        "name": "faults", "run": str(run), "out": str(out), "seeds": [0],
        "methods": [{"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}}],
        "attacks": {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": True, "sequential": 0},
        "eval": TINY_EVAL})


@pytest.fixture(scope="module")
def computed_bench(unlearn_run, tmp_path_factory):
    """The oracle reference and one npo cell computed once (read only: tests damage a copy)."""
    from forgetkit.bench.runner import Bench

    out = tmp_path_factory.mktemp("faults") / "bench"
    bench = Bench(_bench_config(unlearn_run, out), quiet=True)
    cells = {c.method: c for c in bench.grid()}
    results = {name: bench.result_of(cells[name]) for name in ("oracle", "npo")}
    return {"run": unlearn_run, "out": out, "cells": cells, "results": results}


def _bench_copy(computed: dict, tmp_path: Path):
    """A bench over a copy of the computed bench directory, and its cells' directories by method."""
    from forgetkit.bench.runner import Bench

    out = tmp_path / "bench"
    shutil.copytree(computed["out"], out)
    bench = Bench(_bench_config(computed["run"], out), quiet=True)
    return bench, {name: out / "cells" / cell.id for name, cell in computed["cells"].items()}


def _recomputed(result: dict, original: dict) -> None:
    assert result["cached"] is False and result["status"] == "done"
    assert result["metrics"] == original["metrics"] and result["attacks"] == original["attacks"]


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_cell_result_is_set_aside_and_the_cell_recomputed(computed_bench, tmp_path, capsys, damage):
    bench, dirs = _bench_copy(computed_bench, tmp_path)
    result_file = dirs["oracle"] / "result.json"
    data = _damage(result_file, DAMAGES[damage])
    capsys.readouterr()
    result = bench.result_of(computed_bench["cells"]["oracle"])
    _warned_once(capsys.readouterr().err, result_file)
    _set_aside(result_file, data)
    _recomputed(result, computed_bench["results"]["oracle"])
    assert json.loads(result_file.read_text())["metrics"] == result["metrics"]


def test_report_only_counts_a_damaged_result_or_crash_record_as_missing(computed_bench, tmp_path, capsys):
    bench, dirs = _bench_copy(computed_bench, tmp_path)
    data = _damage(dirs["oracle"] / "result.json")
    dirs["target"].mkdir(parents=True)
    crash = _damage(dirs["target"] / "crash.json", DAMAGES["not an object"])
    capsys.readouterr()
    results, missing = bench.collect()
    assert [r["cell"]["method"] for r in results] == ["npo"]
    assert set(missing) == {dirs["oracle"].name, dirs["target"].name}
    _set_aside(dirs["oracle"] / "result.json", data)
    _set_aside(dirs["target"] / "crash.json", crash)
    assert len([line for line in capsys.readouterr().err.splitlines() if "set aside as" in line]) == 2


def test_damaged_attack_file_is_set_aside_and_the_attack_run_again(computed_bench, tmp_path, capsys):
    bench, dirs = _bench_copy(computed_bench, tmp_path)
    (dirs["npo"] / "result.json").unlink()  # the cell resumes: its unlearning and evaluation are read
    prompt = dirs["npo"] / "attacks" / "prompt.json"
    data = _damage(prompt)
    capsys.readouterr()
    result = bench.result_of(computed_bench["cells"]["npo"])
    _warned_once(capsys.readouterr().err, prompt)
    _set_aside(prompt, data)
    _recomputed(result, computed_bench["results"]["npo"])
    assert json.loads(prompt.read_text()) == computed_bench["results"]["npo"]["attacks"]["prompt"]


def test_damaged_unlearning_run_is_set_aside_and_run_again(computed_bench, tmp_path, capsys):
    bench, dirs = _bench_copy(computed_bench, tmp_path)
    (dirs["npo"] / "result.json").unlink()
    unlearn_dir = dirs["npo"] / "unlearn"
    original = json.loads((unlearn_dir / "audit.json").read_text())
    data = _damage(unlearn_dir / "audit.json")
    capsys.readouterr()
    result = bench.result_of(computed_bench["cells"]["npo"])  # before: "refused" (not a finished unlearn run)
    _warned_once(capsys.readouterr().err, unlearn_dir)
    assert (dirs["npo"] / "unlearn.damaged" / "audit.json").read_bytes() == data
    _recomputed(result, computed_bench["results"]["npo"])
    again = json.loads((unlearn_dir / "audit.json").read_text())
    assert again["output"]["hash"] == original["output"]["hash"]  # the same unlearned adapter, retrained


def test_damaged_oracle_evaluation_is_set_aside_and_evaluated_again(computed_bench, tmp_path, capsys):
    """A method cell reads the oracle's evaluation log (Forget Quality's reference): a damaged one is set aside and
    the oracle evaluated again into its place."""
    bench, dirs = _bench_copy(computed_bench, tmp_path)
    (dirs["npo"] / "result.json").unlink()
    shutil.rmtree(dirs["npo"] / "eval")
    oracle_eval = dirs["oracle"] / "eval"
    log = (oracle_eval / "eval_log_aggregated.json").read_bytes()
    data = _damage(oracle_eval / "eval_log_aggregated.json", log[: len(log) // 2])
    capsys.readouterr()
    result = bench.result_of(computed_bench["cells"]["npo"])
    _warned_once(capsys.readouterr().err, oracle_eval)
    assert (dirs["oracle"] / "eval.damaged" / "eval_log_aggregated.json").read_bytes() == data
    assert (oracle_eval / "eval_log_aggregated.json").read_bytes() == log
    _recomputed(result, computed_bench["results"]["npo"])


# -- prepared stages -----------------------------------------------------------------------------------------
def _run_copy(unlearn_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(unlearn_run, run)
    return run


def _prepare(run: Path, capsys) -> tuple[str, str]:
    """``forgetkit prepare --config micro`` into ``run``: what it printed to stdout and to stderr."""
    from forgetkit.cli import main

    capsys.readouterr()
    assert main(["prepare", "--config", "micro", f"run_dir={run}"]) == 0
    return capsys.readouterr()


def test_damaged_stage_record_is_set_aside_and_the_stage_rebuilt(unlearn_run, tmp_path, capsys):
    run = _run_copy(unlearn_run, tmp_path)
    before = json.loads((run / "edits" / "stage.json").read_text())
    data = _damage(run / "edits" / "stage.json")
    out, err = _prepare(run, capsys)
    _warned_once(err, run / "edits")
    assert "[edits] building" in out and "[target] cached" in out
    assert (run / "edits.damaged" / "stage.json").read_bytes() == data
    after = json.loads((run / "edits" / "stage.json").read_text())
    assert after["key"] == before["key"] and after["counts"] == before["counts"]
    assert {p.name: p.read_bytes() for p in (run / "edits").glob("*.jsonl")} == \
        {p.name: p.read_bytes() for p in (unlearn_run / "edits").glob("*.jsonl")}


def test_stage_whose_weights_changed_is_set_aside_and_rebuilt(unlearn_run, tmp_path, capsys):
    """Weights that still parse but no longer match the fingerprint in stage.json: rebuilt, to the same bytes."""
    run = _run_copy(unlearn_run, tmp_path)
    record = json.loads((run / "target" / "stage.json").read_text())
    assert record["weights_hash"] == dir_hash(run / "target", "**/*.safetensors")
    weights = run / "target" / "model.safetensors"
    _flip_weights(weights)
    flipped = weights.read_bytes()
    out, err = _prepare(run, capsys)
    _warned_once(err, run / "target")
    assert "[target] building" in out and "[base] cached" in out and "[oracle_forget10] cached" in out
    assert (run / "target.damaged" / "model.safetensors").read_bytes() == flipped
    rebuilt = json.loads((run / "target" / "stage.json").read_text())
    assert rebuilt["key"] == record["key"]  # the fingerprint is not part of the key
    assert rebuilt["weights_hash"] == dir_hash(run / "target", "**/*.safetensors") == record["weights_hash"]


def test_stage_recorded_before_fingerprints_is_kept_unless_its_weights_do_not_parse(unlearn_run, tmp_path, capsys):
    run = _run_copy(unlearn_run, tmp_path)
    for stage in run.glob("*/stage.json"):  # as prepare wrote them before weights_hash
        record = json.loads(stage.read_text())
        record.pop("weights_hash", None)
        stage.write_text(json.dumps(record, indent=2) + "\n")
    oracle_record = (run / "oracle_forget10" / "stage.json").read_bytes()
    weights = run / "target" / "model.safetensors"
    truncated = weights.read_bytes()[:-9]
    weights.write_bytes(truncated)
    out, err = _prepare(run, capsys)
    _warned_once(err, run / "target")
    assert "[target] building" in out and "[base] cached" in out and "[oracle_forget10] cached" in out
    assert (run / "oracle_forget10" / "stage.json").read_bytes() == oracle_record  # kept as it was
    assert (run / "target.damaged" / "model.safetensors").read_bytes() == truncated
    rebuilt = json.loads((run / "target" / "stage.json").read_text())
    assert rebuilt["weights_hash"] == dir_hash(run / "target", "**/*.safetensors")


def test_damaged_prepare_summary_is_set_aside_and_measured_again(unlearn_run, tmp_path, capsys):
    run = _run_copy(unlearn_run, tmp_path)
    original = json.loads((run / "summary.json").read_text())
    data = _damage(run / "summary.json", DAMAGES["not UTF-8"])
    out, err = _prepare(run, capsys)
    _warned_once(err, run / "summary.json")
    assert "building" not in out
    _set_aside(run / "summary.json", data)
    assert json.loads((run / "summary.json").read_text())["exact_match"] == original["exact_match"]


def test_reading_a_damaged_stage_record_is_one_line_telling_to_prepare_again(unlearn_run, tmp_path):
    from forgetkit.runs import PreparedRun

    run = tmp_path / "run"
    shutil.copytree(unlearn_run / "benchmark", run / "benchmark")
    shutil.copytree(unlearn_run / "target", run / "target")
    _damage(run / "target" / "stage.json")
    with pytest.raises(DataError) as err:
        PreparedRun(run, stages=("target",)).stage("target")
    message = str(err.value)
    assert len(message.splitlines()) == 1 and str(run / "target" / "stage.json") in message
    assert "forgetkit prepare" in message


# -- shards ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_shards(unlearn_run, tmp_path_factory):
    from forgetkit.data.readers import read_records
    from forgetkit.exact.sharded import ShardConfig, shard_train
    from forgetkit.train import TrainConfig

    records = read_records(unlearn_run / "benchmark" / "full.jsonl")
    config = ShardConfig(shards=2, train=TrainConfig(epochs=1, batch_size=8, lr=3e-3))
    out = tmp_path_factory.mktemp("faults") / "shards"
    shard_train(unlearn_run / "base", records, out, config)
    return {"records": records, "config": config, "out": out, "base": unlearn_run / "base"}


DAMAGED_SHARDS = {
    "shard.json": lambda shard: _damage(shard / "shard.json"),
    "adapter_config.json": lambda shard: _damage(shard / "adapter_config.json", DAMAGES["not an object"]),
    "truncated weights": lambda shard: _damage(shard / "adapter_model.safetensors",
                                               (shard / "adapter_model.safetensors").read_bytes()[:-9]),
    "changed weights": lambda shard: _flip_weights(shard / "adapter_model.safetensors"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_SHARDS))
def test_damaged_shard_is_set_aside_and_retrained(trained_shards, tmp_path, capsys, damage):
    from forgetkit.exact.sharded import shard_train

    out = tmp_path / "shards"
    shutil.copytree(trained_shards["out"], out)
    original = (out / "shard_0" / "adapter_model.safetensors").read_bytes()
    untouched = (out / "shard_1" / "adapter_model.safetensors").stat().st_mtime_ns
    DAMAGED_SHARDS[damage](out / "shard_0")
    damaged = {p.name: p.read_bytes() for p in (out / "shard_0").iterdir()}
    capsys.readouterr()
    shard_train(trained_shards["base"], trained_shards["records"], out, trained_shards["config"])
    _warned_once(capsys.readouterr().err, out / "shard_0")
    assert {p.name: p.read_bytes() for p in (out / "shard_0.damaged").iterdir()} == damaged
    assert (out / "shard_0" / "adapter_model.safetensors").read_bytes() == original  # retrained: the same adapter
    assert (out / "shard_1" / "adapter_model.safetensors").stat().st_mtime_ns == untouched
