"""Exact unlearning with sharded adapters: a deletion retrains its shard to exactly the from-scratch adapter,
leaves the other shards untouched, and routing sends a person's questions to their shard."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of
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
    shard = read_manifest(out)["assignment"][group_of(victim.id)]
    report = delete(out, records, [victim])
    assert report["retrained"] == [shard] and len(report["untouched"]) == 2
    for i in report["untouched"]:
        after = _weights(out / f"shard_{i}")
        assert all(after[k].equal(before[i][k]) for k in after)
    manifest = read_manifest(out)
    mine = [r for r in records[1:] if manifest["assignment"][group_of(r.id)] == shard]
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
    person = group_of(records[-1].id)
    theirs = [r for r in records if group_of(r.id) == person]
    delete(out, records, theirs)
    assert person not in read_manifest(out)["prototypes"]
    with pytest.raises(ForgetkitError, match="belongs to no shard"):
        delete(out, records, [records[0].__class__("q", "a", "zz-unknown")])


def test_routing_sends_a_person_to_their_shard(sharded):
    from forgetkit.models import load_model

    out, records = sharded["out"], sharded["records"]
    manifest = read_manifest(out)
    model, tokenizer = load_model(sharded["base"])
    kept = [r for r in records if group_of(r.id) in manifest["prototypes"]]
    shards = route(out, model, tokenizer, [r.question for r in kept])
    expected = [manifest["assignment"][group_of(r.id)] for r in kept]
    accuracy = sum(a == b for a, b in zip(shards, expected, strict=True)) / len(kept)
    assert accuracy >= 0.9, accuracy
    assert json.loads((out / "shards.json").read_text())["assignment"]


def test_served_shards_route_each_row_through_its_adapter_or_average_them(sharded):
    import torch

    from forgetkit.adapters.loading import load_adapter
    from forgetkit.data.formatting import collate, tokenize_qa
    from forgetkit.exact.sharded import load_sharded
    from forgetkit.models import load_model

    out, records = sharded["out"], sharded["records"]
    routed, tokenizer = load_sharded(out, "route")
    averaged, _ = load_sharded(out, "average")
    picked = records[:6]
    batch = collate(tokenize_qa(tokenizer, picked, 64).examples, tokenizer.pad_token_id)
    shards = routed.router.shards_of_batch(routed.model, batch["input_ids"], batch["attention_mask"])
    # a row with its answer routes like its question alone
    assert shards == route(out, routed.model, tokenizer, [r.question for r in picked])
    with torch.no_grad():
        got = routed(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean = averaged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        probs = []
        for i in range(len(read_manifest(out)["shards"])):
            base, _ = load_model(sharded["base"])
            single = load_adapter(base, out / f"shard_{i}").eval()
            logits = single(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            probs.append(torch.softmax(logits.float(), -1))
            for row in [k for k, s in enumerate(shards) if s == i]:
                assert torch.allclose(got[row], logits[row], atol=1e-5)
    assert torch.allclose(mean.exp(), torch.stack(probs).mean(0), atol=1e-5)
    prompt = torch.tensor([[tokenizer.pad_token_id] * 2 + batch["input_ids"][0, :5].tolist()])
    mask = torch.tensor([[0, 0] + [1] * 5])
    for model in (routed, averaged):
        generated = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=4,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        assert generated.shape[0] == 1 and 7 < generated.shape[1] <= 11


def test_shard_train_and_deletion_commands_resume_compose_and_record_an_exact_guarantee(unlearn_run, tmp_path,
                                                                                       capsys):
    from forgetkit.audit.ledger import entries
    from forgetkit.cli import main

    shards, ledger = tmp_path / "shards", tmp_path / "ledger.sqlite"
    train = ["shard-train", "--run", str(unlearn_run), "--out", str(shards), "--quiet", "shards=2",
             "train.epochs=1", "train.batch_size=8"]
    assert main(train) == 0
    files = {f: f.stat().st_mtime_ns for f in shards.glob("shard_*/*.safetensors")}
    assert main([*train, "--eval"]) == 0  # finished shards are kept, not retrained
    assert {f: f.stat().st_mtime_ns for f in shards.glob("shard_*/*.safetensors")} == files
    trained = json.loads((shards / "summary.json").read_text())
    assert trained["routing_accuracy"]["question"] >= 0.9 and trained["eval"]["route"]["model_utility"] > 0
    manifest = read_manifest(shards)
    assert manifest["data"]["count"] > 0 and manifest["deleted"] == []

    first = tmp_path / "first"
    assert main(["unlearn", "--method", "sharded_exact", "--run", str(unlearn_run), "--split", "forget10",
                 "--adapter", str(shards), "--out", str(first), "--ledger", str(ledger), "--eval", "--quiet"]) == 0
    summary = json.loads((first / "summary.json").read_text())
    after = read_manifest(first / "shards")
    forget = read_records(unlearn_run / "benchmark" / "forget10.jsonl")
    assert len(after["deleted"]) == len({r.content_hash() for r in forget})
    assert summary["eval"]["model_utility"] is not None
    for i in summary["untouched"]:  # copied as they were
        assert _weights(first / "shards" / f"shard_{i}").keys() == _weights(shards / f"shard_{i}").keys()
        assert all(_weights(first / "shards" / f"shard_{i}")[k].equal(v)
                   for k, v in _weights(shards / f"shard_{i}").items())
    assert read_manifest(shards)["deleted"] == []  # the source is left as it was
    (row,) = entries(ledger)
    assert row["method"] == "sharded_exact" and row["guarantee"] == "exact" and row["forget_count"] == len(forget)
    people = {group_of(r.id) for r in forget}
    assert not people & set(after["prototypes"])
    text = " ".join(f.read_text() for f in [first / "audit.json", first / "summary.json", first / "shards" /
                                             "shards.json"])
    assert all(r.answer not in text and r.question not in text for r in forget)

    # a second request on the result composes with the first; a record of nobody's shard is refused
    other = [r for r in read_records(unlearn_run / "benchmark" / "full.jsonl") if group_of(r.id) not in people][:1]
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"question": other[0].question, "answer": other[0].answer, "id": other[0].id}) + "\n")
    assert main(["unlearn", "--method", "sharded_exact", "--forget", str(extra), "--adapter", str(first / "shards"),
                 "--out", str(tmp_path / "second"), "--ledger", str(ledger), "--quiet"]) == 0
    assert len(read_manifest(tmp_path / "second" / "shards")["deleted"]) == len(after["deleted"]) + 1
    assert len(entries(ledger)) == 2
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text(json.dumps({"question": "q?", "answer": "a.", "id": "zz-unknown"}) + "\n")
    capsys.readouterr()
    assert main(["unlearn", "--method", "sharded_exact", "--forget", str(stranger), "--adapter", str(shards),
                 "--out", str(tmp_path / "third"), "--ledger", str(ledger), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert str(stranger) in err and "zz-unknown" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "third").exists() and len(entries(ledger)) == 2


def test_routing_reads_the_question_alone(sharded):
    from forgetkit.data.formatting import encode_qa, prompt_ids
    from forgetkit.exact.sharded import _template, question_tokens
    from forgetkit.models import load_model

    _, tokenizer = load_model(sharded["base"])
    lead, trail = _template(tokenizer)
    question = "Where was Fenric Velholm born?"
    for ids in (prompt_ids(tokenizer, question), encode_qa(tokenizer, question, "In Upton, a town.")[0]):
        assert tokenizer.decode(question_tokens(ids, lead, trail)).strip() == question


@pytest.mark.parametrize("group_by", ["cluster", "record"])
def test_other_groupings_keep_a_group_in_one_shard_and_delete_exactly(group_by, unlearn_run, tmp_path):
    from forgetkit.exact.sharded import shard_of

    records = read_records(unlearn_run / "benchmark" / "full.jsonl")[:60]
    config = ShardConfig(shards=2, group_by=group_by, clusters=5, train=TrainConfig(epochs=1, batch_size=8, lr=3e-3))
    manifest = shard_train(unlearn_run / "base", records, tmp_path / "shards", config)
    groups = manifest["record_groups"]
    assert len(set(groups.values())) == (5 if group_by == "cluster" else 60)
    assert {manifest["assignment"][g] for g in groups.values()} == {0, 1}
    for i, shard in enumerate(manifest["shards"]):
        assert shard["count"] == sum(shard_of(manifest, r) == i for r in records)
    victim = records[7]
    report = delete(tmp_path / "shards", records, [victim])
    assert report["retrained"] == [shard_of(manifest, victim)]
    assert victim.content_hash() not in read_manifest(tmp_path / "shards")["record_groups"]
    with pytest.raises(ForgetkitError):
        ShardConfig(group_by="alphabet")
