"""Bad input anywhere: a table of malformed inputs across every command.

Each case runs the command in process on the micro run (or files made from it) and checks what a
user sees: exit code 2, one short message naming the file, record and field (or the setting),
no traceback, and nothing written (the case's directory and the run are unchanged).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from forgetkit.cli import main


@dataclass
class Case:
    name: str
    argv: Callable[[Path, Path], list[str]]  # (case directory, micro run) -> arguments
    expect: str  # a fragment of the one-line message
    setup: Callable[[Path, Path], None] | None = None


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


GOOD_QA = '{"id": "a-1", "question": "Who is Ada?", "answer": "A poet."}\n'


def _qa(d: Path, name: str, text: str | bytes) -> None:
    _write(d / "in" / name, text)


def _model_copy(d: Path, run: Path, name: str = "model") -> Path:
    dst = d / "in" / name
    shutil.copytree(run / "target", dst)
    (dst / "stage.json").unlink()
    return dst


def _truncate(path: Path, keep: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def _model_with(change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    def setup(d: Path, run: Path) -> None:
        change(_model_copy(d, run))
        _qa(d, "forget.jsonl", GOOD_QA)
    return setup


def _lora_tensors(dst: Path, name: str, a: tuple[int, int], b: tuple[int, int]) -> None:
    import torch
    from safetensors.torch import save_file

    prefix = f"base_model.model.model.layers.0.{name}"
    save_file({f"{prefix}.lora_A.weight": torch.zeros(*a), f"{prefix}.lora_B.weight": torch.zeros(*b)},
              str(dst / "adapter_model.safetensors"))


def _adapter_with(change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """A rank-4 LoRA adapter on the micro model's first q_proj (valid), then ``change`` applied to it."""
    def setup(d: Path, run: Path) -> None:
        dst = d / "in" / "adapter"
        dst.mkdir(parents=True)
        (dst / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
                                                             "target_modules": ["q_proj"]}))
        hidden = json.loads((run / "target" / "config.json").read_text())["hidden_size"]
        _lora_tensors(dst, "self_attn.q_proj", (4, hidden), (hidden, 4))
        change(dst)
        _qa(d, "forget.jsonl", GOOD_QA)
    return setup


def _adapter_for_another_model(dst: Path) -> None:
    """A LoRA adapter on q_proj whose in-features are not the micro model's."""
    _lora_tensors(dst, "self_attn.q_proj", (4, 999), (999, 4))


def _adapter_on_a_missing_module(dst: Path) -> None:
    _lora_tensors(dst, "mlp.no_such_proj", (4, 8), (8, 4))


def _run_copy(d: Path, run: Path, drop: tuple[str, ...] = ()) -> Path:
    dst = d / "in" / "run"
    shutil.copytree(run, dst, ignore=shutil.ignore_patterns(*drop))
    return dst


def _ledger_not_sqlite(d: Path, run: Path) -> None:
    _write(d / "in" / "ledger.sqlite", "this is not a database\n" * 10)


def _good_ledger(d: Path, run: Path) -> None:
    from forgetkit.audit.ledger import SCHEMA

    (d / "in").mkdir(parents=True)
    conn = sqlite3.connect(d / "in" / "ledger.sqlite")
    conn.execute(SCHEMA)
    conn.commit()
    conn.close()


def _eval_log(d: Path, run: Path) -> None:
    _write(d / "in" / "log.json", json.dumps({"eval_log_forget.json": {"avg_gt_loss": {"a": 1.0}}}))


def _tiny_gguf(d: Path, run: Path) -> None:
    _write(d / "in" / "model.gguf", b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 8)


def _stage_format_from_the_future(d: Path, run: Path) -> None:
    dst = _run_copy(d, run)
    (dst / "run.json").write_text(json.dumps({"format": 99, "forgetkit": "9.9.9"}))


def _bench_yaml(text: str) -> Callable[[Path, Path], None]:
    def setup(d: Path, run: Path) -> None:
        _write(d / "in" / "bench.yaml", text.replace("RUN", str(run)).replace("D", str(d)))
    return setup


U = ["--quiet", "unlearn"]
E = ["--quiet", "eval"]


def _unlearn_files(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda d, r: [*U, "--method", "graddiff", "--model", str(r / "target"), "--forget",
                         str(d / "in/forget.jsonl"), "--retain", str(r / "benchmark/retain90.jsonl"),
                         "--out", str(d / "out"), *extra]


def _unlearn_model(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda d, r: [*U, "--method", "npo", "--model", str(d / "in/model"), "--forget",
                         str(d / "in/forget.jsonl"), "--out", str(d / "out"), *extra]


def _unlearn_run(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda d, r: [*U, "--method", "graddiff", "--run", str(r), "--out", str(d / "out"), *extra]


def _eval_files(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda d, r: [*E, "--model", str(r / "target"), "--forget", str(d / "in/forget.jsonl"),
                         "--out", str(d / "out"), *extra]


def _with_forget(text: str | bytes) -> Callable[[Path, Path], None]:
    return lambda d, r: _qa(d, "forget.jsonl", text)


CASES = [
    # --- unlearn: output paths
    Case("unlearn out is a file", _unlearn_run(), "is an existing file",
         lambda d, r: _write(d / "out", "x")),
    Case("unlearn out inside the model", lambda d, r: [*U, "--method", "npo", "--model", str(d / "in/model"),
                                                       "--forget", str(d / "in/forget.jsonl"),
                                                       "--out", str(d / "in/model/unlearned")],
         "inside the input", _model_with(lambda m: None)),
    Case("unlearn out is the forget file", lambda d, r: [*U, "--method", "npo", "--model", str(r / "target"),
                                                         "--forget", str(d / "in/forget.jsonl"),
                                                         "--out", str(d / "in/forget.jsonl")],
         "is an existing file", _with_forget(GOOD_QA)),
    Case("unlearn out is the run", lambda d, r: [*U, "--method", "graddiff", "--run", str(r), "--out", str(r)],
         "is the input"),
    Case("shard-train out is the run", lambda d, r: ["--quiet", "shard-train", "--run", str(r), "--out", str(r)],
         "is the input"),
    Case("unlearn out under a file", lambda d, r: [*U, "--method", "graddiff", "--run", str(r),
                                                   "--out", str(d / "afile/out")],
         "not a directory", lambda d, r: _write(d / "afile", "x")),
    Case("unlearn out unwritable", lambda d, r: [*U, "--method", "graddiff", "--run", str(r),
                                                 "--out", "/proc/forgetkit-out"], "not writable"),
    # --- unlearn: model directories
    Case("unlearn model missing", _unlearn_model(), "model directory not found", _with_forget(GOOD_QA)),
    Case("unlearn model is a file", _unlearn_model(), "not a directory",
         lambda d, r: (_write(d / "in/model", "x"), _qa(d, "forget.jsonl", GOOD_QA))),
    Case("unlearn model without config", _unlearn_model(), "no config.json",
         _model_with(lambda m: (m / "config.json").unlink())),
    Case("unlearn model config not JSON", _unlearn_model(), "config.json: line 1: malformed JSON",
         _model_with(lambda m: (m / "config.json").write_text("{nope"))),
    Case("unlearn model config without model_type", _unlearn_model(), "field 'model_type': missing",
         _model_with(lambda m: (m / "config.json").write_text("{}"))),
    Case("unlearn model type unknown", _unlearn_model(), "field 'model_type'",
         _model_with(lambda m: (m / "config.json").write_text('{"model_type": "no-such-architecture"}'))),
    Case("unlearn model weights truncated", _unlearn_model(), "model.safetensors: truncated or corrupt",
         _model_with(lambda m: _truncate(m / "model.safetensors", 300))),
    Case("unlearn model weights garbage", _unlearn_model(), "model.safetensors: truncated or corrupt",
         _model_with(lambda m: (m / "model.safetensors").write_bytes(b"\xff" * 64))),
    Case("unlearn model weights missing", _unlearn_model(), "no weights",
         _model_with(lambda m: (m / "model.safetensors").unlink())),
    Case("unlearn model pickled weights only", _unlearn_model(), "never unpickles",
         _model_with(lambda m: (m / "model.safetensors").rename(m / "pytorch_model.bin"))),
    Case("unlearn model tokenizer missing", _unlearn_model(), "no tokenizer",
         _model_with(lambda m: [(m / f).unlink() for f in ("tokenizer.json", "tokenizer_config.json")])),
    Case("unlearn model tokenizer corrupt", _unlearn_model(), "tokenizer.json",
         _model_with(lambda m: (m / "tokenizer.json").write_text("{not json"))),
    # --- unlearn: adapters
    Case("unlearn adapter missing", _unlearn_files("--adapter", "/nonexistent/adapter"),
         "adapter directory not found", _with_forget(GOOD_QA)),
    Case("unlearn adapter without config", _unlearn_files("--adapter", "ADAPTER"), "no adapter_config.json",
         _adapter_with(lambda a: (a / "adapter_config.json").unlink())),
    Case("unlearn adapter unknown type", _unlearn_files("--adapter", "ADAPTER"), "field 'peft_type'",
         _adapter_with(lambda a: (a / "adapter_config.json").write_text('{"peft_type": "PREFIX_TUNING"}'))),
    Case("unlearn adapter config not JSON", _unlearn_files("--adapter", "ADAPTER"), "adapter_config.json",
         _adapter_with(lambda a: (a / "adapter_config.json").write_text("[1, 2"))),
    Case("unlearn adapter weights truncated", _unlearn_files("--adapter", "ADAPTER"), "truncated or corrupt",
         _adapter_with(lambda a: (a / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{"))),
    Case("unlearn adapter pickled", _unlearn_files("--adapter", "ADAPTER"), "never unpickles",
         _adapter_with(lambda a: (a / "adapter_model.safetensors").rename(a / "adapter_model.bin"))),
    Case("unlearn adapter for another model", _unlearn_files("--adapter", "ADAPTER"), "another base model",
         _adapter_with(_adapter_for_another_model)),
    Case("unlearn adapter on a missing module", _unlearn_files("--adapter", "ADAPTER"), "no module",
         _adapter_with(_adapter_on_a_missing_module)),
    # --- unlearn: data files
    Case("unlearn forget missing", _unlearn_files(), "forget.jsonl: forget file not found"),
    Case("unlearn forget malformed JSON", _unlearn_files(), "line 2: malformed JSON",
         _with_forget(GOOD_QA + "{oops\n")),
    Case("unlearn forget invalid UTF-8", _unlearn_files(), "invalid UTF-8", _with_forget(b'{"a": "\xff"}\n')),
    Case("unlearn forget no answer", _unlearn_files(), "line 1: field 'answer': missing",
         _with_forget('{"id": "x", "question": "q?"}\n')),
    Case("unlearn forget answer a number", _unlearn_files(), "field 'answer'",
         _with_forget('{"id": "x", "question": "q?", "answer": 3}\n')),
    Case("unlearn forget duplicate ids", _unlearn_files(), "duplicate id 'a-1'", _with_forget(GOOD_QA * 2)),
    Case("unlearn forget empty", _unlearn_files(), "no records", _with_forget("")),
    Case("unlearn forget unsupported type", lambda d, r: [*U, "--method", "npo", "--model", str(r / "target"),
                                                          "--forget", str(d / "in/forget.txt"),
                                                          "--out", str(d / "out")],
         "unsupported file type", lambda d, r: _qa(d, "forget.txt", "hello")),
    Case("unlearn retain missing", lambda d, r: [*U, "--method", "graddiff", "--model", str(r / "target"),
                                                 "--forget", str(d / "in/forget.jsonl"), "--retain",
                                                 str(d / "in/none.jsonl"), "--out", str(d / "out")],
         "none.jsonl: retain file not found", _with_forget(GOOD_QA)),
    # --- unlearn: settings
    Case("unlearn unknown key", _unlearn_run("train.lrr=1"), "unknown key 'train.lrr'"),
    Case("unlearn wrong type", _unlearn_run("train.batch_size=many"), "train.batch_size: expected int"),
    Case("unlearn negative lr", _unlearn_run("train.lr=-0.1"), "train.lr"),
    Case("unlearn zero batch", _unlearn_run("train.batch_size=0"), "train.batch_size"),
    Case("unlearn negative epochs", _unlearn_run("train.epochs=-1"), "train.epochs"),
    Case("unlearn zero lora rank", _unlearn_run("lora.r=0"), "lora.r"),
    Case("unlearn bad method param", _unlearn_run("params.no_such=1"), "no_such"),
    Case("unlearn unknown mode", _unlearn_run("mode=half"), "mode must be one of"),
    Case("unlearn unknown method", lambda d, r: [*U, "--method", "nosuch", "--run", str(r), "--out",
                                                 str(d / "out")], "unknown method 'nosuch'"),
    Case("unlearn config file missing", lambda d, r: [*U, "--config", str(d / "none.yaml"), "--run", str(r),
                                                      "--out", str(d / "out")], "config file not found"),
    Case("unlearn config not YAML", lambda d, r: [*U, "--config", str(d / "in/bad.yaml"), "--run", str(r),
                                                  "--out", str(d / "out")], "not valid YAML",
         lambda d, r: _write(d / "in/bad.yaml", "a: [1, 2\n")),
    Case("unlearn override without =", _unlearn_run("train.lr"), "not of the form key=value"),
    # --- unlearn: prepared runs and ledgers
    Case("unlearn split missing", _unlearn_run("--split", "forget99"), "split 'forget99'"),
    Case("unlearn run not prepared", lambda d, r: [*U, "--method", "graddiff", "--run", str(d / "in"),
                                                   "--out", str(d / "out")], "not a prepared run",
         lambda d, r: (d / "in").mkdir()),
    Case("unlearn run without target", lambda d, r: [*U, "--method", "graddiff", "--run", str(d / "in/run"),
                                                     "--out", str(d / "out")], "stage 'target' missing",
         lambda d, r: _run_copy(d, r, drop=("target",))),
    Case("unlearn run of another version", lambda d, r: [*U, "--method", "graddiff", "--run",
                                                         str(d / "in/run"), "--out", str(d / "out")],
         "format 99", _stage_format_from_the_future),
    Case("unlearn ledger not SQLite", _unlearn_run("--ledger", "LEDGER"), "not an SQLite database",
         _ledger_not_sqlite),
    Case("unlearn ledger is a directory", _unlearn_run("--ledger", "DIR"), "is a directory",
         lambda d, r: (d / "in").mkdir()),
    Case("unlearn eval-every without run", _unlearn_files("--eval-every", "2"), "--eval-every needs --run",
         _with_forget(GOOD_QA)),
    Case("unlearn edits on a gradient method", _unlearn_run("--edits", "response"), "--edits is for"),
    # --- eval
    Case("eval out is a file", _eval_files(), "is an existing file",
         lambda d, r: (_qa(d, "forget.jsonl", GOOD_QA), _write(d / "out", "x"))),
    Case("eval model missing", lambda d, r: [*E, "--model", str(d / "none"), "--forget",
                                             str(d / "in/forget.jsonl"), "--out", str(d / "out")],
         "model directory not found", _with_forget(GOOD_QA)),
    Case("eval oracle log malformed", _eval_files("--oracle-log", "LOG"), "malformed JSON",
         lambda d, r: (_qa(d, "forget.jsonl", GOOD_QA), _write(d / "in/log.json", "{"))),
    Case("eval oracle log not a log", _eval_files("--oracle-log", "LOG"), "not an evaluation log",
         lambda d, r: (_qa(d, "forget.jsonl", GOOD_QA), _write(d / "in/log.json", "[]"))),
    Case("eval oracle log missing", _eval_files("--oracle-log", "LOG"), "log file not found",
         _with_forget(GOOD_QA)),
    Case("eval forget no question", _eval_files(), "field 'question': missing",
         _with_forget('{"id": "x", "answer": "a"}\n')),
    Case("eval data not a benchmark", lambda d, r: [*E, "--model", str(r / "target"), "--data", str(d / "in"),
                                                    "--out", str(d / "out")], "not a benchmark directory",
         lambda d, r: (d / "in").mkdir()),
    Case("eval split missing", lambda d, r: [*E, "--model", str(r / "target"), "--data",
                                             str(r / "benchmark"), "--split", "forget42", "--out",
                                             str(d / "out")], "split 'forget42'"),
    Case("eval zero batch", _eval_files("--batch-size", "0"), "--batch-size", _with_forget(GOOD_QA)),
    Case("eval negative new tokens", _eval_files("--max-new-tokens", "-1"), "--max-new-tokens",
         _with_forget(GOOD_QA)),
    Case("eval canaries malformed", _eval_files("--canaries", "CANARIES"), "field 'secret'",
         lambda d, r: (_qa(d, "forget.jsonl", GOOD_QA), _write(d / "in/canaries.jsonl",
                                                               '{"id": "c", "prefix": "p"}\n'))),
    Case("eval adapter unknown type", _eval_files("--adapter", "ADAPTER"), "field 'peft_type'",
         _adapter_with(lambda a: (a / "adapter_config.json").write_text('{"peft_type": "IA3"}'))),
    Case("eval reference model missing", _eval_files("--reference-model", "/nonexistent/ref"),
         "reference model directory not found", _with_forget(GOOD_QA)),
    Case("eval out inside the model", lambda d, r: [*E, "--model", str(d / "in/model"), "--forget",
                                                    str(d / "in/forget.jsonl"), "--out", str(d / "in/model")],
         "inside the input", _model_with(lambda m: None)),
    # --- aggregate
    Case("aggregate log missing", lambda d, r: ["aggregate", "--logs", str(d / "none.json")], "log file not found"),
    Case("aggregate log malformed", lambda d, r: ["aggregate", "--logs", str(d / "in/log.json")],
         "line 1: malformed JSON", lambda d, r: _write(d / "in/log.json", "{,}")),
    Case("aggregate log not a log", lambda d, r: ["aggregate", "--logs", str(d / "in/log.json")],
         "not an evaluation log", lambda d, r: _write(d / "in/log.json", '{"x": 1}')),
    Case("aggregate log bad section", lambda d, r: ["aggregate", "--logs", str(d / "in/log.json")],
         "field 'eval_log_forget.json'", lambda d, r: _write(d / "in/log.json", '{"eval_log_forget.json": [1]}')),
    Case("aggregate oracle log invalid UTF-8", lambda d, r: ["aggregate", "--logs", str(d / "in/log.json"),
                                                              "--oracle-logs", str(d / "in/oracle.json")],
         "invalid UTF-8", lambda d, r: (_eval_log(d, r), _write(d / "in/oracle.json", b"\xff\xfe{"))),
    # --- prepare
    Case("prepare config missing", lambda d, r: ["--quiet", "prepare", "--config", "nonesuch"],
         "unknown config 'nonesuch'"),
    Case("prepare unknown key", lambda d, r: ["--quiet", "prepare", "--config", "micro", f"run_dir={d}/out",
                                              "target.nope=1"], "unknown key 'target.nope'"),
    Case("prepare target mode", lambda d, r: ["--quiet", "prepare", "--config", "micro", f"run_dir={d}/out",
                                              "target_mode=half"], "target_mode must be one of"),
    Case("prepare run dir is a file", lambda d, r: ["--quiet", "prepare", "--config", "micro",
                                                    f"run_dir={d}/out"], "is an existing file",
         lambda d, r: _write(d / "out", "x")),
    Case("prepare base model missing", lambda d, r: ["--quiet", "prepare", "--config", "micro",
                                                     f"run_dir={d}/out", f"base_model={d}/none"],
         "base_model directory not found"),
    Case("prepare negative lr", lambda d, r: ["--quiet", "prepare", "--config", "micro", f"run_dir={d}/out",
                                              "target.lr=-1"], "target.lr"),
    Case("prepare too few people", lambda d, r: ["--quiet", "prepare", "--config", "micro", f"run_dir={d}/out",
                                                 "benchmark.n_people=2"], "benchmark.n_people"),
    Case("prepare oracle split", lambda d, r: ["--quiet", "prepare", "--config", "micro", f"run_dir={d}/out",
                                               "oracle_splits=[forget77]"], "forget77"),
    # --- bench
    Case("bench config missing", lambda d, r: ["--quiet", "bench", "--config", "nonesuch"],
         "unknown config 'nonesuch'"),
    Case("bench unknown method", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "unknown method 'nosuch'", _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: nosuch}]\n")),
    Case("bench split missing", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "split 'forget99'", _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo}]\nsplits: [forget99]\n")),
    Case("bench seeds wrong type", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml"),
                                                 "seeds=abc"], "seeds",
         _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo}]\n")),
    Case("bench run not prepared", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "not a prepared run", _bench_yaml("run: D/in\nout: D/out\nmethods: [{name: npo}]\n")),
    Case("bench data file missing", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "file not found", _bench_yaml("data: {model: RUN/target, forget: D/none.jsonl, retain: "
                                       "RUN/benchmark/retain90.jsonl}\nout: D/out\nmethods: [{name: npo}]\n")),
    Case("bench out is a file", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "is an existing file", lambda d, r: (_bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo}]\n")(d, r),
                                              _write(d / "out", "x"))),
    Case("bench unknown column", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml"),
                                               "--columns", "FQ,nope"], "--columns: unknown nope",
         _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo}]\n")),
    Case("bench entry split not in the bench", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "methods.npo.splits", _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo, splits: [forget05]}]\n")),
    Case("bench unknown method key", lambda d, r: ["--quiet", "bench", "--config", str(d / "in/bench.yaml")],
         "train.nope", _bench_yaml("run: RUN\nout: D/out\nmethods: [{name: npo, overrides: {train.nope: 1}}]\n")),
    # --- shard-train
    Case("shard-train zero shards", lambda d, r: ["--quiet", "shard-train", "--run", str(r), "--out",
                                                  str(d / "out"), "shards=0"], "shards"),
    Case("shard-train unknown key", lambda d, r: ["--quiet", "shard-train", "--run", str(r), "--out",
                                                  str(d / "out"), "shardz=2"], "unknown key 'shard-train.shardz'"),
    Case("shard-train out is a file", lambda d, r: ["--quiet", "shard-train", "--run", str(r), "--out",
                                                    str(d / "out")], "is an existing file",
         lambda d, r: _write(d / "out", "x")),
    Case("shard-train run not prepared", lambda d, r: ["--quiet", "shard-train", "--run", str(d / "in"),
                                                       "--out", str(d / "out")], "not a prepared run",
         lambda d, r: (d / "in").mkdir()),
    Case("shard-train data malformed", lambda d, r: ["--quiet", "shard-train", "--model", str(r / "base"),
                                                     "--data", str(d / "in/forget.jsonl"), "--out",
                                                     str(d / "out")], "line 1: malformed JSON",
         _with_forget("{]\n")),
    Case("shard-train serving unknown", lambda d, r: ["--quiet", "shard-train", "--run", str(r), "--out",
                                                      str(d / "out"), "--serving", "vote"], "serving"),
    # --- export
    Case("export adapter missing", lambda d, r: ["export", "--model", str(r / "base"), "--adapter",
                                                 str(d / "none"), "--merge", "--out", str(d / "out")],
         "adapter directory not found"),
    Case("export out is a file", lambda d, r: ["export", "--model", str(r / "base"), "--adapter",
                                               str(d / "in/adapter"), "--merge", "--out", str(d / "out")],
         "is an existing file", lambda d, r: (_adapter_with(lambda a: None)(d, r), _write(d / "out", "x"))),
    Case("export out is the model", lambda d, r: ["export", "--model", str(d / "in/model"), "--adapter",
                                                  str(d / "in/adapter"), "--merge", "--out", str(d / "in/model")],
         "inside the input", lambda d, r: (_model_with(lambda m: None)(d, r), _adapter_with(lambda a: None)(d, r))),
    Case("export without merge", lambda d, r: ["export", "--model", str(r / "base"), "--adapter", str(r / "base"),
                                               "--out", str(d / "out")], "give --merge"),
    Case("export adapter for another model", lambda d, r: ["export", "--model", str(r / "base"), "--adapter",
                                                           str(d / "in/adapter"), "--merge", "--out",
                                                           str(d / "out")], "another base model",
         _adapter_with(_adapter_for_another_model)),
    # --- audit
    Case("audit show unknown id", lambda d, r: ["audit", "show", "nope", "--ledger", str(d / "in/ledger.sqlite")],
         "no request with id 'nope'", _good_ledger),
    Case("audit show without id", lambda d, r: ["audit", "show", "--ledger", str(d / "in/ledger.sqlite")],
         "give the request id", _good_ledger),
    Case("audit list not SQLite", lambda d, r: ["audit", "list", "--ledger", str(d / "in/ledger.sqlite")],
         "not an SQLite database", _ledger_not_sqlite),
    Case("audit list missing ledger", lambda d, r: ["audit", "list", "--ledger", str(d / "none.sqlite")],
         "no ledger here"),
    Case("audit list another database", lambda d, r: ["audit", "list", "--ledger", str(d / "in/other.sqlite")],
         "no 'requests' table", lambda d, r: (d / "in").mkdir() or sqlite3.connect(d / "in/other.sqlite").execute(
             "CREATE TABLE t (x)").connection.commit()),
    Case("audit export out is a directory", lambda d, r: ["audit", "export", "--ledger", str(d / "in/ledger.sqlite"),
                                                          "--out", str(d / "in")], "is a directory", _good_ledger),
    # --- data check
    Case("data check missing", lambda d, r: ["data", "check", str(d / "none.jsonl")], "file not found"),
    Case("data check map malformed", lambda d, r: ["data", "check", str(d / "in/forget.jsonl"), "--map", "question"],
         "question", _with_forget(GOOD_QA)),
    Case("data check CSV cells", lambda d, r: ["data", "check", str(d / "in/f.csv")], "line 2",
         lambda d, r: _write(d / "in/f.csv", "question,answer\nonly one cell\n")),
    Case("data check dedupe out is a directory", lambda d, r: ["data", "check", "--forget", str(d / "in/forget.jsonl"),
                                                               "--retain", str(d / "in/forget.jsonl"), "--dedupe",
                                                               "--out", str(d / "in")], "is a directory",
         _with_forget(GOOD_QA)),
    Case("data check nothing given", lambda d, r: ["data", "check"], "give a FILE"),
    # --- import-gguf
    Case("import-gguf missing", lambda d, r: ["import-gguf", str(d / "none.gguf"), "--out", str(d / "out")],
         "file not found"),
    Case("import-gguf not GGUF", lambda d, r: ["import-gguf", str(d / "in/model.gguf"), "--out", str(d / "out")],
         "not a GGUF file", lambda d, r: _write(d / "in/model.gguf", "hello world, not gguf")),
    Case("import-gguf truncated", lambda d, r: ["import-gguf", str(d / "in/model.gguf"), "--out", str(d / "out")],
         "model.gguf", _tiny_gguf),
    Case("import-gguf out is a file", lambda d, r: ["import-gguf", str(d / "in/model.gguf"), "--out",
                                                    str(d / "out")], "is an existing file",
         lambda d, r: (_tiny_gguf(d, r), _write(d / "out", "x"))),
]


def _substitute(argv: list[str], d: Path) -> list[str]:
    names = {"ADAPTER": d / "in/adapter", "LEDGER": d / "in/ledger.sqlite", "DIR": d / "in", "LOG": d / "in/log.json",
             "CANARIES": d / "in/canaries.jsonl"}
    return [str(names[a]) if a in names else a for a in argv]


def _snapshot(*roots: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under the roots; a file with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
            for root in roots if root.exists() for p in [root, *root.rglob("*")]}


def test_the_battery_is_large_enough():
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(case, unlearn_run, tmp_path, capsys):
    d = tmp_path / "case"
    d.mkdir()
    if case.setup:
        case.setup(d, unlearn_run)
    argv = _substitute(case.argv(d, unlearn_run), d)
    before = _snapshot(d, unlearn_run)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert case.expect in lines[0], lines[0]
    assert _snapshot(d, unlearn_run) == before, "the command wrote something"


def test_a_ledger_held_by_another_process_is_refused_before_any_work(unlearn_run, tmp_path, capsys, monkeypatch):
    import forgetkit.audit.ledger as ledger

    path = tmp_path / "ledger.sqlite"
    _good_ledger(tmp_path, unlearn_run)
    (tmp_path / "in" / "ledger.sqlite").rename(path)
    monkeypatch.setattr(ledger, "LOCK_WAIT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code = main([*U, "--method", "graddiff", "--run", str(unlearn_run), "--out", str(tmp_path / "out"),
                     "--ledger", str(path)])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    err = capsys.readouterr().err
    assert code == 2 and "locked by another process" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_a_bug_is_a_one_line_summary_then_the_traceback_and_exit_1(monkeypatch, capsys):
    import forgetkit.cli as cli

    def broken(args):
        raise ZeroDivisionError("the kind of mistake a user cannot make")

    monkeypatch.setattr(cli, "_cmd_configs", broken)
    assert cli.main(["configs"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("internal error (a bug in forgetkit")
    assert "ZeroDivisionError: the kind of mistake" in err.splitlines()[0]
    assert "Traceback (most recent call last)" in err


def test_a_usage_error_is_one_line_with_exit_2(capsys):
    assert main(["eval", "--model"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --model: expected one argument" in err and "Traceback" not in err
