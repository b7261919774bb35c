"""Randomized smoothing of forget prompts: the emission test, the bounds, the noise kinds and the eval flag."""

from __future__ import annotations

import json

import pytest

from forgetkit.cli import main
from forgetkit.data.formatting import collate, encode_qa
from forgetkit.data.records import QARecord
from forgetkit.errors import SettingError
from forgetkit.eval.mia import clopper_pearson
from forgetkit.eval.settings import parse_noise
from forgetkit.eval.smoothing import _emitted, smoothed_emission


def _memorised_model(tokenizer, records):
    """A micro llama fine-tuned until it reproduces ``records``' answers greedily."""
    from forgetkit.data.formatting import tokenize_qa
    from forgetkit.models import build_tiny_model
    from forgetkit.train import TrainConfig, fine_tune

    model = build_tiny_model(tokenizer, "llama", "micro", seed=0)
    fine_tune(model, tokenize_qa(tokenizer, records, 48), TrainConfig(epochs=60, batch_size=4, lr=1e-2),
              tokenizer.pad_token_id, quiet=True)
    return model.eval()


RECORDS = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", str(i)) for i in range(4)]


@pytest.fixture(scope="module")
def memorised(bpe_tokenizer):
    return _memorised_model(bpe_tokenizer, RECORDS)


def test_emission_is_greedy_reproduction_of_the_answer(bpe_tokenizer, memorised):
    from forgetkit.eval.generation import greedy_answers

    answers = greedy_answers(memorised, bpe_tokenizer, [r.question for r in RECORDS], 24)
    parts = collate([dict(zip(("input_ids", "labels"), encode_qa(bpe_tokenizer, r.question, r.answer), strict=True))
                     for r in RECORDS], bpe_tokenizer.pad_token_id)
    emitted = _emitted(memorised, parts, None).tolist()
    assert emitted == [a == r.answer for a, r in zip(answers, RECORDS, strict=True)]
    assert all(emitted), "the fixture model memorised every answer"


def test_bounds_follow_the_counts_and_noise_lowers_emission(bpe_tokenizer, memorised):
    small = smoothed_emission(memorised, bpe_tokenizer, RECORDS, "embed:0.01", samples=20)
    assert small["unperturbed_emission_rate"] == 1.0 and small["emission_rate"] == 1.0
    assert small["set_upper_bound"] == 1.0 and small["forward_passes"] == 84
    swapped = smoothed_emission(memorised, bpe_tokenizer, RECORDS, "tokens:1.0", samples=20, seed=1)
    k = round(swapped["emission_rate"] * 80)
    assert swapped["emission_rate"] < 1.0
    assert swapped["set_upper_bound"] == pytest.approx(clopper_pearson(k, 80, 0.05)[1])
    assert swapped["emission_rate"] <= swapped["set_upper_bound"] <= swapped["max_question_upper_bound"]
    again = smoothed_emission(memorised, bpe_tokenizer, RECORDS, "tokens:1.0", samples=20, seed=1)
    assert again == swapped, "seeded"


@pytest.mark.parametrize("spec", ["gauss:0.1", "embed:0", "embed:x", "tokens:1.5", "embed"])
def test_malformed_noise_is_refused(spec):
    with pytest.raises(SettingError, match="setting 'smoothing'"):
        parse_noise(spec)


def test_eval_smoothing_flag(unlearn_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(out), "--smoothing", "embed:0.5", "--smoothing-samples", "4", "--no-gradnorm",
                 "--max-new-tokens", "4", "--canary-candidates", "20", "--retain-limit", "20", "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())["smoothing"]
    assert s["samples_per_question"] == 4 and s["questions"] > 0 and 0 <= s["emission_rate"] <= s["set_upper_bound"]
    assert "smoothing embed:0.5: emission rate" in capsys.readouterr().out
    code = main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(tmp_path / "e2"), "--smoothing", "noise:1", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --smoothing: expected embed:SIGMA (> 0) or tokens:RHO (in (0, 1]), "
                                 "got 'noise:1'"]
    assert not (tmp_path / "e2").exists()
