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


def test_an_on_step_hook_can_end_the_run_after_a_step(bpe_tokenizer, tmp_path):
    """A ``stop`` value from ``on_step`` ends the run after that step (logged, and in the stats); the weights
    are those after the step."""
    import json

    from forgetkit.train import PairedData, train_loop

    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    seen = []

    def on_step(step, m, losses):
        seen.append(step)
        assert set(losses) == {"loss"}  # the step's loss and its terms (none here)
        return {"stop": "enough"} if step == 3 else {"checked": step}

    def loss(m, batch):
        out = m(**batch.retain)
        return out.loss, {}

    stats = train_loop(model, loss, PairedData(retain=data.examples), TrainConfig(epochs=8, batch_size=8),
                       bpe_tokenizer.pad_token_id, run_dir=tmp_path, quiet=True, on_step=on_step)
    assert seen == [1, 2, 3] and stats.steps == 3 and stats.stopped == "enough"
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["stop"] == "enough" and rows[0]["checked"] == 1
    assert "stopped" not in fine_tune(build_tiny_model(bpe_tokenizer, "llama", "micro"), data,
                                      TrainConfig(epochs=1, batch_size=8), bpe_tokenizer.pad_token_id,
                                      quiet=True).to_dict()


def test_an_on_step_hook_runs_and_can_stop_without_a_run_directory(bpe_tokenizer):
    """``--until``'s stop is an ``on_step`` hook: a loop with nowhere to log still calls it and stops on it."""
    from forgetkit.train import PairedData, train_loop

    seen = []

    def on_step(step, m, losses):
        seen.append(step)
        return {"stop": "enough"} if step == 2 else None

    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    stats = train_loop(build_tiny_model(bpe_tokenizer, "llama", "micro"), lambda m, b: (m(**b.retain).loss, {}),
                       PairedData(retain=data.examples), TrainConfig(epochs=8, batch_size=8),
                       bpe_tokenizer.pad_token_id, quiet=True, on_step=on_step)
    assert seen == [1, 2] and stats.steps == 2 and stats.stopped == "enough"


def test_a_hook_that_backtracks_halves_the_learning_rate_and_forgets_the_moments(bpe_tokenizer, tmp_path):
    """``backtrack`` from ``on_step``: the learning rate from the next step on is scaled (the schedule's too), and
    Adam starts again from no moments: the next step's update is then lr·sign(g)-sized, as a first step's."""
    import json

    from forgetkit.train import PairedData, train_loop

    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    weights = {}

    def on_step(step, m, losses):
        weights[step] = torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])
        return {"backtrack": 0.5} if step == 2 else None

    train_loop(model, lambda m, b: (m(**b.retain).loss, {}), PairedData(retain=data.examples),
               TrainConfig(epochs=3, batch_size=4, lr=1e-3, scheduler="constant", warmup_ratio=0.0,
                           weight_decay=0.0, max_grad_norm=0.0), bpe_tokenizer.pad_token_id, run_dir=tmp_path,
               quiet=True, on_step=on_step)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert lrs[:2] == [1e-3, 1e-3] and lrs[2:] == pytest.approx([5e-4] * (len(lrs) - 2))
    # Adam's first step again at step 3: |Δw| = lr wherever the gradient is not tiny (bias-corrected m/√v = ±1);
    # with the old moments most entries would move by other amounts
    moved = (weights[3] - weights[2]).abs()
    moved = moved[moved > 0]
    assert float(((moved - 5e-4).abs() < 5e-6).float().mean()) > 0.9
    later = (weights[4] - weights[3]).abs()
    assert float(((later[later > 0] - 5e-4).abs() < 5e-6).float().mean()) < 0.5  # moments again from step 4


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


def test_gradient_checkpointing_trains_the_same_lora_weights_and_is_switched_off_after(bpe_tokenizer):
    from forgetkit.adapters import LoraSettings, attach_lora

    data = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48)
    trained = {}
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = attach_lora(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), LoraSettings(r=4, alpha=8))
        config = TrainConfig(epochs=2, batch_size=8, lr=1e-2, gradient_checkpointing=checkpointing)
        fine_tune(model, data, config, bpe_tokenizer.pad_token_id, quiet=True)
        assert not model.get_base_model().is_activation_checkpointing
        trained[checkpointing] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert trained[False].keys() == trained[True].keys()
    for name, weight in trained[False].items():
        torch.testing.assert_close(trained[True][name], weight, rtol=1e-5, atol=1e-6)


def test_fine_tuning_in_micro_batches_trains_the_same_weights(bpe_tokenizer):
    """``train.micro_batch_size`` splits each batch into chunks (rows of unequal length, so a chunk's padding is
    trimmed) whose summed parts are the batch's mean cross-entropy: the same loss, the same weights."""
    from forgetkit.models.logits import answer_cross_entropy, cross_entropy_parts

    records = [QARecord(f"Who is person {i}?", "A poet" + " from a far town" * (i % 4) + ".", str(i))
               for i in range(16)]
    data = tokenize_qa(bpe_tokenizer, records, max_length=48)
    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
    from forgetkit.data.formatting import collate

    batch = collate(data.examples[:8], bpe_tokenizer.pad_token_id)
    parts = list(cross_entropy_parts(model, batch, 3))
    assert len(parts) == 3
    torch.testing.assert_close(sum(parts), answer_cross_entropy(model, batch), rtol=1e-6, atol=1e-6)
    from types import SimpleNamespace

    from forgetkit.methods import build_method
    from forgetkit.train import UnlearnBatch

    retrain = build_method("retrain")
    retrain.start(SimpleNamespace(config=SimpleNamespace(train=TrainConfig(micro_batch_size=3))))
    logged = [terms["retain_ce"] for _, terms in retrain.parts(model, UnlearnBatch(retain=batch))]
    assert len(logged) == 3 and sum(logged) == pytest.approx(float(answer_cross_entropy(model, batch)), rel=1e-5)
    total, terms = retrain.loss(model, UnlearnBatch(retain=batch))  # the sum logs the sum of the chunks' terms
    assert terms["retain_ce"] == pytest.approx(float(total), rel=1e-6) == pytest.approx(sum(logged), rel=1e-6)
    trained, losses = {}, {}
    for micro in (None, 3):
        model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
        stats = fine_tune(model, data, TrainConfig(epochs=2, batch_size=8, lr=1e-2, micro_batch_size=micro),
                          bpe_tokenizer.pad_token_id, quiet=True)
        trained[micro], losses[micro] = {n: p.detach().clone() for n, p in model.named_parameters()}, stats.final_loss
    assert losses[3] == pytest.approx(losses[None], rel=1e-5)
    for name, weight in trained[None].items():
        torch.testing.assert_close(trained[3][name], weight, rtol=1e-4, atol=1e-5)


def test_a_methods_loss_parts_are_backpropagated_one_at_a_time_to_the_same_weights(bpe_tokenizer):
    """NPO's forget part is backpropagated before its retain part's forward runs (the loop holds one part's graph
    at a time), and training on the parts gives the weights training on their sum does."""
    from forgetkit.adapters import LoraSettings, attach_lora
    from forgetkit.methods import Reference, build_method
    from forgetkit.train import PairedData, train_loop

    examples = tokenize_qa(bpe_tokenizer, RECORDS, max_length=48).examples
    data = PairedData(forget=examples[:8], retain=examples[8:])
    method = build_method("npo")
    trained, grads_when_asked = {}, []
    for how in ("parts", "sum"):
        torch.manual_seed(0)
        model = attach_lora(build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0), LoraSettings(r=4, alpha=8))
        reference = Reference(model)
        lora = [p for n, p in model.named_parameters() if "lora_B" in n]

        def watched(m, b, reference=reference, lora=lora):
            for k, part in enumerate(method.parts(m, b, reference)):
                if k == 1:  # the retain part is asked for: has the forget part reached the gradients yet?
                    grads_when_asked.append(any(p.grad is not None and bool(p.grad.abs().sum()) for p in lora))
                yield part

        loss_fn = watched if how == "parts" else (lambda m, b, reference=reference: method.loss(m, b, reference))
        train_loop(model, loss_fn, data, TrainConfig(epochs=2, batch_size=4, lr=1e-2), bpe_tokenizer.pad_token_id,
                   quiet=True)
        trained[how] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert grads_when_asked == [True] * 4, grads_when_asked
    for name, weight in trained["sum"].items():
        torch.testing.assert_close(trained["parts"][name], weight, rtol=1e-5, atol=1e-6)


def test_a_setting_added_later_keeps_the_cache_keys_made_before_it():
    """`gradient_checkpointing` joined TrainConfig after runs were cached: at its default it enters no key
    (these hashes are the keys of the default configs before the setting existed)."""
    from forgetkit.config import config_hash
    from forgetkit.prepare import load_prepare_config
    from forgetkit.unlearn import UnlearnConfig

    assert config_hash(TrainConfig()) == "3ac8f7ac27c49219"
    assert config_hash(UnlearnConfig()) == "521418c446f2f7e7"
    # `small` now asks for calibration people (issue 20: its runs are rebuilt once, on purpose); at the setting's
    # default (none) the key is the one from before the setting existed
    assert config_hash(load_prepare_config("small", ["benchmark.calibration_people=0"])) == "717ed19a59408ba1"
    assert config_hash(load_prepare_config("small")) != "717ed19a59408ba1"
    assert config_hash(TrainConfig(gradient_checkpointing=True)) != config_hash(TrainConfig())
    assert config_hash(UnlearnConfig(until="indistinguishable")) != config_hash(UnlearnConfig())
