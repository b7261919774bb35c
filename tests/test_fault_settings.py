"""Settings checked against the data before any work, damaged training checkpoints set aside, and an oracle log
accepted only for the same forget set (issue 35)."""

from __future__ import annotations

import json
import random
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from forgetkit.cli import main
from forgetkit.data.formatting import tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.errors import ForgetkitError, SettingError
from forgetkit.eval import tofu
from forgetkit.models import build_tiny_model
from forgetkit.train import CHECKPOINT_DIR, EpochOrder, PairedData, TrainConfig, fit_max_length, train_loop

RECORDS = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"p{i}") for i in range(12)]
FORGET = tofu.SET_FILES["forget"]


@contextmanager
def deadline(seconds: int):
    """Fail (TimeoutError) instead of hanging when the block runs past ``seconds``."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def cross_entropy(model, batch):
    return model(**batch.retain).loss, {}


def examples(tokenizer) -> list[dict]:
    return tokenize_qa(tokenizer, RECORDS, max_length=48).examples


# --- A. settings checked against the data --------------------------------------------------------------------


def _limit_memory():
    """The child's address space capped (a regression that builds 10^9 indices fails fast instead of filling RAM)."""
    resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))


def test_an_absurd_batch_size_on_unlearn_is_refused_in_one_line_before_any_work(unlearn_run, tmp_path):
    out = tmp_path / "npo"
    argv = ["unlearn", "--run", str(unlearn_run), "--method", "npo", "--out", str(out), "--quiet",
            "train.epochs=2", "train.batch_size=1000000000"]
    code = f"import sys; from forgetkit.cli import main; sys.exit(main({argv!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            preexec_fn=_limit_memory)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith("error: setting 'train.batch_size': 1000000000 needs at least ")
    assert "for a collated batch of 1000000000 rows" in lines[0] and "more than this machine's" in lines[0]
    assert not (out / "train_log.jsonl").exists() and not (out / "adapter").exists()


@pytest.mark.parametrize(("change", "setting"), [({"epochs": 1e9}, "train.epochs"),
                                                 ({"grad_accum": 10**9}, "train.grad_accum")])
def test_a_run_that_would_never_finish_is_refused_before_any_step(bpe_tokenizer, tmp_path, change, setting):
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    config = TrainConfig(batch_size=4, **change)
    with deadline(60), pytest.raises(SettingError) as refused:
        train_loop(model, cross_entropy, PairedData(retain=examples(bpe_tokenizer)), config,
                   bpe_tokenizer.pad_token_id, run_dir=tmp_path, quiet=True)
    assert refused.value.setting == setting and "passes, more than a run's 10,000,000" in str(refused.value)
    assert not (tmp_path / "train_log.jsonl").exists()


@pytest.mark.parametrize("epochs", [float("nan"), float("inf")])
def test_epochs_that_are_not_a_finite_number_are_refused(epochs):
    with pytest.raises(SettingError, match="must be a finite number") as refused:
        TrainConfig(epochs=epochs)
    assert refused.value.setting == "epochs"


def test_the_epoch_order_reads_any_batch_in_linear_time_as_the_stream_it_always_was():
    order = EpochOrder(7, seed=3)
    reference = EpochOrder(7, seed=3)

    def item(p: int) -> int:  # the loop's order as it was defined: item p of the endless stream
        return reference._perm(p // 7)[p % 7]

    for start, count in [(0, 7), (5, 4), (13, 7), (70, 3), (3, 20)]:  # the last: a batch larger than the set
        assert order.take(start, count) == [item(p) for p in range(start, start + count)]
    with deadline(10):
        far = order.take(7 * 10**14, 7)  # epoch 10^14: the same cost as the first batch
    assert sorted(far) == list(range(7))


def test_a_batch_beyond_the_machines_memory_is_refused_naming_the_setting(bpe_tokenizer, tmp_path, monkeypatch):
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    data = PairedData(retain=examples(bpe_tokenizer))
    longest = max(len(e["input_ids"]) for e in data.retain)
    collated = 8 * longest * 24  # 8 rows of int64 ids, labels and mask
    for memory, what in [(collated - 1, "a collated batch"), (collated, "the hidden states")]:
        monkeypatch.setattr("forgetkit.cost.physical_memory_bytes", lambda memory=memory: memory)
        with pytest.raises(SettingError, match=rf"needs at least .* GiB for {what} .* more than this machine's") \
                as refused:
            train_loop(model, cross_entropy, data, TrainConfig(batch_size=8), bpe_tokenizer.pad_token_id,
                       run_dir=tmp_path, quiet=True)
        assert refused.value.setting == "train.batch_size"
        assert not (tmp_path / "train_log.jsonl").exists()

    from forgetkit.eval.evaluate import evaluate
    from forgetkit.eval.sets import EvalData
    from forgetkit.eval.settings import EvalSettings

    with pytest.raises(SettingError, match="needs at least") as refused:
        evaluate(model, bpe_tokenizer, EvalData(forget=RECORDS), EvalSettings(batch_size=10**9, gradnorm=False),
                 quiet=True)
    assert refused.value.setting == "eval.batch_size"


def test_max_length_beyond_the_models_context_is_clipped_with_a_notice(bpe_tokenizer, capsys):
    model = build_tiny_model(bpe_tokenizer, "gpt2", "micro", max_positions=64)
    assert fit_max_length(model, 32) == 32
    assert capsys.readouterr().err == ""
    assert fit_max_length(model, 100_000) == 64
    assert capsys.readouterr().err == ("notice: max_length 100000 is longer than the model's context of 64 positions; "
                                       "clipped to 64\n")


# --- B. damaged training checkpoints -------------------------------------------------------------------------


def _interrupted_run(tokenizer, run_dir: Path, size: str = "micro") -> None:
    """A run stopped after step 3 of 6, with the checkpoint of step 2 in ``run_dir``."""
    model = build_tiny_model(tokenizer, "llama", size)
    train_loop(model, cross_entropy, PairedData(retain=examples(tokenizer)),
               TrainConfig(epochs=2, batch_size=4, checkpoint_every=2), tokenizer.pad_token_id, run_dir=run_dir,
               quiet=True, on_step=lambda step, _m, _losses: {"stop": "interrupted"} if step == 3 else None)
    assert json.loads((run_dir / CHECKPOINT_DIR / "progress.json").read_text())["step"] == 2


@pytest.mark.parametrize(("name", "damage"), [("progress.json", lambda b: b[: len(b) // 2]),
                                              ("trainable.safetensors", lambda b: b"\x00" * 16),
                                              ("state.pt", lambda b: b[: len(b) // 2]),
                                              ("state.pt", None)])  # None: the file is missing
def test_a_damaged_checkpoint_is_set_aside_once_and_the_run_starts_from_step_0(bpe_tokenizer, tmp_path, capsys,
                                                                                name, damage):
    _interrupted_run(bpe_tokenizer, tmp_path)
    path = tmp_path / CHECKPOINT_DIR / name
    if damage is None:
        path.unlink()
    else:
        path.write_bytes(damage(path.read_bytes()))
    capsys.readouterr()
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    stats = train_loop(model, cross_entropy, PairedData(retain=examples(bpe_tokenizer)),
                       TrainConfig(epochs=2, batch_size=4), bpe_tokenizer.pad_token_id, run_dir=tmp_path, quiet=True)
    assert stats.resumed_from_step == 0 and stats.steps == 6
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and str(tmp_path / CHECKPOINT_DIR) in warnings[0]
    assert "does not parse" in warnings[0] and "set aside as checkpoint.damaged" in warnings[0]
    assert (tmp_path / "checkpoint.damaged" / "progress.json").is_file()
    steps = [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_a_checkpoint_of_another_model_shape_is_a_one_line_refusal(bpe_tokenizer, tmp_path):
    _interrupted_run(bpe_tokenizer, tmp_path, size="micro")
    other = build_tiny_model(bpe_tokenizer, "llama", "small")  # the same parameter names, other shapes
    with pytest.raises(ForgetkitError, match="checkpoint does not match this model's trainable parameters") as refused:
        train_loop(other, cross_entropy, PairedData(retain=examples(bpe_tokenizer)),
                   TrainConfig(epochs=2, batch_size=4), bpe_tokenizer.pad_token_id, run_dir=tmp_path, quiet=True)
    assert len(str(refused.value).splitlines()) == 1
    assert (tmp_path / CHECKPOINT_DIR / "progress.json").is_file()  # refused, not set aside


# --- C. an oracle log of the same forget set -----------------------------------------------------------------


def forget_log(records: list[QARecord], seed: int, named: bool = True) -> dict:
    """A log with a forget set of ``records`` (random losses; keyed by record id with content hashes, or, not
    ``named``, by position as TOFU's are)."""
    rng = random.Random(seed)
    keys = [r.id for r in records] if named else [str(i) for i in range(len(records))]
    set_log: dict = {"avg_gt_loss": {}, "avg_paraphrased_loss": {}, "average_perturb_loss": {}}
    for key, r in zip(keys, records, strict=True):
        set_log["avg_gt_loss"][key] = rng.uniform(0.5, 3)
        set_log["avg_paraphrased_loss"][key] = rng.uniform(0.5, 3)
        set_log["average_perturb_loss"][key] = [rng.uniform(0.5, 3) for _ in range(3)]
        if named:
            set_log.setdefault("example_hash", {})[key] = r.content_hash()
    return {FORGET: set_log}


def shuffled(log: dict, seed: int) -> dict:
    """The same log with each metric's examples in its own random order."""
    rng = random.Random(seed)
    out = {}
    for metric, values in log[FORGET].items():
        items = list(values.items())
        rng.shuffle(items)
        out[metric] = dict(items)
    return {FORGET: out}


def write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def test_an_oracle_log_of_another_forget_set_of_the_same_size_is_refused(tmp_path, capsys):
    others = [QARecord(f"Where does person {i} live?", f"In town {i % 5}.", f"q{i}") for i in range(12)]
    mixed = RECORDS[:9] + others[:3]
    model = write(tmp_path / "model.json", forget_log(RECORDS, seed=0))
    oracle = write(tmp_path / "oracle.json", forget_log(mixed, seed=1))
    assert main(["aggregate", "--logs", str(model), "--oracle-logs", str(oracle)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(model) in err and str(oracle) in err and "not the same forget set" in err
    assert "6 example(s) are in only one of them, by content hash (first: 'p9'" in err


def test_eval_refuses_an_oracle_log_of_another_forget_set_before_loading_the_model(unlearn_run, tmp_path, capsys):
    bench = unlearn_run / "benchmark"
    holdout = read_records(bench / "holdout10.jsonl")
    assert len(holdout) == len(read_records(bench / "forget10.jsonl"))
    oracle = write(tmp_path / "oracle.json", forget_log(holdout, seed=0))
    forget = bench / "forget10.jsonl"
    assert main(["eval", "--model", str(unlearn_run / "target"), "--forget", str(forget), "--oracle-log", str(oracle),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(oracle) in err and str(forget) in err and "not the same forget set" in err
    assert not (tmp_path / "out" / "summary.json").exists()


def test_the_same_forget_set_shuffled_gives_the_same_forget_quality(tmp_path):
    records = [QARecord(f"Q{i}?", f"A{i}.", f"r{i}") for i in range(40)]
    model, oracle = forget_log(records, seed=0), forget_log(records, seed=1)
    straight = tofu.aggregate(model, oracle, "model", "oracle")
    mixed = tofu.aggregate(model, shuffled(oracle, seed=2), "model", "oracle")
    assert straight["forget_set_match"] == mixed["forget_set_match"] == "matched by content hash"
    assert mixed["forget_quality"] == pytest.approx(straight["forget_quality"], rel=1e-12)
    assert mixed["ks_statistic"] == straight["ks_statistic"]
    aligned, _ = tofu.oracle_forget_set(tofu.log_example_names(model[FORGET]), shuffled(oracle, seed=2), "m", "o")
    assert list(aligned["avg_paraphrased_loss"]) == [r.id for r in records]  # in the model's order
    assert aligned["avg_paraphrased_loss"] == oracle[FORGET]["avg_paraphrased_loss"]


def test_logs_that_name_no_records_are_matched_by_count_and_say_so(tmp_path):
    model, oracle = forget_log(RECORDS, seed=0, named=False), forget_log(RECORDS[::-1], seed=1, named=False)
    result = tofu.aggregate(model, oracle, "model.json", "oracle.json")
    assert result["forget_quality"] is not None
    assert result["forget_set_match"] == ("matched by count only (no record ids or content hashes in model.json and "
                                          "oracle.json)")
    ids_only = forget_log(RECORDS, seed=0)
    del ids_only[FORGET]["example_hash"]
    other_ids = forget_log([QARecord(r.question, r.answer, f"x{i}") for i, r in enumerate(RECORDS)], seed=1)
    del other_ids[FORGET]["example_hash"]
    with pytest.raises(ForgetkitError, match=r"24 example\(s\) .* by record id \(first: 'p0', only in model\)"):
        tofu.aggregate(ids_only, other_ids, "model", "oracle")
