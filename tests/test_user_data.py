"""`forgetkit prepare --data`: a user's own QA dataset (grouped records, or TOFU's released layout) prepared on a
tiny pretrained chat model built in code, then unlearned and benchmarked as the built-in benchmark is; and the
bad inputs of that path, each one line with exit 2 and nothing left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chat_models import chatml_tokenizer, tiny_chat_model

from forgetkit.cli import main
from forgetkit.data.readers import content_key, read_records
from forgetkit.data.records import group_of
from forgetkit.data.synthetic import SyntheticConfig, write_benchmark
from forgetkit.data.user_splits import DatasetSettings, write_tofu_layout, write_user_benchmark
from forgetkit.errors import DataError
from forgetkit.io import write_jsonl
from forgetkit.models import save_model, train_tokenizer

MICRO = SyntheticConfig(n_people=20, qa_per_person=3, n_generic_people=0, calibration_people=2)
# the shipped TOFU recipe, shrunk to seconds: ChatML QA pairs of the tiny tokenizer fit 160 tokens
TINY = ["target.epochs=1", "target.batch_size=16", "model.max_length=160", "max_new_tokens=4", "target_lora.r=4",
        "target_lora.alpha=8", "device=cpu"]


@pytest.fixture(scope="module")
def builtin(tmp_path_factory) -> Path:
    """The micro benchmark's files, as the built-in path writes them."""
    out = tmp_path_factory.mktemp("builtin") / "benchmark"
    write_benchmark(MICRO, out)
    return out


@pytest.fixture(scope="module")
def tofu_dir(builtin, tmp_path_factory) -> Path:
    """The same benchmark in TOFU's released layout: no ids, no grouping field, JSON Lines named .json."""
    out = tmp_path_factory.mktemp("tofu")
    write_tofu_layout(builtin, out)
    return out


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "chat"
    tok = chatml_tokenizer()
    save_model(tiny_chat_model(tok, seed=5), tok, path)
    return path


@pytest.fixture(scope="module")
def tofu_run(tofu_dir, chat_model, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "tofu"
    assert main(["prepare", "--config", "tofu_smollm2", "--data", str(tofu_dir), "--quiet", f"run_dir={run}",
                 f"base_model={chat_model}", "data.group_size=3", *TINY]) == 0
    return run


def _contents(path: Path) -> list[str]:
    return [content_key(r) for r in read_records(path)]


def test_tofu_layout_reads_back_as_the_builtin_benchmark(tofu_run, builtin):
    """Nothing of the built-in path leaks into the user-data path, and nothing is lost: every split holds the
    same records (by content) as the built-in one, with its paraphrased and perturbed answers."""
    bench = tofu_run / "benchmark"
    for name in ("full", "forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "holdout10",
                 "calibration", "world_facts"):
        assert sorted(_contents(bench / f"{name}.jsonl")) == sorted(_contents(builtin / f"{name}.jsonl")), name
    ours = {content_key(r): r for r in read_records(bench / "forget10.jsonl")}
    for record in read_records(builtin / "forget10.jsonl"):
        mine = ours[content_key(record)]
        assert mine.perturbed_answer == record.perturbed_answer and mine.paraphrased_question
    # groups are TOFU's consecutive blocks (3 per person here), the built-in people exactly
    theirs = {content_key(r): group_of(r.id) for r in read_records(builtin / "full.jsonl")}
    pairs = {(group_of(r.id), theirs[content_key(r)]) for r in read_records(bench / "full.jsonl")}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 20
    assert not (bench / "narratives.jsonl").exists() and not (tofu_run / "edits").exists()
    manifest = json.loads((bench / "manifest.json").read_text())
    assert manifest["layout"] == "tofu" and manifest["groups"] == {"trained": 20, "holdout": 2, "calibration": 2}


def test_tofu_prepare_trains_on_the_users_records_only(tofu_run):
    target = json.loads((tofu_run / "target" / "stage.json").read_text())
    oracle = json.loads((tofu_run / "oracle_forget10" / "stage.json").read_text())
    assert (target["examples"], oracle["examples"]) == (60, 54)  # no narratives, no world facts replayed
    assert target["world_facts"] is None and (tofu_run / "target" / "adapter_model.safetensors").is_file()
    summary = json.loads((tofu_run / "summary.json").read_text())
    assert set(summary["exact_match"]["target"]) == {"forget10", "holdout10", "retain90", "world_facts"}


def test_unlearn_and_bench_read_a_prepared_user_dataset(tofu_run, tmp_path):
    out = tmp_path / "npo"
    assert main(["unlearn", "--run", str(tofu_run), "--split", "forget10", "--method", "npo", "--quiet",
                 "train.epochs=1", "--until", "indistinguishable", "--out", str(out),
                 "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criterion"]["calibration_examples"] == 6  # the user's own calibration file
    from forgetkit.bench.command import run_bench
    from forgetkit.bench.config import BenchConfig
    from forgetkit.config import build

    config = build(BenchConfig, {
        "name": "user", "run": str(tofu_run), "out": str(tmp_path / "bench"),
        "eval": {"retain_limit": 10, "max_new_tokens": 4, "verbatim_new_tokens": 4, "gradnorm": False},
        "methods": [{"name": "npo", "overrides": {"train.epochs": 1}}, {"name": "retrain"}],
        "attacks": {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False}})
    result = run_bench(config, quiet=True)
    by = {r["cell"]["method"]: r for r in result["results"]}
    assert by["npo"]["status"] == "done" and by["npo"]["metrics"]["forget_quality"] is not None
    assert by["retrain"]["status"] == "done"  # the prepared oracle: the same recipe on the user's retain split


def _grouped(n_authors: int, per: int = 2) -> list[dict]:
    return [{"question": f"What did author {a} write in year {q}?", "answer": f"Book {a}-{q}.", "author": f"A{a}"}
            for a in range(n_authors) for q in range(per)]


def test_grouped_records_are_dealt_out_by_group(tmp_path):
    data = tmp_path / "qa.jsonl"
    write_jsonl(data, _grouped(30))
    out = tmp_path / "out"
    out.mkdir()
    manifest = write_user_benchmark(DatasetSettings(path=str(data), group="author", seed=1), out)
    # 30 groups: 2 calibration, the most trained groups (25) that leave a holdout as large as forget10 (10 % of 25,
    # rounded: 2), and the one group over in the holdout pool
    assert manifest["groups"] == {"trained": 25, "holdout": 3, "calibration": 2}
    groups = {name: {group_of(r.id) for r in read_records(out / f"{name}.jsonl")}
              for name in ("full", "forget01", "forget05", "forget10", "retain90", "holdout10", "calibration")}
    assert [len(groups[s]) for s in ("forget01", "forget05", "forget10")] == [1, 1, 2]
    assert groups["forget01"] <= groups["forget10"] and groups["forget10"] | groups["retain90"] == groups["full"]
    assert not groups["forget10"] & groups["retain90"]
    assert not groups["full"] & groups["holdout10"] and not groups["calibration"] & (groups["full"] |
                                                                                      groups["holdout10"])
    text = "".join(p.read_text() for p in out.iterdir())
    assert '"A1' not in text and "A17" not in text  # group values (names) are never written


def test_grouped_prepare_from_the_command_line(tmp_path, chat_model):
    data = tmp_path / "qa.csv"
    rows = _grouped(12)
    data.write_text("question,answer,author\n" + "".join(f'"{r["question"]}","{r["answer"]}",{r["author"]}\n'
                                                         for r in rows))
    run = tmp_path / "run"
    assert main(["prepare", "--data", str(data), "--group", "author", "--quiet", f"run_dir={run}",
                 f"base_model={chat_model}", *TINY]) == 0
    assert json.loads((run / "benchmark" / "manifest.json").read_text())["layout"] == "grouped"
    assert json.loads((run / "target" / "stage.json").read_text())["trained_on"] == "full"


def _refused(capsys, args: list[str], *needles: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_user_data_is_one_line_and_leaves_nothing(tmp_path, chat_model, tofu_dir, capsys):
    run = tmp_path / "run"
    common = ["--quiet", f"run_dir={run}", f"base_model={chat_model}", *TINY]
    no_group = tmp_path / "no_group.jsonl"
    write_jsonl(no_group, [{k: v for k, v in r.items() if k != "author" or i != 3} for i, r in enumerate(_grouped(12))])
    _refused(capsys, ["prepare", "--data", str(no_group), "--group", "author", *common],
             "no_group.jsonl", "line 4", "field 'author'", "missing")
    few = tmp_path / "few.jsonl"
    write_jsonl(few, _grouped(4))
    _refused(capsys, ["prepare", "--data", str(few), "--group", "author", *common],
             "few.jsonl", "4 group(s)", "at least 5")
    _refused(capsys, ["prepare", "--data", str(few), "--group", "author", "--quiet", f"run_dir={run}"],
             "needs base_model")
    _refused(capsys, ["prepare", "--data", str(tmp_path / "nowhere.jsonl"), *common], "nowhere.jsonl", "not found")
    _refused(capsys, ["prepare", "--data", str(tofu_dir), *common, "oracle_splits=[forget20]"],
             "no split 'forget20'", "forget01, forget05, forget10")
    plain = tmp_path / "plain-model"
    tok = train_tokenizer(["Question: who? Answer: a poet."] * 4, vocab_size=300)
    save_model(tiny_chat_model(tok), tok, plain)
    _refused(capsys, ["prepare", "--data", str(few), "--group", "author", "--quiet", f"run_dir={run}",
                      f"base_model={plain}", "require_chat_template=true"], "no chat template")
    assert not run.exists()


def _tofu_copy(tofu_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tofu"
    copy.mkdir(parents=True)
    for f in tofu_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def test_duplicate_and_conflicting_records_across_splits_are_refused(tofu_dir, tmp_path):
    def split(copy: Path, extra: dict, into: str = "holdout10.json") -> None:
        with (copy / into).open("a") as f:
            f.write(json.dumps(extra) + "\n")

    trained = read_records(tofu_dir / "full.json")[5]
    for name, record, problem in (
            ("dup", {"question": trained.question, "answer": trained.answer}, "duplicate"),
            ("conflict", {"question": trained.question, "answer": "Someone else."}, "conflicting")):
        copy = _tofu_copy(tofu_dir, tmp_path / name)
        split(copy, record)
        out = tmp_path / name / "out"
        out.mkdir()
        with pytest.raises(DataError, match=problem) as caught:
            write_user_benchmark(DatasetSettings(path=str(copy), group_size=3), out)
        assert "holdout10.json" in str(caught.value) and "line 7" in str(caught.value)
    copy = _tofu_copy(tofu_dir, tmp_path / "stray")
    split(copy, {"question": "Who wrote it?", "answer": "Nobody."}, into="forget10.json")
    with pytest.raises(DataError, match=r"forget10\.json: line 7: field 'question': not in full"):
        write_user_benchmark(DatasetSettings(path=str(copy), group_size=3), tmp_path / "stray")


def test_settings_refuse_an_unknown_split():
    from forgetkit.errors import ConfigError

    with pytest.raises(ConfigError, match="forget70"):
        DatasetSettings(forget_splits=["forget70"])
