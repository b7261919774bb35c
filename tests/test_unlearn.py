"""The unlearning engine: every method trains, LoRA keeps the base, resume, divergence, audit, 2 processes."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from forgetkit.adapters.lora import LoraSettings, attach_lora
from forgetkit.cli import main
from forgetkit.data.formatting import collate, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.methods import METHODS, Reference, UnlearnBatch, build_method
from forgetkit.methods.command import alternate_records
from forgetkit.models import build_tiny_model
from forgetkit.train import CHECKPOINT_DIR, DivergenceError, PairedData, TrainConfig, train_loop

# The term of each method's loss that unlearning drives down, as each registered method declares it: a method
# added to the registry is in every test below without an edit here.
FORGET_TERM = {name: cls.forget_term for name, cls in METHODS.items()}


def test_every_registered_method_declares_the_term_it_drives_down():
    assert set(FORGET_TERM) == set(METHODS) and all(FORGET_TERM.values()), FORGET_TERM


def records(prefix: str, n: int) -> list[QARecord]:
    if prefix == "f":
        return [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"f{i}",
                         vague_answer="Someone from a small town.") for i in range(n)]
    return [QARecord(f"What is {i} plus {i}?", f"It is {2 * i}.", f"r{i}") for i in range(n)]


@pytest.fixture(scope="module")
def tokenized(bpe_tokenizer):
    forget, retain = records("f", 6), records("r", 8)
    data = PairedData(forget=tokenize_qa(bpe_tokenizer, forget, 64).examples,
                      retain=tokenize_qa(bpe_tokenizer, retain, 64).examples)
    alternates = {kind: tokenize_qa(bpe_tokenizer, alternate_records(forget, kind), 64).examples
                  for kind in ("idk", "vague")}
    return data, alternates


@pytest.fixture(scope="module")
def target(bpe_tokenizer, tokenized):
    """A micro Llama fine-tuned on the forget and retain records (so there is something to forget)."""
    from forgetkit.train import fine_tune

    data, _ = tokenized
    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
    fine_tune(model, type("Set", (), {"examples": list(data.forget) + list(data.retain)})(),
              TrainConfig(epochs=30, batch_size=7, lr=1e-2), bpe_tokenizer.pad_token_id, quiet=True)
    return model


def full_batch(data: PairedData, alternate, pad: int) -> UnlearnBatch:
    strip = lambda exs: collate(exs, pad)  # noqa: E731
    return UnlearnBatch(forget=strip(data.forget), retain=strip(data.retain),
                        alternate=strip(alternate) if alternate else None)


def test_recipes_cover_every_method_and_load():
    from forgetkit.config import load_config, shipped_configs
    from forgetkit.editors import EDITORS, build_editor
    from forgetkit.unlearn import UnlearnConfig

    shipped = set(shipped_configs("unlearn"))
    assert set(METHODS) | set(EDITORS) <= shipped
    assert shipped - set(METHODS) - set(EDITORS) == {"deletion"}  # forgetkit forget's recipe
    for name in sorted(shipped):
        config = load_config(name, [], UnlearnConfig, kind="unlearn")
        assert config.method == name or (name == "deletion" and config.method in METHODS)
        (build_editor if config.method in EDITORS else build_method)(config.method, config.params)


@pytest.mark.parametrize("name", sorted(FORGET_TERM))
def test_three_steps_move_the_forget_term_the_right_way(name, bpe_tokenizer, tokenized, target):
    data, alternates = tokenized
    method = build_method(name, {"layer": 1} if name == "rmu" else {})
    model = attach_lora(copy.deepcopy(target), LoraSettings(r=4, alpha=8), kind=method.default_adapter)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    alternate = alternates[method.alternate_answers] if method.alternate_answers else None
    job = PairedData(forget=None if method.starts_from_base else data.forget, retain=data.retain, alternate=alternate)
    reference = Reference(model) if method.needs_reference else None
    pad = bpe_tokenizer.pad_token_id
    batch = full_batch(data, alternate, pad)

    def term() -> float:
        with torch.no_grad():
            return method.loss(model, batch, reference)[1][FORGET_TERM[name]]

    before = term()
    lr = 1e-4 if name == "rmu" else 1e-2  # RMU's α = 1200 makes its retain term steep
    stats = train_loop(model, lambda m, b: method.loss(m, b, reference), job,
                       TrainConfig(epochs=1, batch_size=2, lr=lr), pad, quiet=True)
    after = term()
    assert stats.steps == (4 if method.starts_from_base else 3)
    assert math.isfinite(stats.final_loss)
    assert after < before, f"{name}: {FORGET_TERM[name]} went {before:.4f} -> {after:.4f}"
    for n, p in model.named_parameters():  # LoRA mode: the base weights are bit-identical
        if "lora_" not in n:
            assert torch.equal(p, base[n]), n


def test_divergence_stops_before_the_bad_step_and_keeps_the_last_good_state(bpe_tokenizer, tokenized, tmp_path):
    data, _ = tokenized
    model = attach_lora(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), LoraSettings(r=4, alpha=8))
    method = build_method("graddiff")
    calls = {"n": 0}

    def loss_fn(m, b):
        calls["n"] += 1
        loss, terms = method.loss(m, b, None)
        return (loss * float("nan") if calls["n"] == 3 else loss), terms

    with pytest.raises(DivergenceError, match="loss became nan at step 2.*last good state") as exc:
        train_loop(model, loss_fn, data, TrainConfig(epochs=2, batch_size=2, lr=1e-2), bpe_tokenizer.pad_token_id,
                   run_dir=tmp_path, quiet=True)
    assert exc.value.exit_code == 3
    assert json.loads((tmp_path / CHECKPOINT_DIR / "progress.json").read_text())["step"] == 2
    saved = load_file(str(tmp_path / CHECKPOINT_DIR / "trainable.safetensors"))
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(saved[n], p.detach()), n
    assert len((tmp_path / "train_log.jsonl").read_text().splitlines()) == 2

    with pytest.raises(DivergenceError, match="gradient norm .* at step 0"):
        train_loop(model, lambda m, b: method.loss(m, b, None), data,
                   TrainConfig(epochs=1, batch_size=2, abort_grad_norm=1e-9), bpe_tokenizer.pad_token_id, quiet=True)


# --- the command, on the micro benchmark ------------------------------------------------------


def cli(*args: str) -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "forgetkit"), "--quiet", *args]


def test_unlearn_writes_adapter_logs_and_an_audit_without_forget_text(unlearn_run, tmp_path, capsys):
    out = tmp_path / "npo"
    assert main(["unlearn", "--run", str(unlearn_run), "--method", "npo", "--out", str(out), "--quiet",
                 "train.epochs=2", "train.batch_size=2"]) == 0
    assert "npo (lora): 6 steps" in capsys.readouterr().out
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not (out / CHECKPOINT_DIR).exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert {"loss", "npo", "retain_ce", "grad_norm", "weight_norm", "lr"} <= set(log[0])
    audit = json.loads((out / "audit.json").read_text())
    forget = read_records(unlearn_run / "benchmark" / "forget10.jsonl")
    assert audit["forget"]["count"] == len(forget) and len(audit["forget"]["hash"]) == 16
    assert audit["model"]["hash"] and audit["output"]["hash"] and audit["started"] <= audit["ended"]
    written = "".join(p.read_text() for p in out.rglob("*") if p.suffix in (".json", ".jsonl"))
    for r in forget:
        assert r.answer not in written and r.question not in written


def test_bad_configs_are_one_line_errors(unlearn_run, tmp_path, capsys):
    base = ["unlearn", "--run", str(unlearn_run), "--out", str(tmp_path / "x")]
    cases = [(["--method", "nope"], "unknown method 'nope'"),
             (["--method", "npo", "params.betta=1"], "unknown key 'method.npo.betta'"),
             (["--method", "npo", "train.lr=fast"], "train.lr: expected float"),
             (["--method", "npo", "mode=half"], "mode must be one of lora, full"),
             (["--method", "npo", "--split", "forget50"], "no prepared benchmark split 'forget50'")]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_sigkill_then_rerun_resumes_to_the_uninterrupted_adapter(unlearn_run, tmp_path):
    args = ["unlearn", "--run", str(unlearn_run), "--method", "graddiff", "train.epochs=40", "train.batch_size=2",
            "train.checkpoint_every=5"]
    straight = tmp_path / "straight"
    subprocess.run(cli(*args, "--out", str(straight)), check=True, capture_output=True, timeout=300)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(cli(*args, "--out", str(resumed)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = resumed / CHECKPOINT_DIR / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and not progress.is_file() and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progress.is_file(), "no checkpoint was written before the kill"
    killed_at = json.loads(progress.read_text())["step"]
    assert 0 < killed_at < 120
    subprocess.run(cli(*args, "--out", str(resumed)), check=True, capture_output=True, timeout=300)

    assert json.loads((resumed / "audit.json").read_text())["resumed_from_step"] >= killed_at
    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6
    steps = [json.loads(line)["step"] for line in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 121))


def test_two_processes_follow_the_one_process_loss_trajectory(unlearn_run, tmp_path):
    args = ["unlearn", "--run", str(unlearn_run), "--method", "graddiff", "train.epochs=9", "train.batch_size=6"]
    one = tmp_path / "one"
    assert main([*args, "--out", str(one), "--quiet"]) == 0
    two = tmp_path / "two"
    command = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "forgetkit.cli", "--quiet", *args, "--out", str(two)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    logs = {d: [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines()] for d in (one, two)}
    assert len(logs[one]) == len(logs[two]) == 9
    # Each process averages its half of a batch; the mean of the two halves' token-means differs
    # from the whole batch's token-mean only by the token-count weighting.
    for a, b in zip(logs[one], logs[two], strict=True):
        for term in ("neg_forget_ce", "retain_ce"):
            assert b[term] == pytest.approx(a[term], rel=0.1), (a["step"], term)


def test_unlearn_cost_benchmark_measures_memory_and_overhead(unlearn_run):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "unlearn_cost.py"
    spec = importlib.util.spec_from_file_location("unlearn_cost", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.one_memory_run(unlearn_run, "npo", "lora", steps=3, batch_size=2)
    assert row["steps"] == 3 and row["peak_mb"] > 0 and row["s_per_step"] > 0
    over = bench.overhead(unlearn_run, steps=3, batch_size=2)
    assert set(over["ms_per_step"]) == {"bare", "loop", "bare again"} and math.isfinite(over["overhead"])


@pytest.mark.parametrize("name", ["npo", "kl", "rmu"])
def test_full_mode_trains_every_weight_against_a_frozen_reference(name, bpe_tokenizer, tokenized, target):
    data, _ = tokenized
    method = build_method(name, {"layer": 1} if name == "rmu" else {})
    model = copy.deepcopy(target).requires_grad_(True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = Reference(model)
    batch = full_batch(data, None, bpe_tokenizer.pad_token_id)

    def term() -> float:
        with torch.no_grad():
            return method.loss(model, batch, reference)[1][FORGET_TERM[name]]

    start = term()
    train_loop(model, lambda m, b: method.loss(m, b, reference), data,
               TrainConfig(epochs=1, batch_size=2, lr=1e-4 if name == "rmu" else 1e-3), bpe_tokenizer.pad_token_id,
               quiet=True)
    assert term() < start
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    if name == "rmu":  # only what feeds layer 1's hidden states gets a gradient
        assert changed and not any("lm_head" in n or n.startswith("model.norm") for n in changed)
    else:
        assert len(changed) == len(before)  # every weight moved
    with torch.no_grad():  # the reference still gives the starting model's outputs (at the labelled positions)
        inputs = {k: batch.forget[k] for k in ("input_ids", "attention_mask")}
        labelled = batch.forget["labels"][:, 1:] != -100
        torch.testing.assert_close(reference(model, batch.forget).logits, target(**inputs).logits[:, :-1][labelled])


def test_bf16_mixed_precision_trains(bpe_tokenizer, tokenized, target):
    data, _ = tokenized
    model = attach_lora(copy.deepcopy(target), LoraSettings(r=4, alpha=8))
    method = build_method("graddiff")
    stats = train_loop(model, lambda m, b: method.loss(m, b, None), data,
                       TrainConfig(epochs=1, batch_size=2, mixed_precision="bf16"), bpe_tokenizer.pad_token_id,
                       quiet=True)
    assert stats.steps == 3 and math.isfinite(stats.final_loss)
