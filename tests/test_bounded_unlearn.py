"""Bounded adapters in the engine: bounded_graddiff, adapter=sine|lora|clipped, --eval-every, export --merge,
and the qualitative stability check (sine keeps GradDiff's gradient norm from growing as plain LoRA's does)."""

from __future__ import annotations

import copy
import itertools
import json
import shutil
import statistics

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from forgetkit.adapters import LoraSettings, attach_lora
from forgetkit.cli import main
from forgetkit.data.formatting import tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.methods import build_method
from forgetkit.models import load_model
from forgetkit.train import PairedData, TrainConfig, train_loop


def unlearn(run, out, *extra) -> int:
    """``extra``: options first, then overrides (argparse wants the key=value words together)."""
    return main(["unlearn", "--run", str(run), "--out", str(out), "--quiet", *extra, "train.epochs=2",
                 "train.batch_size=2"])


def test_bounded_graddiff_trains_sine_mlp_adapters_and_saves_them(unlearn_run, tmp_path):
    out = tmp_path / "bounded"
    assert unlearn(unlearn_run, out, "--method", "bounded_graddiff") == 0
    saved = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert saved["use_sine"] is True and set(saved["sine_modules"]) == {"gate_proj", "up_proj", "down_proj"}
    assert json.loads((out / "config.json").read_text())["unlearn"]["adapter"] == "sine"
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert {"neg_forget_ce", "retain_ce", "grad_norm", "weight_norm"} <= set(log[-1])

    # forgetkit export --merge: a plain HF checkpoint with the same outputs as base + sine adapter.
    merged = tmp_path / "merged"
    assert main(["export", "--model", str(unlearn_run / "target"), "--adapter", str(out / "adapter"), "--merge",
                 "--out", str(merged)]) == 0
    with_adapter, tokenizer = load_model(unlearn_run / "target", out / "adapter")
    plain = AutoModelForCausalLM.from_pretrained(merged, local_files_only=True).eval()
    assert not any("lora" in k for k in load_file(str(merged / "model.safetensors")))
    x = torch.tensor([tokenizer("Question: Who is the poet?")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, with_adapter(x).logits, atol=1e-4, rtol=1e-4)


def test_clipped_adapter_keeps_each_mlp_update_within_its_norm(unlearn_run, tmp_path):
    out = tmp_path / "clipped"
    assert unlearn(unlearn_run, out, "--method", "graddiff", "adapter=clipped", "lora.clip_norm=0.05",
                   "train.lr=0.05") == 0
    weights = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    scaling = 16 / 8  # the recipe's lora.alpha / lora.r
    checked = 0
    for key, a in weights.items():
        if "lora_A" not in key:
            continue
        delta = scaling * weights[key.replace("lora_A", "lora_B")] @ a
        norm = float(torch.linalg.matrix_norm(delta))
        if any(m in key for m in ("gate_proj", "up_proj", "down_proj")):
            assert norm <= 0.05 * (1 + 1e-4), key
            checked += 1
        elif "q_proj" in key:
            assert norm > 0.05, "attention adapters are not clipped"
    assert checked == 6  # 2 layers × 3 MLP projections


def test_adapter_kind_errors_are_one_line(unlearn_run, tmp_path, capsys):
    cases = [(["--method", "graddiff", "adapter=tanh"], "adapter must be one of lora, sine, clipped"),
             (["--method", "graddiff", "adapter=sine", "mode=full"], "adapter=sine needs mode=lora"),
             (["--method", "graddiff", "lora.sine_omega=-1"], "must be positive")]
    for extra, message in cases:
        assert unlearn(unlearn_run, tmp_path / "x", *extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert main(["unlearn", "--model", str(unlearn_run / "target"), "--forget",
                 str(unlearn_run / "benchmark" / "forget10.jsonl"), "--method", "ga", "--eval-every", "2",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--eval-every needs --run" in capsys.readouterr().err


def test_eval_every_puts_quality_into_the_step_log(unlearn_run, tmp_path):
    """``--eval-every`` puts FQ and MU into the step log at every N-th step (the bounded study's curves:
    ``forgetkit bench --config bounded_study``), against the run's oracle evaluation."""
    run = tmp_path / "run"
    shutil.copytree(unlearn_run, run)
    assert main(["eval", "--model", str(run / "oracle_forget10"), "--data", str(run / "benchmark"), "--quiet",
                 "--max-new-tokens", "8", "--canary-candidates", "50",
                 "--out", str(run / "eval" / "oracle_forget10")]) == 0
    for adapter in ("lora", "clipped", "sine"):
        out = tmp_path / adapter
        assert main(["--quiet", "unlearn", "--run", str(run), "--method", "graddiff", f"adapter={adapter}",
                     "lora.r=4", "train.lr=0.01", "train.epochs=3", "train.batch_size=4", "--eval-every", "3",
                     "--out", str(out)]) == 0
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        evaluated = [x for x in log if "forget_quality" in x]
        assert [x["step"] for x in evaluated] == [x["step"] for x in log if x["step"] % 3 == 0] != []
        for x in evaluated:
            assert 0 < x["forget_quality"] <= 1 and 0 <= x["model_utility"] <= 1 and 0 < x["forget_probability"] < 1
        assert all(x["grad_norm"] >= 0 and x["weight_norm"] > 0 for x in log)


def test_the_bounded_study_config_gives_every_run_the_same_steps_and_scaling():
    """``bounded_study``: plain, clipped and sine at ranks 4-32 and two learning rates on forget10, the ω sweep
    at r 8, the three adapters at r 8 on forget01; α = 2r everywhere and 130 steps of batch 16 on each split."""
    from forgetkit.bench.config import load_bench_config
    from forgetkit.bench.grid import unlearn_config

    config = load_bench_config("bounded_study")
    sizes = {"forget10": 200, "forget01": 20}  # the built-in benchmark's 10 QA per person
    seen = []
    for entry in config.methods:
        for _, overrides in entry.variants():
            c = unlearn_config(entry.name, entry.recipe, overrides, 0)
            split = entry.splits[0]
            assert c.lora.alpha == 2 * c.lora.r and c.train.batch_size == 16 and entry.eval_every == 26
            assert c.train.epochs * -(-sizes[split] // 16) == 130
            seen.append((split, c.adapter, c.lora.r, c.lora.sine_omega if c.adapter == "sine" else None,
                         c.train.lr))
    assert len(seen) == len(set(seen)) == 36
    assert {(a, r) for s, a, r, _, _ in seen if s == "forget10"} == {
        (a, r) for a in ("lora", "clipped", "sine") for r in (4, 8, 16, 32)}
    assert {w for s, a, r, w, _ in seen if a == "sine" and r == 8 and s == "forget10"} == {10, 30, 100, 300}


def test_sine_keeps_graddiff_gradient_norm_from_growing_like_plain_lora(unlearn_run, tmp_path):
    """20 GradDiff steps at a large learning rate, no gradient clipping, three seeds: plain LoRA's gradient
    norm grows by orders of magnitude over its first value; with every adapter sine-bounded it grows far
    less. (Observed here: medians ×228 against ×17 when the losses read full logits; ×54 against ×17 since
    they read the labelled positions' logits only: the same losses to float rounding, but at lr 0.1 without
    clipping the trajectories part from the first differing bit.) With sine on the MLP projections only (the default)
    the growth varies too much from seed to seed for a test: see the bounded-LoRA study in docs/results.md."""
    base, tokenizer = load_model(unlearn_run / "target")
    forget = tokenize_qa(tokenizer, read_records(unlearn_run / "benchmark" / "forget10.jsonl"), 48).examples
    retain = tokenize_qa(tokenizer, read_records(unlearn_run / "benchmark" / "retain90.jsonl"), 48).examples
    method = build_method("graddiff")
    every_projection = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    growth = {"lora": [], "sine": []}
    for kind, seed in itertools.product(growth, range(3)):
        torch.manual_seed(seed)
        settings = LoraSettings(r=8, alpha=16, sine_omega=100, bounded_modules=every_projection)
        model = attach_lora(copy.deepcopy(base), settings, kind=kind)
        config = TrainConfig(epochs=20, batch_size=6, lr=0.1, max_grad_norm=0, seed=seed)
        run_dir = tmp_path / f"{kind}{seed}"
        train_loop(model, lambda m, b: method.loss(m, b, None), PairedData(forget=forget, retain=retain), config,
                   tokenizer.pad_token_id, run_dir=run_dir, quiet=True)
        norms = [json.loads(line)["grad_norm"] for line in (run_dir / "train_log.jsonl").open()]
        assert len(norms) == 20
        growth[kind].append(max(norms) / norms[0])
    assert statistics.median(growth["lora"]) > 2 * statistics.median(growth["sine"]), growth


@pytest.mark.parametrize("kind", ["sine", "clipped"])
def test_every_gradient_method_accepts_the_bounded_adapters(unlearn_run, tmp_path, kind):
    assert unlearn(unlearn_run, tmp_path / kind, "--method", "npo", f"adapter={kind}") == 0
    assert json.loads((tmp_path / kind / "summary.json").read_text())["steps"] == 6
