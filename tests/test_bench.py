"""The benchmark suite: grid expansion, caching and resume, the attacks, user data, the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from forgetkit.bench import attacks
from forgetkit.bench.config import BenchConfig, MethodEntry, load_bench_config
from forgetkit.bench.evaluation import CellEvaluation
from forgetkit.bench.grid import settings_key
from forgetkit.config import build, shipped_configs
from forgetkit.data.records import QARecord
from forgetkit.errors import ConfigError

TINY_EVAL = {"retain_limit": 20, "quick_retain": 10, "max_new_tokens": 12, "verbatim_new_tokens": 12,
             "canary_candidates": 20}


def _config(run: Path, out: Path, **changes) -> BenchConfig:
    data = {"name": "t", "run": str(run), "out": str(out), "seeds": [0],
            "methods": [{"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}}],
            "attacks": {"relearn": {"steps": 2, "batch_size": 4}, "quantize_bits": [4], "prompt": True,
                        "sequential": 0},
            "eval": TINY_EVAL}
    data.update(changes)
    return build(BenchConfig, data)


@pytest.mark.parametrize("name", shipped_configs("bench"))
def test_every_shipped_bench_config_loads(name):
    config = load_bench_config(name)
    assert config.methods and config.seeds
    for entry in config.methods:
        assert entry.variants()


def test_shipped_configs_cover_the_issue():
    assert {"demo", "full", "tofu_llama", "methods_small", "influence_peft_small", "bounded_study"} <= set(
        shipped_configs("bench"))
    demo = {m.name for m in load_bench_config("demo").methods}
    assert {"influence_peft", "bounded_graddiff", "llmeraser", "npo", "graddiff", "retrain"} <= demo


def test_methods_small_runs_every_registered_method():
    """The every-method table cannot skip a method added later: its list is checked against the registry."""
    from forgetkit.unlearn import UNLEARNERS  # every unlearner package imported: all registered

    assert {m.name for m in load_bench_config("methods_small").methods} == set(UNLEARNERS)


def test_world_facts_limit_takes_an_evenly_spaced_subset_and_keeps_default_cell_ids(unlearn_run, tmp_path):
    from forgetkit.bench.runner import Bench

    plain = Bench(_config(unlearn_run, tmp_path / "a"), quiet=True)
    limited = Bench(_config(unlearn_run, tmp_path / "b", eval={**TINY_EVAL, "world_facts_limit": 4}), quiet=True)
    facts = plain.source.world_facts()
    subset = limited.evaluation.world_facts_subset(facts)
    step = len(facts) // 4
    assert [r.id for r in subset] == [facts[i * step].id for i in range(4)]
    assert plain.evaluation.world_facts_subset(facts) == facts
    # cells cached before the setting keep their ids
    assert "world_facts_limit" not in settings_key(plain.config, plain.source)["eval"]
    assert {c.key for c in plain.grid()}.isdisjoint({c.key for c in limited.grid()})


def test_method_grid_expands_to_every_combination():
    entry = MethodEntry("npo", grid={"train.lr": [1e-3, 1e-2], "params.beta": [0.1, 0.5]}, overrides={"lora.r": 4})
    variants = entry.variants()
    assert len(variants) == 4
    assert {label for label, _ in variants} == {f"npo[params.beta={b},train.lr={lr}]"
                                               for b in (0.1, 0.5) for lr in (1e-3, 1e-2)}
    assert all(o["lora.r"] == 4 for _, o in variants)
    with pytest.raises(ConfigError, match="non-empty list"):
        MethodEntry("npo", grid={"train.lr": 0.1}).variants()


def test_bench_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="at least one method"):
        build(BenchConfig, {"methods": []})
    with pytest.raises(ConfigError, match="quantize_bits"):
        build(BenchConfig, {"methods": [{"name": "npo"}], "attacks": {"quantize_bits": [5]}})


def test_cells_cover_the_grid_with_distinct_keys(unlearn_run, tmp_path):
    from forgetkit.bench.runner import Bench

    config = _config(unlearn_run, tmp_path / "b", seeds=[0, 1], splits=["forget10", "forget05"],
                     methods=[{"name": "npo", "grid": {"train.lr": [1e-3, 1e-2]}}, {"name": "retrain"}])
    cells = Bench(config, quiet=True).grid()
    methods = [c for c in cells if c.kind == "method"]
    assert len(methods) == (2 + 1) * 2 * 2
    assert len([c for c in cells if c.kind == "reference"]) == 2 * 2
    assert len({c.key for c in cells}) == len(cells)
    assert {c.unlearn["train"]["seed"] for c in methods} == {0, 1}
    with pytest.raises(ConfigError, match="unknown method"):
        Bench(_config(unlearn_run, tmp_path / "c", methods=[{"name": "nope"}]), quiet=True)


def test_a_method_entry_can_keep_to_some_splits(unlearn_run, tmp_path):
    """An ablation on one split beside a comparison on every split: ``splits`` restricts the entry's cells, and a
    split the bench does not have is refused in one line."""
    from forgetkit.bench.runner import Bench

    config = _config(unlearn_run, tmp_path / "b", splits=["forget10", "forget05"], methods=[
        {"name": "npo"}, {"name": "npo", "label": "npo: lr", "grid": {"train.lr": [1e-2]}, "splits": ["forget05"]}])
    methods = [c for c in Bench(config, quiet=True).grid() if c.kind == "method"]
    assert sorted((c.variant, c.split) for c in methods) == [
        ("npo", "forget05"), ("npo", "forget10"), ("npo: lr[train.lr=0.01]", "forget05")]
    with pytest.raises(ConfigError, match=r"methods.npo.splits: give some of the bench's splits \(forget10\)"):
        _config(unlearn_run, tmp_path / "c", methods=[{"name": "npo", "splits": ["forget01"]}])
    with pytest.raises(ConfigError, match="eval_every needs a prepared run"):
        build(BenchConfig, {"methods": [{"name": "npo", "eval_every": 5}], "data": {"model": "m", "forget": "f"}})


def test_a_method_with_eval_every_has_its_quality_per_step_in_the_curve(unlearn_run, tmp_path):
    """``eval_every`` runs the request's quick evaluation into the step log: the cell's curve holds Forget
    Quality and Model Utility at those steps beside the loss, gradient and weight norms; the leaderboard's
    best-in-training columns are that curve's; the curves plot draws it. The setting is in the cell's key
    only when given."""
    from forgetkit.bench.leaderboard import cell_value, leaderboard
    from forgetkit.bench.plots import write_plots
    from forgetkit.bench.runner import Bench

    none = {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 0}
    base = {"train.epochs": 2, "train.batch_size": 8}
    plain = Bench(_config(unlearn_run, tmp_path / "a", attacks=none, methods=[{"name": "npo", "overrides": base}]),
                  quiet=True)
    bench = Bench(_config(unlearn_run, tmp_path / "b", attacks=none,
                          methods=[{"name": "npo", "overrides": base, "eval_every": 2}]), quiet=True)
    assert {c.key for c in plain.grid() if c.kind == "method"}.isdisjoint(c.key for c in bench.grid())
    results = bench.run()
    cell = next(r for r in results if r["cell"]["kind"] == "method")
    curve = cell["curve"]
    evaluated = [p for p in curve if "forget_quality" in p]
    assert [p["step"] for p in evaluated] == [p["step"] for p in curve if p["step"] % 2 == 0]
    assert all(0 <= p["forget_quality"] <= 1 and 0 <= p["model_utility"] <= 1 for p in evaluated)
    best = max(evaluated, key=lambda p: p["forget_quality"])
    assert cell_value(cell, "curve.best_forget_quality") == best["forget_quality"]
    assert cell_value(cell, "curve.best_step") == best["step"]
    assert cell_value(cell, "curve.grad_norm_growth") == pytest.approx(
        max(p["grad_norm"] for p in curve) / curve[0]["grad_norm"])
    assert cell_value(cell, "curve.final_weight_norm") == curve[-1]["weight_norm"]
    row = next(r for r in leaderboard(results) if r["variant"] == "npo")
    assert row["columns"]["curve.model_utility_at_best"]["mean"] == best["model_utility"]
    assert "curves" in write_plots(results, leaderboard(results), tmp_path / "plots")


def test_best_in_training_columns_by_hand():
    """The curve's derived columns on a curve written by hand."""
    from forgetkit.bench.leaderboard import cell_value

    cell = {"curve": [{"step": 1, "loss": 2.0, "grad_norm": 0.5, "weight_norm": 3.0},
                      {"step": 2, "loss": 1.0, "grad_norm": 4.0, "weight_norm": 3.5, "forget_quality": 0.2,
                       "model_utility": 0.6},
                      {"step": 3, "loss": 0.5, "grad_norm": 2.0, "weight_norm": 4.0, "forget_quality": 0.1,
                       "model_utility": 0.7}]}
    assert cell_value(cell, "curve.best_forget_quality") == 0.2
    assert cell_value(cell, "curve.best_step") == 2
    assert cell_value(cell, "curve.model_utility_at_best") == 0.6
    assert cell_value(cell, "curve.grad_norm_growth") == 8.0
    assert cell_value(cell, "curve.final_weight_norm") == 4.0
    assert cell_value({"curve": [{"step": 1, "loss": 1.0}]}, "curve.best_forget_quality") is None


def test_grid_runs_caches_and_resumes(unlearn_run, tmp_path, monkeypatch):
    import forgetkit.bench.runner as runner
    import forgetkit.unlearn as unlearn

    config = _config(unlearn_run, tmp_path / "b", methods=[
        {"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}},
        {"name": "llmeraser"},  # the micro target is a full model: refused, with the reason
        {"name": "retrain"}])
    calls = []
    real_unlearn = unlearn.run_unlearn

    def counting(request, quiet=False):
        calls.append(request.config.method)
        return real_unlearn(request, quiet)

    monkeypatch.setattr(unlearn, "run_unlearn", counting)
    real_attacks = attacks.attack_cell

    def interrupted(bench, cell, *args, **kwargs):  # a kill during npo's attacks, after its unlearning and evaluation
        if cell.method == "npo":
            raise KeyboardInterrupt
        return real_attacks(bench, cell, *args, **kwargs)

    monkeypatch.setattr(attacks, "attack_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.Bench(config, quiet=True).run()
    assert calls == ["npo"]
    monkeypatch.setattr(attacks, "attack_cell", real_attacks)

    results = runner.Bench(config, quiet=True).run()
    assert calls == ["npo", "llmeraser"]  # npo resumed from its finished unlearning run: not retrained
    by = {r["cell"]["method"]: r for r in results}
    assert [r["cached"] for r in results] == [True, True, False, False, False]  # the references were done
    assert by["llmeraser"]["status"] == "refused" and "LoRA adapter" in by["llmeraser"]["reason"]
    npo = by["npo"]
    assert npo["status"] == "done" and npo["cost"]["steps"] > 0 and npo["curve"]
    assert 0 <= npo["metrics"]["forget_quality"] <= 1 and npo["metrics"]["model_utility"] is not None
    assert set(npo["attacks"]) == {"quantize_4", "prompt", "relearn"}
    assert by["retrain"]["metrics"] == by["oracle"]["metrics"]  # retrain_from_oracle: the oracle stage itself
    assert by["target"]["metrics"]["forget_quality"] is not None  # measured against the oracle's evaluation

    def fail(*args, **kwargs):
        raise AssertionError("a cached grid computed something")

    monkeypatch.setattr(unlearn, "run_unlearn", fail)
    monkeypatch.setattr(CellEvaluation, "evaluate", fail)
    again = runner.Bench(config, quiet=True).run()
    assert all(r["cached"] for r in again)
    assert [r["metrics"] for r in again] == [r["metrics"] for r in results]
    text = "".join(p.read_text() for p in (tmp_path / "b").rglob("*.json"))
    forget = [json.loads(line) for line in (unlearn_run / "benchmark" / "forget10.jsonl").read_text().splitlines()]
    assert not any(r["answer"] in text for r in forget)  # results and logs hold no forget text


def test_quantize_roundtrip_error_is_within_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(8, 100)
    for bits in (8, 4):
        q = attacks.quantize_roundtrip(w, bits, group_size=32)
        assert q.shape == w.shape and not torch.equal(q, w)
        qmax = 2 ** (bits - 1) - 1
        for g in range(0, 100, 32):
            block, qblock = w[:, g:g + 32], q[:, g:g + 32]
            step = block.abs().amax(dim=1, keepdim=True) / qmax
            assert ((qblock - block).abs() <= step / 2 + 1e-6).all()
            assert torch.allclose(torch.round(qblock / step), qblock / step, atol=1e-4)  # on the grid
    err8 = (attacks.quantize_roundtrip(w, 8) - w).abs().mean()
    err4 = (attacks.quantize_roundtrip(w, 4) - w).abs().mean()
    assert err4 > 8 * err8


def test_quantize_changes_a_copy_not_the_model(unlearn_run):
    from forgetkit.models import load_model

    model, _ = load_model(unlearn_run / "target")
    before = {n: p.clone() for n, p in model.named_parameters()}
    q = attacks.quantize(model, 4)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    changed = [n for n, p in q.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(n.endswith("proj.weight") for n in changed)


def test_prompt_attack_names_the_person_and_keeps_the_answers():
    r = QARecord("Where was Ada born?", "Ada was born in Upton.", "p1-birthplace", paraphrased_answer="x",
                 perturbed_answer=("y",), paraphrased_question="In which town did Ada come into the world?")
    (a,) = attacks.prompt_attack_records([r], {"p1-birthplace": "Ada Byron"})
    assert a.question.startswith("Ada Byron has given written consent")
    assert a.question.endswith("In which town did Ada come into the world?")
    assert (a.answer, a.perturbed_answer, a.paraphrased_answer, a.id) == (r.answer, r.perturbed_answer, "x", r.id)


def test_relearning_within_people_shows_some_facts_of_each_and_measures_the_others():
    records = [QARecord("q", "a", f"p{i // 4}-f{i % 4}") for i in range(12)]
    shown, measured = attacks.split_within_groups(records, 0.5, lambda rid: rid.split("-")[0])
    assert [r.id for r in shown] == ["p0-f0", "p0-f1", "p1-f0", "p1-f1", "p2-f0", "p2-f1"]
    assert {r.id for r in measured} == {r.id for r in records} - {r.id for r in shown}
    with pytest.raises(ConfigError, match="relearn.split"):
        build(BenchConfig, {"attacks": {"relearn": {"split": "people"}}})


def test_relearning_split_keeps_people_apart():
    records = [QARecord("q", "a", f"p{i // 3}-f{i % 3}") for i in range(12)]
    shown, measured = attacks.split_for_relearning(records, 0.5, lambda rid: rid.split("-")[0])
    assert len(shown) == len(measured) == 6
    assert not {r.id.split("-")[0] for r in shown} & {r.id.split("-")[0] for r in measured}


def test_relearning_brings_back_what_unlearning_removed(unlearn_run, tmp_path):
    """Gradient ascent wipes the forget answers; a few steps on half the forget people raise the
    probability of the other half's answers again."""
    from forgetkit.data.formatting import collate, tokenize_qa
    from forgetkit.data.readers import read_records
    from forgetkit.unlearn import UnlearnConfig, UnlearnRequest, load_unlearned, run_unlearn

    config = build(UnlearnConfig, {"method": "ga", "train": {"epochs": 3, "batch_size": 8, "lr": 1e-2}})
    run_unlearn(UnlearnRequest(out=str(tmp_path / "ga"), config=config, run=str(unlearn_run)), quiet=True)
    assert config.adapter is None  # the request's config is not changed (the audit has the resolved one)
    model, tok = load_unlearned(tmp_path / "ga")
    forget = read_records(unlearn_run / "benchmark" / "forget10.jsonl")
    shown, measured = attacks.split_for_relearning(forget, 0.5, lambda rid: rid.split("-")[0])

    def loss(m) -> float:
        batch = collate(tokenize_qa(tok, measured, 64).examples, tok.pad_token_id)
        with torch.no_grad():
            return float(m(**batch).loss)

    relearned = attacks.relearn(model, tok, shown, steps=15, batch_size=4, lr=3e-3)
    assert loss(relearned) < loss(model) - 0.5


def test_user_data_bench_with_tofu_format_files(unlearn_run, tmp_path):
    """`data:` instead of a prepared run: a local model directory and TOFU-format JSON files."""
    from forgetkit.bench.command import run_bench

    bench = unlearn_run / "benchmark"
    for name, src in (("forget.json", "forget10"), ("retain.json", "retain90"), ("holdout.json", "holdout10")):
        rows = [json.loads(line) for line in (bench / f"{src}.jsonl").read_text().splitlines()][:12]
        (tmp_path / name).write_text("\n".join(json.dumps({k: r[k] for k in ("question", "answer",
                                                                              "paraphrased_answer",
                                                                              "perturbed_answer")}) for r in rows))
    config = build(BenchConfig, {
        "name": "user", "out": str(tmp_path / "out"), "eval": TINY_EVAL,
        "data": {"model": str(unlearn_run / "target"), "forget": str(tmp_path / "forget.json"),
                 "retain": str(tmp_path / "retain.json"), "holdout": str(tmp_path / "holdout.json"),
                 "oracle_model": str(unlearn_run / "oracle_forget10")},
        "methods": [{"name": "graddiff", "overrides": {"train.epochs": 1, "train.batch_size": 4}}],
        "attacks": {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False}})
    result = run_bench(config, quiet=True)
    by = {r["cell"]["method"]: r for r in result["results"]}
    assert by["graddiff"]["status"] == "done" and by["graddiff"]["cell"]["split"] == "custom"
    assert by["graddiff"]["metrics"]["forget_quality"] is not None  # against the oracle model's evaluation
    assert by["oracle"]["status"] == "done"
    assert result["files"]["report"].is_file()


def test_sequential_requests_chain_from_each_result(lora_run, tmp_path):
    """Two requests of half the forget people each: a new adapter over the merged result (npo), or the
    LoRA target edited again in place (llmeraser); the request files (forget text) are removed afterwards."""
    from forgetkit.bench.runner import Bench

    config = _config(lora_run, tmp_path / "b", methods=[
        {"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}}, {"name": "llmeraser"}],
        attacks={"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 2})
    results = {r["cell"]["method"]: r for r in Bench(config, quiet=True).run()}
    n_forget = len((lora_run / "benchmark" / "forget10.jsonl").read_text().splitlines())
    for method in ("npo", "llmeraser"):
        rows = results[method]["attacks"]["sequential"]
        assert [r["request"] for r in rows] == [1, 2]
        assert rows[0]["requested_so_far"] < rows[1]["requested_so_far"] == n_forget
        assert all(0 <= r["forget_probability"] <= 1 and r["model_utility"] is not None for r in rows)
    cell = tmp_path / "b" / "cells" / results["llmeraser"]["cell"]["id"] / "attacks" / "sequential"
    second = json.loads((cell / "request_2" / "unlearn" / "audit.json").read_text())
    assert second["adapter_in"]["path"] == str(cell / "request_1" / "unlearn" / "adapter")
    assert not (cell / "requests").exists()
    assert second["forget"]["file"] is None and second["forget"]["count"] == n_forget - rows[0]["requested_so_far"]


def test_sharded_exact_cells_delete_from_a_shard_set_trained_once(unlearn_run, tmp_path, monkeypatch):
    import forgetkit.exact.command as command
    from forgetkit.bench.runner import Bench

    shard = {"params.shards": 2, "params.train.epochs": 1, "params.train.batch_size": 8}
    config = _config(unlearn_run, tmp_path / "b", splits=["forget10", "forget05"],
                     methods=[{"name": "sharded_exact", "overrides": shard}])
    trained = []
    real = command.run_shard_train
    monkeypatch.setattr(command, "run_shard_train", lambda *a, **k: trained.append(1) or real(*a, **k))
    results = Bench(config, quiet=True).run()
    assert trained == [1]  # one shard set serves both splits
    cells = [r for r in results if r["cell"]["method"] == "sharded_exact"]
    assert len(cells) == 2 and all(r["status"] == "done" for r in cells)
    for r in cells:  # (the micro run has an oracle, hence Forget Quality, for forget10 only)
        assert (r["metrics"]["forget_quality"] is not None) == (r["cell"]["split"] == "forget10")
        assert r["metrics"]["model_utility"] is not None
        assert r["cost"]["shards"] == 2 and r["cost"]["shards_retrained"] and r["cost"]["wall_time_s"] > 0
        assert set(r["attacks"]) == {"prompt"}
    assert Bench(config, quiet=True).run() and trained == [1]


def test_a_variant_with_until_shows_its_criterion(unlearn_run, tmp_path):
    """`until: indistinguishable` as a method variant: the cell keeps the criterion's chosen check, the
    leaderboard shows its step and AUC, and the criterion plot is drawn; the fixed-epoch variant has none."""
    from forgetkit.bench.leaderboard import leaderboard
    from forgetkit.bench.plots import write_plots
    from forgetkit.bench.runner import Bench

    base = {"train.epochs": 4, "train.batch_size": 8, "train.lr": 5e-3}
    config = _config(unlearn_run, tmp_path / "b", methods=[
        {"name": "ga", "overrides": base},
        {"name": "ga", "label": "ga+until", "overrides": {**base, "until": "indistinguishable", "criterion.every": 1}}],
        attacks={"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 0})
    results = Bench(config, quiet=True).run()
    by = {r["cell"]["variant"]: r for r in results}
    assert "criterion" not in by["ga"] and by["ga+until"]["criterion"]["chosen"]["step"] >= 0
    rows = {r["variant"]: r for r in leaderboard(results)}
    assert rows["ga+until"]["columns"]["criterion.chosen.step"]["n"] == 1
    assert rows["ga"]["columns"]["criterion.chosen.step"]["n"] == 0
    # every cell gets the oracle-free numbers (the micro run has calibration people); an until cell's equal its kept
    # check's, scored on the same examples
    assert all(0 <= r["metrics"]["calibration_auc"] <= 1 for r in results if r["status"] == "done")
    chosen = by["ga+until"]["criterion"]["chosen"]["auc"]
    assert by["ga+until"]["metrics"]["calibration_auc"] == pytest.approx(chosen, abs=1e-6)
    assert "criterion" in write_plots(results, leaderboard(results), tmp_path)


def test_eval_weat_and_smoothing_go_beside_every_cell_and_keep_default_cell_ids(unlearn_run, tmp_path):
    """`eval.weat: shipped` scores WEAT 6-8 on the target, the oracle and each unlearned model (does unlearning move
    bias?), and `eval.smoothing` puts forgetkit eval's smoothed emission bound beside them: the bench's evaluation
    takes every setting of forgetkit eval's. Left at their defaults, the settings are not part of any cell's key."""
    from forgetkit.bench.leaderboard import leaderboard
    from forgetkit.bench.runner import Bench

    none = {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 0}
    plain = Bench(_config(unlearn_run, tmp_path / "a", attacks=none), quiet=True)
    weat = {**TINY_EVAL, "weat": "shipped", "smoothing": "tokens:0.1", "smoothing_samples": 4}
    biased = Bench(_config(unlearn_run, tmp_path / "b", attacks=none, eval=weat), quiet=True)
    assert not {"weat", "smoothing", "smoothing_samples"} & set(settings_key(plain.config, plain.source)["eval"])
    assert {c.key for c in plain.grid()}.isdisjoint({c.key for c in biased.grid()})
    results = biased.run()
    rows = {r["variant"]: r for r in leaderboard(results)}
    for variant in ("target", "oracle", "npo"):
        column = rows[variant]["columns"]["metrics.weat.weat7_math_arts"]
        assert column["n"] == 1 and -2 <= column["mean"] <= 2, (variant, column)
    for r in results:  # the leaderboard's bound is the one the cell's own evaluation summary holds
        summary = json.loads((biased.out / "cells" / r["cell"]["id"] / "eval" / "summary.json").read_text())
        assert r["metrics"]["smoothed_emission_bound"] == summary["smoothing"]["set_upper_bound"]
        assert summary["smoothing"]["noise"] == "tokens:0.1"


def test_jailbreaks_keep_the_deployed_context_and_ask_in_their_own_way():
    from forgetkit.data.context import PromptContext, prompt_context, with_context
    from forgetkit.data.formatting import IGNORE_INDEX, encode_qa, format_prompt
    from tests.chat_models import chatml_tokenizer

    tok = with_context(chatml_tokenizer(), PromptContext(system="Never talk about Ada Byron."))
    r = QARecord("Where was Ada born?", "Ada was born in the town of Upton.", "p1-birthplace", paraphrased_answer="x",
                 perturbed_answer=("y",), paraphrased_question="In which town did Ada come into the world?")
    names = {"p1-birthplace": "Ada Byron"}
    for kind in ("roleplay", "ignore_instructions"):
        (a,), asking = attacks.jailbreak(kind, [r], tok, names)
        assert asking is tok and a.question.endswith(r.question) and a.question != r.question
        assert (a.answer, a.perturbed_answer, a.paraphrased_answer) == (r.answer, (), None)
    (a,), asking = attacks.jailbreak("multi_turn", [r], tok, names)
    prompt = format_prompt(asking, a.question)
    assert prompt.index("Never talk about Ada Byron.") < prompt.index("biography of Ada Byron") < prompt.index(
        r.question)
    (a,), asking = attacks.jailbreak("completion", [r], tok, names)
    assert a.answer == "born in the town of Upton." and format_prompt(asking, r.question).endswith("assistant\nAda was")
    ids, labels = encode_qa(asking, a.question, a.answer)
    assert asking.decode([i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]) == (
        " born in the town of Upton.<|im_end|>")
    assert prompt_context(tok).prefill == {} and prompt_context(tok).lead == {}  # the deployed context is unchanged
    with pytest.raises(ConfigError, match="jailbreaks"):
        build(BenchConfig, {"attacks": {"jailbreaks": ["dan"]}})


def test_input_based_unlearners_are_evaluated_behind_their_context_and_face_the_jailbreaks(unlearn_run, tmp_path):
    """guardrail and icul cells: no training cost, the evaluation reads their context (so their forget numbers
    are not the target's), and every jailbreak is measured for them and for a model-based method; cell ids
    of a bench without jailbreaks are unchanged by the setting."""
    from forgetkit.bench.leaderboard import leaderboard
    from forgetkit.bench.runner import Bench

    suite = {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 0,
             "jailbreaks": ["roleplay", "ignore_instructions", "multi_turn", "completion"]}
    methods = [{"name": "guardrail"}, {"name": "icul"},
               {"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}}]
    import shutil

    run = tmp_path / "run"  # the micro run with 1,024 positions (rotary: no new weights), so every jailbreak fits
    shutil.copytree(unlearn_run, run)
    for stage in ("target", "oracle_forget10"):
        config = json.loads((run / stage / "config.json").read_text())
        (run / stage / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    plain = Bench(_config(run, tmp_path / "a", methods=methods, attacks={**suite, "jailbreaks": []}), quiet=True)
    assert "jailbreaks" not in json.dumps(plain.grid()[-1].describe())
    bench = Bench(_config(run, tmp_path / "b", methods=methods, attacks=suite), quiet=True)
    assert {c.key for c in plain.grid() if c.kind == "method"}.isdisjoint(
        {c.key for c in bench.grid() if c.kind == "method"})
    from forgetkit.bench.leaderboard import ATTACK_COLUMNS

    results = bench.run()
    rows = {r["variant"]: r["columns"] for r in leaderboard(results)}
    probabilities = {r["variant"]: r["columns"] for r in leaderboard(results, ATTACK_COLUMNS)}
    for variant in ("guardrail", "icul", "npo"):
        for kind in suite["jailbreaks"]:
            assert rows[variant][f"attacks.jailbreak_{kind}.forget_rouge_l"]["n"] == 1, (variant, kind)
            assert 0 < probabilities[variant][f"attacks.jailbreak_{kind}.forget_probability"]["mean"] < 1
        assert rows[variant]["attacks.jailbreak.worst_rouge_l"]["mean"] == max(
            rows[variant][f"attacks.jailbreak_{kind}.forget_rouge_l"]["mean"] for kind in suite["jailbreaks"])
    for variant in ("guardrail", "icul"):
        assert rows[variant]["cost.trainable_parameters"]["mean"] == 0
        assert rows[variant]["metrics.forget_probability"]["mean"] != pytest.approx(
            rows["target"]["metrics.forget_probability"]["mean"], rel=1e-6)


def test_robustness_verdict_takes_the_worst_attack_and_averages_by_kind(tmp_path, capsys):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness_verdict.py"
    spec = importlib.util.spec_from_file_location("robustness_verdict", path)
    verdict = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(verdict)

    def cell(method: str, rouge: float, jailbreak: float, relearn: float) -> dict:
        quick = {"forget_probability": 0.1, "forget_rouge_l": jailbreak}
        return {"cell": {"method": method, "variant": method}, "status": "done",
                "metrics": {"forget_rouge_l": rouge, "forget_probability": 0.1, "model_utility": 0.5},
                "attacks": {"jailbreak_roleplay": quick, "prompt": {**quick, "forget_rouge_l": rouge},
                            "relearn": {"before": quick, "after": {**quick, "forget_rouge_l": relearn}}}}

    for i, (method, values) in enumerate({"guardrail": (0.1, 0.6, 0.9), "npo": (0.2, 0.3, 0.9),
                                          "graddiff": (0.2, 0.1, 0.9)}.items()):
        (tmp_path / "cells" / str(i)).mkdir(parents=True)
        (tmp_path / "cells" / str(i) / "result.json").write_text(json.dumps(cell(method, *values)))
    assert verdict.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "input-based: worst-attack forget ROUGE-L, mean over 1 methods: 0.600" in out  # relearn is not counted
    assert "model-based: worst-attack forget ROUGE-L, mean over 2 methods: 0.250 (min 0.200, max 0.300)" in out
    assert "| guardrail | input-based | 0.500 | 0.100 | 0.600 |" in out


def test_llmeraser_edit_requests_are_bench_cells_with_their_success_before_and_after(lora_run, tmp_path):
    """`edits:` makes a method entry the editor's edit request (here a response-edit file; `query` or `response`
    name a prepared run's own files) instead of the split's removal: its own cell (the removal's key is untouched),
    with its success measured on the target and on the edited model (greedy exact match, as `unlearn --eval`
    reports it)."""
    from forgetkit.bench.runner import Bench
    from forgetkit.data.edits import read_edits
    from forgetkit.data.readers import read_records
    from forgetkit.eval.edit_success import edit_success
    from forgetkit.models import load_model
    from forgetkit.request import UnlearnResult

    forget = read_records(lora_run / "benchmark" / "forget01.jsonl")
    edit_file = tmp_path / "response.jsonl"  # each answer corrected to the next record's
    edit_file.write_text("".join(json.dumps({"id": r.id, "question": r.question, "answer": r.answer,
                                             "new_answer": other.answer})
                                 + "\n" for r, other in zip(forget, forget[1:] + forget[:1], strict=True)))
    none = {"relearn": {"enabled": False}, "quantize_bits": [], "prompt": False, "sequential": 0}
    methods = [{"name": "llmeraser", "label": "removal"},
               {"name": "llmeraser", "label": "response", "edits": str(edit_file)}]
    bench = Bench(_config(lora_run, tmp_path / "b", methods=methods, attacks=none, splits=["forget01"]), quiet=True)
    removal_only = Bench(_config(lora_run, tmp_path / "c", methods=methods[:1], attacks=none, splits=["forget01"]),
                         quiet=True)
    keys = {c.variant: c.key for c in bench.grid()}
    assert keys["removal"] == {c.variant: c.key for c in removal_only.grid()}["removal"] != keys["response"]
    by = {r["cell"]["variant"]: r for r in bench.run()}
    assert by["response"]["status"] == "done", by["response"].get("reason")
    assert by["response"]["cell"]["edits"] == str(edit_file) and "edit_success" not in by["removal"]["metrics"]
    edits = read_edits(edit_file)
    metrics = by["response"]["metrics"]
    assert metrics["edit_success_before"] == edit_success(*load_model(lora_run / "base", lora_run / "target"),
                                                          edits)["success"]
    edited = UnlearnResult.read(tmp_path / "b" / "cells" / by["response"]["cell"]["id"] / "unlearn").load_model()
    after = edit_success(*edited, edits)
    assert (metrics["edit_success"], metrics["edit_old_answer_rate"]) == (after["success"], after["old_answer_rate"])
