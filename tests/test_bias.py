"""WEAT (Caliskan et al. 2017): the effect size and permutation p-value against hand-computed answers, the shipped
word sets, and `forgetkit eval --weat` on a model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetkit.cli import main
from forgetkit.errors import DataError
from forgetkit.eval.bias import associations, read_weat_tests, weat, weat_scores, word_vectors


def test_effect_size_and_p_value_by_hand():
    """s(w) = cos(w, a) − cos(w, b) with a = e1, b = e2: X on e1 (s = 1, 1), Y on e2 (s = −1, −1).
    d = 2 / sd([1, 1, −1, −1], ddof 1) = 2 / sqrt(4/3); of the 6 equal splits of the four words only the observed
    one reaches Σ_X − Σ_Y = 4."""
    x, y = np.array([[1.0, 0.0], [2.0, 0.0]]), np.array([[0.0, 1.0], [0.0, 3.0]])
    a, b = np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])
    np.testing.assert_allclose(associations(np.concatenate([x, y]), a, b), [1, 1, -1, -1])
    got = weat(x, y, a, b)
    assert got["effect_size"] == pytest.approx(2 / np.sqrt(4 / 3))
    assert got["p_value"] == pytest.approx(1 / 6) and got["partitions"] == 6
    swapped = weat(y, x, a, b)  # the test is antisymmetric in the targets
    assert swapped["effect_size"] == pytest.approx(-got["effect_size"]) and swapped["p_value"] == 1.0


def test_a_mixed_association_has_a_smaller_effect_than_a_clean_one():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    clean = weat(a[:, :] + 0.1 * rng.normal(size=(4, 8)), b + 0.1 * rng.normal(size=(4, 8)), a, b)
    mixed = weat(np.concatenate([a[:2], b[:2]]), np.concatenate([b[2:], a[2:]]), a, b)
    assert clean["effect_size"] > 1.0 and clean["p_value"] < 0.05  # at most 1.87 with four words a side
    assert abs(mixed["effect_size"]) < clean["effect_size"]


def test_the_shipped_word_sets_and_bad_files(tmp_path):
    tests = read_weat_tests()
    assert set(tests) == {"weat6_career_family", "weat7_math_arts", "weat8_science_arts"}
    assert all(len(t[k]) == 8 for t in tests.values() for k in "XYAB")
    assert tests["weat6_career_family"]["X"][:2] == ["John", "Paul"] and "Einstein" in tests["weat8_science_arts"]["X"]
    bad = tmp_path / "weat.json"
    bad.write_text(json.dumps({"tests": {"t": {"X": ["a", "b"], "Y": ["c"], "A": ["d", "e"], "B": ["f", "g"]}}}))
    with pytest.raises(DataError, match=r"weat.json: field 'tests.t.Y': needs a list of at least two words"):
        read_weat_tests(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(DataError, match="not a WEAT test file"):
        read_weat_tests(bad)


def test_word_vectors_average_the_last_hidden_state_over_the_words_tokens(bpe_tokenizer):
    import torch

    from forgetkit.models import build_tiny_model

    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0).eval()
    vectors = word_vectors(model, bpe_tokenizer, ["poet", "town"])
    ids = bpe_tokenizer(" town", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    np.testing.assert_allclose(vectors[1], hidden.double().mean(0).numpy(), rtol=1e-6)
    scores = weat_scores(model, bpe_tokenizer)
    assert set(scores) == set(read_weat_tests()) and all(np.isfinite(s["effect_size"]) for s in scores.values())


def test_eval_reports_weat_and_refuses_a_bad_file(unlearn_run, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(out), "--weat", "--no-gradnorm", "--max-new-tokens", "4", "--canary-candidates", "20",
                 "--retain-limit", "20", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["bias"]["weat"]) == set(read_weat_tests())
    assert "WEAT weat7_math_arts: effect size" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code = main(["eval", "--model", str(unlearn_run / "target"), "--data", str(unlearn_run / "benchmark"),
                 "--out", str(tmp_path / "eval2"), "--weat", str(bad), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {bad}: not a WEAT test file")
    assert not (tmp_path / "eval2").exists()
