"""Exact unlearning with sharded adapters: a deletion retrains its shard to exactly the from-scratch adapter,
leaves the other shards untouched, and routing sends a person's questions to their shard."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from forgetkit.data.readers import read_records
from forgetkit.data.synthetic import person_of
from forgetkit.errors import ForgetkitError
from forgetkit.exact.sharded import ShardConfig, assign, delete, read_manifest, route, shard_train, train_shard
from forgetkit.train import TrainConfig


def _weights(path):
    (f,) = path.glob("*.safetensors")
    return load_file(f)


def test_assignment_is_balanced_and_order_free():
    groups = [f"p{i:03d}" for i in range(10)]
    a = assign(groups, 3)
    assert a == assign(list(reversed(groups)), 3)
    assert sorted(list(a.values()).count(s) for s in range(3)) == [3, 3, 4]
    with pytest.raises(ForgetkitError):
        assign(groups, 0)


@pytest.fixture(scope="module")
def sharded(unlearn_run, tmp_path_factory):
    records = read_records(unlearn_run / "benchmark" / "full.jsonl")
    config = ShardConfig(shards=3, train=TrainConfig(epochs=1, batch_size=8, lr=3e-3))
    out = tmp_path_factory.mktemp("shards")
    manifest = shard_train(unlearn_run / "base", records, out, config)
    return {"records": records, "config": config, "out": out, "manifest": manifest, "base": unlearn_run / "base"}


def test_deletion_retrains_only_its_shard_exactly(sharded, tmp_path):
    out, records, config = sharded["out"], sharded["records"], sharded["config"]
    before = {i: _weights(out / f"shard_{i}") for i in range(3)}
    victim = records[0]
    shard = read_manifest(out)["assignment"][person_of(victim.id)]
    report = delete(out, records, [victim])
    assert report["retrained"] == [shard] and len(report["untouched"]) == 2
    for i in report["untouched"]:
        after = _weights(out / f"shard_{i}")
        assert all(after[k].equal(before[i][k]) for k in after)
    manifest = read_manifest(out)
    mine = [r for r in records[1:] if manifest["assignment"][person_of(r.id)] == shard]
    train_shard(sharded["base"], mine, [], config, shard, tmp_path / "scratch")
    retrained, scratch = _weights(out / f"shard_{shard}"), _weights(tmp_path / "scratch")
    assert retrained.keys() == scratch.keys() and all(retrained[k].equal(scratch[k]) for k in scratch)
    assert not retrained.keys() == before[shard].keys() or any(not retrained[k].equal(before[shard][k])
                                                              for k in retrained)
    assert manifest["shards"][shard]["count"] == len(mine)
    text = (out / "shards.json").read_text()
    assert victim.answer not in text and victim.question not in text


def test_deleting_a_whole_person_drops_their_prototype(sharded):
    out, records = sharded["out"], sharded["records"]
    person = person_of(records[-1].id)
    theirs = [r for r in records if person_of(r.id) == person]
    delete(out, records, theirs)
    assert person not in read_manifest(out)["prototypes"]
    with pytest.raises(ForgetkitError, match="belongs to no shard"):
        delete(out, records, [records[0].__class__("q", "a", "zz-unknown")])


def test_routing_sends_a_person_to_their_shard(sharded):
    from forgetkit.models import load_model

    out, records = sharded["out"], sharded["records"]
    manifest = read_manifest(out)
    model, tokenizer = load_model(sharded["base"])
    kept = [r for r in records if person_of(r.id) in manifest["prototypes"]]
    shards = route(out, model, tokenizer, [r.question for r in kept])
    expected = [manifest["assignment"][person_of(r.id)] for r in kept]
    accuracy = sum(a == b for a, b in zip(shards, expected, strict=True)) / len(kept)
    assert accuracy >= 0.9, accuracy
    assert json.loads((out / "shards.json").read_text())["assignment"]
