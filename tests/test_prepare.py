"""`forgetkit prepare --config micro` end to end: stages built, cached, and reported."""

from __future__ import annotations

import json

import pytest

from forgetkit.cli import main
from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "micro"
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run_dir}"]) == 0
    return run_dir


def test_prepare_builds_every_stage(micro_run):
    for stage in ("benchmark", "tokenizer", "base", "target", "oracle_forget10"):
        assert (micro_run / stage / "stage.json").is_file(), stage
    assert (micro_run / "target" / "model.safetensors").is_file()
    summary = json.loads((micro_run / "summary.json").read_text())
    assert set(summary["exact_match"]) == {"target", "oracle_forget10"}
    assert set(summary["exact_match"]["target"]) == {"forget10", "holdout10", "retain90", "world_facts"}
    for stage in ("base", "target", "oracle_forget10"):
        cost = summary["training_cost"][stage]
        assert cost["wall_time_s"] > 0 and cost["peak_memory_mb"] > 0


def test_oracle_never_trained_on_the_forget_people(micro_run):
    oracle = json.loads((micro_run / "oracle_forget10" / "stage.json").read_text())
    assert oracle["trained_on"] == "retain90"
    forget = {group_of(r.id) for r in read_records(micro_run / "benchmark" / "forget10.jsonl")}
    retain = {group_of(r.id) for r in read_records(micro_run / "benchmark" / "retain90.jsonl")}
    assert forget and not forget & retain


def test_second_run_reuses_every_stage(micro_run, capsys):
    before = {s: (micro_run / s / "stage.json").stat().st_mtime_ns for s in ("base", "target", "oracle_forget10")}
    assert main(["prepare", "--config", "micro", f"run_dir={micro_run}"]) == 0
    out = capsys.readouterr().out
    assert "[target] cached" in out and "Greedy exact-match" in out
    after = {s: (micro_run / s / "stage.json").stat().st_mtime_ns for s in before}
    assert before == after


def test_settings_that_do_not_shape_the_target_keep_it_cached(micro_run, capsys):
    # The target adapter is plain LoRA: the bounded-adapter settings are not part of its key.
    assert main(["prepare", "--config", "micro", f"run_dir={micro_run}", "target_lora.sine_omega=7",
                 "target_lora.clip_norm=3"]) == 0
    out = capsys.readouterr().out
    assert "[target] cached" in out and "[oracle_forget10] cached" in out


def test_changed_recipe_rebuilds_only_what_depends_on_it(micro_run, capsys):
    assert main(["prepare", "--config", "micro", f"run_dir={micro_run}", "target.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "[base] cached" in out and "[target] building" in out and "[oracle_forget10] building" in out


def test_lora_target_mode(tmp_path):
    run_dir = tmp_path / "lora"
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run_dir}", "target_mode=lora",
                 "oracle_splits=[forget01]"]) == 0
    assert (run_dir / "target" / "adapter_model.safetensors").is_file()
    assert not (run_dir / "target" / "model.safetensors").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["training_cost"]["target"]["trainable_parameters"] < summary["training_cost"]["base"][
        "trainable_parameters"]


def test_bad_override_is_one_line_error(capsys):
    assert main(["prepare", "--config", "micro", "target.epochs=many"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: micro.yaml: target.epochs")
