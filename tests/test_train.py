"""The training loop: it learns, it reports its cost, and it stops cleanly on a NaN loss."""

from __future__ import annotations

import pytest
import torch

from forgetkit.cli import main
from forgetkit.data.formatting import tokenize_qa
from forgetkit.data.records import QARecord
from forgetkit.models import build_tiny_model
from forgetkit.train import DivergenceError, TrainConfig, fine_tune

RECORDS = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", str(i)) for i in range(16)]


def test_fine_tune_lowers_the_loss_and_reports_cost(bpe_tokenizer):
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    stats = fine_tune(model, data, TrainConfig(epochs=8, batch_size=8, lr=1e-2), bpe_tokenizer.pad_token_id,
                      quiet=True)
    assert stats.steps == 16 and stats.examples == 128
    assert stats.final_loss < 0.6 * stats.first_loss
    assert stats.wall_time_s > 0 and stats.peak_memory_mb > 0 and stats.tokens_per_s > 0
    assert stats.trainable_parameters == sum(p.numel() for p in model.parameters())


def test_nan_loss_stops_before_the_step_is_applied(bpe_tokenizer):
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    with torch.no_grad():
        model.model.embed_tokens.weight[:] = float("nan")
    head = model.lm_head.weight.detach().clone()
    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    with pytest.raises(DivergenceError, match="loss became nan at step 0"):
        fine_tune(model, data, TrainConfig(epochs=1, batch_size=8), bpe_tokenizer.pad_token_id, quiet=True)
    assert torch.equal(model.lm_head.weight, head), "no update was applied"


def test_diverging_prepare_exits_cleanly_and_keeps_finished_stages(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(["prepare", "--config", "micro", "--quiet", f"run_dir={run_dir}", "target.lr=1e30",
                 "target.max_grad_norm=0"])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("error: fine-tune on full: loss became")
    assert (run_dir / "base" / "stage.json").is_file()
    assert not (run_dir / "target").exists()
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")], "no temporary directory left"
