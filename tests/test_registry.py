"""The one registry of unlearners and the request layer's typed records: every name the CLI, the bench and the
ledger know comes from the registry, with its kind and guarantee; ``finish`` writes one audit schema."""

from __future__ import annotations

import dataclasses
import json

import pytest

from forgetkit.audit.ledger import entries
from forgetkit.cli import main
from forgetkit.errors import ConfigError
from forgetkit.registry import CERTIFIED, EMPIRICAL, EXACT, GUARANTEES, KINDS, SHARDED, register_unlearner, unlearner
from forgetkit.request import AuditRecord, Fingerprint, RecordSet, UnlearnConfig, UnlearnRequest, UnlearnResult, finish
from forgetkit.summaries import GradientSummary
from forgetkit.unlearn import RUNNERS, UNLEARNERS


def test_every_unlearner_is_complete_and_has_a_runner():
    assert {"graddiff", "npo", "retrain", "llmeraser", "fast_ntk", "sharded_exact", "noisy_finetune"} <= set(UNLEARNERS)
    for name, entry in UNLEARNERS.items():
        assert entry.name == name and entry.kind in KINDS and entry.guarantee in GUARANTEES and entry.summary
        assert dataclasses.is_dataclass(entry.build({}))  # its parameters build from their defaults
        assert entry.kind in RUNNERS


def test_guarantees_come_from_the_registry():
    assert unlearner("retrain").guarantee == EXACT and unlearner("sharded_exact").guarantee == EXACT
    assert unlearner("sharded_exact").kind == SHARDED
    assert unlearner("noisy_finetune").guarantee == CERTIFIED
    assert {unlearner(n).guarantee for n in ("npo", "graddiff", "llmeraser")} == {EMPIRICAL}


def test_unknown_names_and_bad_entries_are_refused():
    with pytest.raises(ConfigError, match="unknown method 'nope'.*graddiff"):
        unlearner("nope")
    with pytest.raises(ConfigError, match="unknown editor 'npo'"):
        unlearner("npo", kind="editor")
    with pytest.raises(ValueError, match="unique name"):
        register_unlearner("npo", UnlearnConfig, "gradient")
    with pytest.raises(ValueError, match="unknown"):
        register_unlearner("brand_new", UnlearnConfig, "telepathy")
    assert "brand_new" not in UNLEARNERS


def test_methods_command_lists_the_registry(capsys):
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(UNLEARNERS)
    assert any(line.startswith("sharded_exact") and "[sharded; exact]" in line for line in lines)


def _audit(tmp_path, guarantee: str, **details) -> AuditRecord:
    return AuditRecord(method="noisy_finetune", config={}, config_hash="c0ffee", model=Fingerprint("m", "a"),
                       forget=RecordSet(None, "f", 2), output=Fingerprint(str(tmp_path), "o"),
                       started="2026-12-01T00:00:00+00:00", guarantee=guarantee, details=details)


def test_finish_writes_one_schema_and_withholds_an_unearned_certificate(tmp_path):
    """A certified unlearner whose run issued no certificate (σ = 0) is recorded as empirical; one that did is
    certified with its ε and δ. audit.json, the ledger row and summary.json are all written."""
    request = UnlearnRequest(out=str(tmp_path / "a"), config=UnlearnConfig(), ledger=str(tmp_path / "l.sqlite"))
    (tmp_path / "a").mkdir()
    summary = GradientSummary(method="noisy_finetune", mode="lora", wall_time_s=1.0, steps=3)
    result = finish(request, _audit(tmp_path, CERTIFIED), summary)
    assert result.audit["guarantee"] == EMPIRICAL and result.audit["ended"]
    request.out = str(tmp_path / "b")
    (tmp_path / "b").mkdir()
    finish(request, _audit(tmp_path, CERTIFIED, certificate={"epsilon": 2.0, "delta": 1e-5}), summary)
    rows = entries(tmp_path / "l.sqlite")
    assert [r["guarantee"] for r in rows] == [EMPIRICAL, CERTIFIED] and rows[1]["epsilon"] == 2.0
    read = UnlearnResult.read(tmp_path / "b")
    assert read.audit["certificate"]["epsilon"] == 2.0 and read.summary.ledger["id"] == rows[1]["id"]
    assert read.summary == summary  # the typed summary, read back from summary.json as it was written
    assert json.loads((tmp_path / "b" / "audit.json").read_text()) == read.audit
    with pytest.raises(Exception, match="field 'load' is missing"):
        read.load_model()


def test_one_recipe_path_for_the_cli_and_the_bench():
    """recipe_config: the method's shipped recipe, then overrides; a block the recipe leaves out keeps
    UnlearnConfig's defaults (llmeraser's recipe has no train block: a seed override keeps its 5 epochs)."""
    from forgetkit.bench.grid import unlearn_config
    from forgetkit.request import recipe_config

    bench = unlearn_config("llmeraser", None, {"params.damping_ratio": 1.0}, seed=2)
    cli = recipe_config("llmeraser", None, ["params.damping_ratio=1.0", "train.seed=2"])
    assert bench == cli and bench.train.epochs == UnlearnConfig().train.epochs and bench.train.seed == 2
    assert bench.params["damping_ratio"] == 1.0 and bench.params["solver"] == "cg"  # the recipe's, kept
    with pytest.raises(ConfigError, match="llmeraser.yaml: .*unknown key"):
        recipe_config("llmeraser", None, ["trian.seed=2"])
    with pytest.raises(ConfigError, match="methods.npo"):
        unlearn_config("npo", None, {"train.lr": "fast"}, seed=0)


def test_each_kind_of_summary_reads_back_as_written():
    """summary.json names its kind; an editor's solve record sits at the file's top level and reads back whole;
    a file written before summaries named their kind is read as its method's registered kind."""
    from forgetkit.summaries import EditorSummary, InputSummary, ShardedSummary, read_summary

    cost = {"wall_time_s": 2.5, "peak_memory_mb": 10.0, "forget_examples": 3}
    written = [GradientSummary(method="npo", mode="lora", steps=4, first_loss=1.0, final_loss=0.5, **cost),
               EditorSummary(method="llmeraser", mode="lora", request="response", request_examples=3,
                             solve={"relative_residual": 0.01, "products": 7}, **cost),
               ShardedSummary(method="sharded_exact", mode="lora", retrained=[1], untouched=[0, 2], deleted=3, shards=3,
                              share_retrained=1 / 3, **cost),
               InputSummary(method="icul", mode="input", context_tokens={"mean": 12.0, "max": 20}, **cost)]
    for summary in written:
        data = json.loads(json.dumps(summary.to_dict()))
        assert read_summary(data) == summary
        data.pop("kind")
        assert read_summary(data) == summary
    editor = written[1].to_dict()
    assert editor["relative_residual"] == 0.01 and "solve" not in editor
    assert written[2].cost()["steps"] is None and written[0].reached
