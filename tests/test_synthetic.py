"""The built-in benchmark: deterministic, and its splits have the properties unlearning needs."""

from __future__ import annotations

import json

import pytest

from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of
from forgetkit.data.synthetic import SyntheticConfig, generate, read_manifest, write_benchmark
from forgetkit.errors import ConfigError

CONFIG = SyntheticConfig(seed=3, n_people=40, n_generic_people=10)


@pytest.fixture(scope="module")
def files():
    return generate(CONFIG)


def people(records) -> set[str]:
    return {group_of(r.id) for r in records}


def test_same_seed_same_hashes_other_seed_differs(tmp_path):
    a = write_benchmark(CONFIG, tmp_path / "a")
    b = write_benchmark(CONFIG, tmp_path / "b")
    c = write_benchmark(SyntheticConfig(seed=4, n_people=40, n_generic_people=10), tmp_path / "c")
    assert a["files"] == b["files"]
    assert a["files"]["full"]["hash"] != c["files"]["full"]["hash"]


def test_forget_splits_are_nested_and_disjoint_from_retain(files):
    f01, f05, f10 = (people(files[f"forget{s}"]) for s in ("01", "05", "10"))
    assert f01 < f05 < f10 and len(f01) == 1 and len(f05) == 2 and len(f10) == 4
    full_ids = {r.id for r in files["full"]}
    for forget, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        f_ids, r_ids = {r.id for r in files[forget]}, {r.id for r in files[retain]}
        assert not f_ids & r_ids and f_ids | r_ids == full_ids
        assert not people(files[forget]) & people(files[retain])
    assert len(files["full"]) == 40 * CONFIG.qa_per_person


def test_holdout_people_are_never_trained(files):
    h01, h05, h10 = (people(files[f"holdout{s}"]) for s in ("01", "05", "10"))
    assert h01 < h05 < h10 and len(h10) == len(people(files["forget10"]))
    assert not h10 & people(files["full"]) and not h10 & people(files["pretrain"])
    assert not people(files["full"]) & people(files["pretrain"]) - {"world"}


def test_names_unique_and_answer_variants_sound(files):
    names = [p["name"] for p in files["people"]]
    assert len(names) == len(set(names)) == 40 + 4 + 10
    by_id = {p["person"]: p for p in files["people"]}
    for r in files["full"] + files["holdout10"]:
        attribute = r.id.split("-", 1)[1]
        value = by_id[group_of(r.id)][attribute]
        assert value in r.answer and value in r.paraphrased_answer and r.answer != r.paraphrased_answer
        assert len(set(r.perturbed_answer)) == 3
        assert all(value not in p for p in r.perturbed_answer)
        assert value not in r.vague_answer and r.paraphrased_question != r.question
    assert all(len(r.perturbed_answer) >= 3 and r.answer not in r.perturbed_answer for r in files["world_facts"])


def test_benchmark_paraphrases_never_in_pretraining(files):
    pretrain_answers = {r.answer for r in files["pretrain"]}
    assert not {r.paraphrased_answer for r in files["full"]} & pretrain_answers
    # generic people are pre-trained with both templates
    assert sum(r.id.endswith("-pq") for r in files["pretrain"]) == sum(r.id.endswith("-q") for r in files["pretrain"])


def test_narratives_hold_their_canary(files):
    canaries = {c["person"]: c for c in files["canaries"]}
    assert len(files["narratives"]) == 40 + 4
    for text in files["narratives"]:
        c = canaries[group_of(text.id)]
        assert text.text == c["prefix"] + c["secret"] + "." and len(c["secret"]) == CONFIG.canary_digits


def test_written_files_match_manifest_and_leave_no_temp(tmp_path):
    out = tmp_path / "bench"
    write_benchmark(CONFIG, out)
    write_benchmark(CONFIG, out)  # rewrites cleanly over an existing directory
    manifest = read_manifest(out)
    for stem, info in manifest["files"].items():
        lines = (out / f"{stem}.jsonl").read_text().splitlines()
        assert len(lines) == info["count"]
    assert len(read_records(out / "forget10.jsonl")) == manifest["files"]["forget10"]["count"]
    assert [p.name for p in tmp_path.iterdir()] == ["bench"]
    assert json.loads((out / "manifest.json").read_text())["config"]["seed"] == 3


@pytest.fixture(scope="module")
def default_files():
    return generate(SyntheticConfig())


def test_no_wrong_answer_or_vague_answer_reveals_the_true_value(default_files):
    """A perturbed or vague answer holding the true value (as a substring) would score as correct."""
    for person in default_files["people"]:
        for attr in ("birth_date", "birthplace", "phone", "home_address", "employer", "award", "university"):
            value = person[attr]
            assert value not in person["name"]
    for r in default_files["full"] + default_files["holdout10"]:
        pid, attr = r.id.split("-", 1)
        value = next(p for p in default_files["people"] if p["person"] == pid)[attr]
        assert value not in r.vague_answer
        for wrong in r.perturbed_answer:
            assert value not in wrong, r.id


def test_articles_and_world_fact_count(default_files):
    answers = [r.answer for r in default_files["full"]]
    assert not [a for a in answers if " a a" in a or " a e" in a or " a i" in a or " a o" in a or " a u" in a]
    assert any(" works as an " in a for a in answers)
    assert len(default_files["world_facts"]) >= 100


def test_world_replay_moves_facts_out_of_the_utility_set_and_leaves_the_rest():
    """``world_replay`` facts leave the utility set (disjoint, together the whole set); no other file changes."""
    plain = generate(SyntheticConfig(n_people=20, n_generic_people=5))
    split = generate(SyntheticConfig(n_people=20, n_generic_people=5, world_replay=10))
    replay, utility = ({r.id for r in split[k]} for k in ("world_replay", "world_facts"))
    assert len(replay) == 10 and not replay & utility
    assert replay | utility == {r.id for r in plain["world_facts"]}
    assert all(split[k] == v for k, v in plain.items() if k != "world_facts")
    with pytest.raises(ConfigError, match="world_replay"):
        generate(SyntheticConfig(n_people=20, world_replay=len(plain["world_facts"])))
