"""`forgetkit eval` end to end on the micro benchmark: files, privacy, errors, and 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forgetkit.cli import main
from forgetkit.data.readers import read_records
from forgetkit.eval.command import LOG_FILE, SUMMARY_FILE

FAST = ["--max-new-tokens", "8", "--canary-candidates", "50", "--quiet"]


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "micro"
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run_dir}"]) == 0
    return run_dir


@pytest.fixture(scope="module")
def oracle_eval(micro_run) -> Path:
    out = micro_run.parent / "oracle-eval"
    assert main(["eval", "--model", str(micro_run / "oracle_forget10"), "--data", str(micro_run / "benchmark"),
                 "--out", str(out), *FAST]) == 0
    return out


@pytest.fixture(scope="module")
def target_eval(micro_run, oracle_eval) -> Path:
    out = micro_run.parent / "target-eval"
    assert main(["eval", "--model", str(micro_run / "target"), "--data", str(micro_run / "benchmark"),
                 "--oracle-log", str(oracle_eval), "--out", str(out), *FAST]) == 0
    return out


def test_writes_a_tofu_layout_log_and_a_summary(micro_run, target_eval, oracle_eval):
    log = json.loads((target_eval / LOG_FILE).read_text())
    assert set(log) == {"eval_log_forget.json", "eval_log.json", "eval_log_holdout.json",
                        "eval_real_world_wo_options.json"}
    forget = log["eval_log_forget.json"]
    ids = [r.id for r in read_records(micro_run / "benchmark" / "forget10.jsonl")]
    for key in ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "truth_ratio", "rougeL_recall",
                "extraction_strength", "mia_min_k", "avg_gt_loss_paraphrased_question"):
        assert list(forget[key]) == ids, key
    assert all(len(v) == 3 for v in forget["average_perturb_loss"].values())

    summary = json.loads((target_eval / SUMMARY_FILE).read_text())
    assert 0 <= summary["forget_quality"] <= 1
    assert 0 < summary["model_utility"] <= 1 or summary["model_utility"] == 0
    from forgetkit.eval.command import aggregate_logs  # the headline numbers are the written logs' own

    again = aggregate_logs(str(target_eval), str(oracle_eval))
    assert summary["forget_quality"] == again["forget_quality"] and summary["model_utility"] == again["model_utility"]
    assert set(summary["mia"]["auc"]) == {"loss", "zlib", "min_k", "min_k_plus_plus", "gradnorm"}
    assert "holdout = 1" in summary["mia"]["orientation"]
    assert summary["mia"]["privleak"] is not None
    memo = summary["memorisation"]
    assert {"verbatim_rougeL_f1", "canary_exposure_forget", "canary_exposure_holdout"} <= set(memo)
    assert summary["utility"]["heldout_perplexity"] > 1
    assert summary["cost"]["sequences_scored"] > 0 and summary["cost"]["tokens_per_s"] > 0


def test_forget_data_appears_only_as_ids_and_hashes(micro_run, target_eval):
    text = (target_eval / LOG_FILE).read_text() + (target_eval / SUMMARY_FILE).read_text()
    for r in read_records(micro_run / "benchmark" / "forget10.jsonl"):
        assert r.question not in text and r.answer not in text


def test_oracle_against_itself_has_forget_quality_one_and_no_privacy_leak(micro_run, oracle_eval, tmp_path):
    out = tmp_path / "self"
    assert main(["eval", "--model", str(micro_run / "oracle_forget10"), "--data", str(micro_run / "benchmark"),
                 "--oracle-log", str(oracle_eval / LOG_FILE), "--out", str(out), "--no-gradnorm", *FAST]) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["forget_quality"] == 1.0
    assert summary["mia"]["privleak"] == 0.0
    assert "gradnorm" not in summary["mia"]["auc"]


def test_user_files_and_include_text(micro_run, tmp_path, capsys):
    bench = micro_run / "benchmark"
    out = tmp_path / "files"
    assert main(["eval", "--model", str(micro_run / "target"), "--forget", str(bench / "forget01.jsonl"),
                 "--holdout", str(bench / "holdout01.jsonl"), "--reference-model", str(micro_run / "base"),
                 "--include-text", "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "reference=" in printed
    assert "Forget quality: missing: no oracle log given" in printed and "MIA AUC" in printed
    log = json.loads((out / LOG_FILE).read_text())
    assert set(log) == {"eval_log_forget.json", "eval_log_holdout.json"}
    record = read_records(bench / "forget01.jsonl")[0]
    question, _, answer = log["eval_log_forget.json"]["generated_text"][record.id]
    assert (question, answer) == (record.question, record.answer)


def test_bad_input_is_a_one_line_error_and_writes_nothing(micro_run, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["eval", "--model", str(micro_run / "target"), "--out", str(out), *FAST]
    assert main([*args, "--data", str(micro_run / "benchmark"), "--split", "forget50"]) == 2
    assert "no split 'forget50'" in capsys.readouterr().err

    assert main(args) == 2
    assert "give --data DIR" in capsys.readouterr().err

    bad = tmp_path / "canaries.jsonl"
    bad.write_text('{"prefix": "The code is ", "secret": "12a4"}\n')
    assert main([*args, "--data", str(micro_run / "benchmark"), "--canaries", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "secret" in err and "line 1" in err and "Traceback" not in err

    oracle = tmp_path / "oracle.json"
    oracle.write_text("[1, 2]")
    assert main([*args, "--data", str(micro_run / "benchmark"), "--oracle-log", str(oracle)]) == 2
    assert "not an evaluation log" in capsys.readouterr().err
    assert not out.exists()


def _numbers(log: dict) -> dict:
    return {(s, m, k): v for s, metrics in log.items() for m, per in metrics.items() for k, v in per.items()}


def test_two_processes_give_the_results_of_one(micro_run, tmp_path):
    args = ["eval", "--model", str(micro_run / "target"), "--data", str(micro_run / "benchmark"), "--include-text",
            *FAST]
    outs = {1: tmp_path / "p1", 2: tmp_path / "p2"}
    assert main([*args, "--out", str(outs[1])]) == 0
    # accelerate's --cpu launcher starts one process (more need mpirun); --multi_gpu starts them
    # with torchrun, and forgetkit picks CPU and gloo when there is no GPU.
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "forgetkit.cli", "--quiet", *args, "--out", str(outs[2])]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("Forget quality") == 1  # only the main process prints
    one, two = (_numbers(json.loads((outs[n] / LOG_FILE).read_text())) for n in (1, 2))
    assert one.keys() == two.keys()
    for key, value in one.items():
        if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], str)):
            assert value == two[key], key  # hashes and generations: identical
        else:
            # float32 rounding: the head runs on each shard's own labelled rows (Min-K%++ amplifies it to ~1e-6)
            np.testing.assert_allclose(value, two[key], rtol=1e-5, atol=1e-5, err_msg=str(key))
    s1, s2 = (json.loads((outs[n] / SUMMARY_FILE).read_text()) for n in (1, 2))
    assert s2["cost"]["processes"] == 2
    assert s1["mia"]["auc"] == pytest.approx(s2["mia"]["auc"])


def test_lm_eval_tasks_from_the_command_line(micro_run, tmp_path, capsys):
    tasks = Path(__file__).parent / "fixtures" / "lm_eval_tasks"
    include = tmp_path / "tasks"
    include.mkdir()
    # lm_eval resolves a task's data_files against the working directory: point it at the fixture.
    yaml_text = (tasks / "forgetkit_tiny_mc.yaml").read_text()
    (include / "forgetkit_tiny_mc.yaml").write_text(
        yaml_text.replace("test: tiny_mc.jsonl", f"test: {tasks / 'tiny_mc.jsonl'}"))
    out = tmp_path / "lm"
    assert main(["eval", "--model", str(micro_run / "target"), "--forget", str(micro_run / "benchmark" /
                 "forget01.jsonl"), "--no-gradnorm", "--lm-eval-tasks", "forgetkit_tiny_mc", "--lm-eval-include",
                 str(include), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "lm-eval forgetkit_tiny_mc: " in printed and "acc,none=" in printed
    metrics = json.loads((out / SUMMARY_FILE).read_text())["lm_eval"]["forgetkit_tiny_mc"]
    assert metrics["sample_len"] == 8 and 0 <= metrics["acc,none"] <= 1


def test_eval_speed_benchmark_runs_and_checks_equality(micro_run, tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_speed.py"
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(script), "--run-dir", str(micro_run), "--limit", "3",
                             "--max-new-tokens", "4", "--json", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "speed-up" in result.stdout
    speed = json.loads(out.read_text())
    assert speed["max_abs_diff_avg_nll"] <= 1e-4 and speed["generation_mismatches"] == 0
    assert speed["texts_scored"] > 0 and speed["batched_s"]["total"] > 0


def test_eval_flags_are_the_settings_fields_and_unlearn_takes_them_as_eval_flags(micro_run, tmp_path):
    """One EvalSettings behind `forgetkit eval`'s flags and `unlearn --eval`'s (`--eval-…`): every field with a
    help is a flag of both, parsed into the same settings, and unlearn's evaluation runs with them."""
    import dataclasses

    from forgetkit.cli import build_parser, settings_of
    from forgetkit.eval.settings import EvalSettings

    parser = build_parser()
    flags = {"--retain-limit": "7", "--min-k": "0.2", "--smoothing": "tokens:0.1", "--seed": "3"}
    given = [x for flag, value in flags.items() for x in (flag, value)] + ["--no-gradnorm", "--weat", "--include-text"]
    wanted = EvalSettings(retain_limit=7, min_k=0.2, smoothing="tokens:0.1", seed=3, gradnorm=False, weat="shipped",
                          include_text=True)
    args = parser.parse_args(["eval", "--model", "m", "--out", "o", *given])
    assert settings_of(args, EvalSettings) == wanted
    args = parser.parse_args(["unlearn", "--out", "o", *[x.replace("--", "--eval-", 1) for x in given]])
    assert settings_of(args, EvalSettings, prefix="eval-") == wanted
    defaults = parser.parse_args(["unlearn", "--out", "o"])
    assert settings_of(defaults, EvalSettings, prefix="eval-") == EvalSettings()
    assert all("help" in f.metadata for f in dataclasses.fields(EvalSettings))  # no setting without its flag

    out = tmp_path / "unlearned"
    assert main(["unlearn", "--run", str(micro_run), "--method", "graddiff", "--out", str(out), "train.epochs=1",
                 "--eval", "--eval-retain-limit", "5", "--eval-max-new-tokens", "4", "--eval-canary-candidates", "20",
                 "--eval-no-gradnorm", "--quiet"]) == 0
    summary = json.loads((out / "eval" / SUMMARY_FILE).read_text())
    assert summary["sets"]["retain"]["examples"] == 5
    assert summary["settings"]["max_new_tokens"] == 4 and summary["settings"]["gradnorm"] is False
