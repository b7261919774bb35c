"""Toxic generation rate: the shipped prompts, the labelled lexicon fallback, and the pluggable classifier path
(a tiny sequence classifier trained here, saved as safetensors, loaded from its directory)."""

from __future__ import annotations

import json

import pytest
import torch

from forgetkit.errors import ForgetkitError
from forgetkit.eval import toxicity as tox

TOXIC = ["you are a stupid idiot", "shut up you worthless loser", "what a pathetic moron", "i hate you, you jerk",
         "you disgusting pig", "go away you useless fool"]
CLEAN = ["the weather is lovely today", "thank you for your kind help", "the garden is full of flowers",
         "we had tea in the morning", "the museum opens at nine", "the children played in the park"]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    """A two-layer Llama sequence classifier with labels neutral/toxic, trained until it separates TOXIC from
    CLEAN, saved like any Hugging Face classifier."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from forgetkit.models import train_tokenizer

    tokenizer = train_tokenizer(TOXIC + CLEAN, vocab_size=200)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64, num_labels=2,
                         id2label={0: "neutral", 1: "toxic"}, label2id={"neutral": 0, "toxic": 1},
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    batch = tokenizer(TOXIC + CLEAN, return_tensors="pt", padding=True)
    labels = torch.tensor([1] * len(TOXIC) + [0] * len(CLEAN))
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimiser.zero_grad()
        model(**batch, labels=labels).loss.backward()
        optimiser.step()
    out = tmp_path_factory.mktemp("toxicity") / "classifier"
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def test_shipped_prompts_carry_their_source_and_kinds():
    prompts = tox.read_prompts()
    assert len(prompts) == 40 and {p["kind"] for p in prompts} == {"provocative", "neutral"}
    from importlib import resources

    meta = json.loads(resources.files("forgetkit.eval").joinpath("data/toxicity_prompts.json").read_text())
    assert "RealToxicityPrompts" in meta["source"] and meta["licence"]


def test_lexicon_matches_whole_words_and_phrases_only():
    score = tox.lexicon_scorer()
    assert score(["You absolute idiot.", "Shut up now", "a classy assessment", "hello there"]) == [1.0, 1.0, 0.0, 0.0]


def test_a_classifier_directory_scores_by_its_toxic_label(classifier_dir):
    score, label = tox.scorer_of(str(classifier_dir))
    assert label == "classifier classifier"
    scores = score(TOXIC + CLEAN)
    assert all(s > 0.5 for s in scores[: len(TOXIC)]) and all(s < 0.5 for s in scores[len(TOXIC):])


def test_toxic_label_is_found_by_name_or_position():
    assert tox.toxic_label({0: "non-toxic", 1: "toxic"}) == 1
    assert tox.toxic_label({0: "TOXIC", 1: "not_toxic"}) == 0
    assert tox.toxic_label({0: "LABEL_0", 1: "LABEL_1"}) == 1
    with pytest.raises(ForgetkitError, match="toxic label"):
        tox.toxic_label({0: "a", 1: "b", 2: "c"})


def test_a_directory_that_is_no_classifier_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ForgetkitError) as info:
        tox.scorer_of(str(tmp_path))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_rates_are_the_share_of_continuations_at_or_above_the_threshold(bpe_tokenizer):
    """With a scorer that gives known scores in prompt order, the rates are counted per kind."""
    from forgetkit.models import build_tiny_model

    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0).eval()
    prompts = [{"id": "a", "text": "person 1 is", "kind": "provocative"},
               {"id": "b", "text": "person 2 is", "kind": "provocative"},
               {"id": "c", "text": "person 3 is", "kind": "neutral"}]
    seen = []

    def stub(texts):
        seen.extend(texts)
        return [0.9, 0.1, 0.5]

    out = tox.toxicity(model, bpe_tokenizer, stub, "stub", prompts, 8)
    assert len(seen) == 3 and out["n_prompts"] == 3 and out["scorer"] == "stub"
    assert out["provocative_rate"] == 0.5 and out["neutral_rate"] == 1.0  # 0.5 is at the threshold: toxic
    assert out["toxic_rate"] == pytest.approx(2 / 3) and out["mean_score"] == pytest.approx(1.5 / 3)


def test_eval_toxicity_end_to_end(unlearn_run, tmp_path, capsys, classifier_dir):
    from forgetkit.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(out), "--quiet", "--no-gradnorm", "--max-new-tokens", "8",
                 "--toxicity", str(classifier_dir)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["toxicity"]["n_prompts"] == 40 and 0 <= summary["toxicity"]["toxic_rate"] <= 1
    from forgetkit.models import load_model  # the same rates as the library computes on the same model

    model, tokenizer = load_model(unlearn_run / "target")
    scorer, label = tox.scorer_of(str(classifier_dir))
    assert summary["toxicity"] == tox.toxicity(model.eval(), tokenizer, scorer, label,
                                               max_new_tokens=summary["toxicity"]["max_new_tokens"])
    assert "toxic generation rate (classifier classifier)" in capsys.readouterr().out
    assert main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(tmp_path / "bad"), "--quiet", "--toxicity", str(tmp_path / "missing")]) == 2
