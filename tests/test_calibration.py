"""Oracle-free stopping (``unlearn --until indistinguishable``): the criterion on constructed score sequences,
the calibration people of the built-in benchmark, the hook in a real run (trace, roll-back, utility guard),
and the one-line errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from forgetkit.cli import main
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.data.synthetic import SyntheticConfig, generate
from forgetkit.errors import ForgetkitError
from forgetkit.eval.calibration import (
    CONTINUE,
    OVERSHOT,
    REACHED,
    UTILITY,
    Criterion,
    CriterionRecord,
    CriterionSettings,
    auc_tolerance,
    calibration_needed,
)


def test_tolerance_is_the_null_standard_error_of_the_auc():
    # 40 vs 40: SE = sqrt(81 / (12 * 1600)) = 0.064952; 1.96 SE = 0.12731
    assert auc_tolerance(40, 40, 1.96) == pytest.approx(0.12731, abs=1e-5)
    assert auc_tolerance(400, 400, 1.96) < auc_tolerance(40, 40, 1.96)  # more examples, a narrower band


def _criterion(n: int = 20, **settings) -> Criterion:
    return Criterion(CriterionSettings(**settings), n, n)


def test_the_criterion_stops_at_the_first_indistinguishable_check():
    c = _criterion()
    calibration = [2.0 + 0.1 * i for i in range(20)]
    sequence = [[0.5 + 0.01 * i for i in range(20)],  # far below the calibration losses: AUC 1
                [1.05 + 0.1 * i for i in range(20)],  # still mostly below: AUC 1 - 55/400
                [2.0 + 0.1 * i + 0.05 for i in range(20)]]  # interleaved: AUC 0.475
    verdicts = [c.judge(step, forget, calibration, retain_loss=1.0).verdict for step, forget in enumerate(sequence)]
    assert verdicts == [CONTINUE, CONTINUE, REACHED]
    assert c.checks[0].auc == 1.0 and c.checks[1].auc == pytest.approx(1 - 55 / 400)
    assert c.best is c.checks[2] and c.summary(REACHED).chosen.step == 2


def test_overshooting_keeps_the_check_closest_to_one_half():
    c = _criterion()
    calibration = [2.0 + 0.1 * i for i in range(20)]
    c.judge(0, [0.5] * 20, calibration, 1.0)  # AUC 1
    c.judge(5, [1.25 + 0.1 * i for i in range(20)], calibration, 1.0)  # AUC 1 - 78/400: above the band
    over = c.judge(10, [9.0 + i for i in range(20)], calibration, 1.0)  # every forget loss above: AUC 0
    assert over.verdict == OVERSHOT and over.auc == 0.0
    assert c.best.step == 5 and c.best.auc == pytest.approx(1 - 78 / 400) and c.best.auc > 0.5 + c.tolerance


def test_the_utility_guard_stops_a_run_that_destroys_the_retain_set():
    """The guard's scale is the model's own: the gap at the start between the calibration set's mean loss (unseen
    data: 2.95 here) and the retain set's (1.0); tolerance 0.5 stops once the retain loss passes 1 + 0.5 · 1.95."""
    c = _criterion(utility_tolerance=0.5)
    calibration = [2.0 + 0.1 * i for i in range(20)]
    assert c.judge(0, [0.5] * 20, calibration, retain_loss=1.0).verdict == CONTINUE
    assert c.utility_bound(1.0, 2.95) == pytest.approx(1.975)
    assert c.judge(5, [1.25 + 0.1 * i for i in range(20)], calibration, retain_loss=1.9).verdict == CONTINUE
    guarded = c.judge(10, [2.5] * 20, calibration, retain_loss=2.0)
    assert guarded.verdict == UTILITY and c.best.step == 5  # a guarded check is never the one kept
    blind = _criterion(utility_tolerance=0.5)  # a model that knew its retain set no better than unseen data
    blind.judge(0, [0.5] * 20, [1.0] * 20, retain_loss=2.0)
    assert blind.utility_bound(2.0, 1.0) == pytest.approx(3.0)


def test_settings_are_checked():
    with pytest.raises(Exception, match="criterion|every|must be positive"):
        CriterionSettings(every=0)


def test_calibration_people_are_new_people_and_change_no_other_file():
    base = dict(n_people=20, qa_per_person=3, n_generic_people=10, canary_digits=4)
    without, with_ = generate(SyntheticConfig(**base)), generate(SyntheticConfig(**base, calibration_people=3))
    assert [k for k in without if without[k] != with_[k]] == ["people"] and "calibration" not in without
    others = {p["person"] for p in without["people"]}
    names = {p["name"] for p in without["people"]}
    calibration = [p for p in with_["people"] if p["group"] == "calibration"]
    assert len(calibration) == 3 and not {p["person"] for p in calibration} & others
    assert not {p["name"] for p in calibration} & names
    ids = {r.id for name, rows in with_.items() if name != "calibration" and rows and hasattr(rows[0], "id")
           for r in rows}
    assert len(with_["calibration"]) == 9 and not {r.id for r in with_["calibration"]} & ids
    people = {r.id.split("-")[0] for name in ("full", "holdout10", "holdout05", "holdout01") for r in with_[name]}
    assert not people & {p["person"] for p in calibration}


def _unlearn(run, out, *extra) -> int:
    return main(["--quiet", "unlearn", "--run", str(run), "--split", "forget10", "--out", str(out), *extra])


def test_until_indistinguishable_on_a_run_traces_stops_and_records(unlearn_run, tmp_path):
    """GA at a high learning rate overshoots within a few steps: the run stops, rolls back to the check nearest
    0.5, and the saved model scores as that check did."""
    out = tmp_path / "ga"
    code = _unlearn(unlearn_run, out, "--method", "ga", "--until", "indistinguishable", "train.epochs=20",
                    "train.lr=5e-3", "train.batch_size=8", "criterion.every=2")
    rows = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    checks = [r["criterion"] for r in rows if "criterion" in r]
    assert checks[0]["step"] == 0 and checks[0]["auc"] > 0.5  # the target knows its forget people
    assert all(c["step"] % 2 == 0 for c in checks)
    summary = json.loads((out / "summary.json").read_text())
    crit = summary["criterion"]
    assert crit["stopped"] in (REACHED, OVERSHOT, UTILITY, "not reached") and crit["checks"] == len(checks)
    assert crit["stopped"] == checks[-1]["verdict"] or crit["stopped"] == "not reached"
    assert crit["calibration"]["count"] == len(read_records(unlearn_run / "benchmark" / "calibration.jsonl"))
    chosen = crit["chosen"]
    assert abs(chosen["auc"] - 0.5) == min(abs(c["auc"] - 0.5) for c in checks if c["verdict"] != UTILITY)
    # exit 0 only when the kept check is within the tolerance; else 5, and the summary says it is not a deletion
    assert crit["reached"] == (abs(chosen["auc"] - 0.5) <= crit["tolerance"]) and code == (0 if crit["reached"] else 5)
    assert crit["verdict"].startswith("indistinguishable at step" if crit["reached"] else "not indistinguishable")
    if crit["stopped"] != REACHED:
        assert summary["steps"] >= chosen["step"]
    audit = json.loads((out / "audit.json").read_text())
    assert audit["criterion"]["chosen"] == chosen and "calibration" in audit["criterion"]
    assert not (out / "criterion_best.safetensors").exists()
    # the saved adapter is the chosen check's: scored again, it gives the chosen AUC
    from forgetkit.data.formatting import tokenize_qa
    from forgetkit.eval import mia
    from forgetkit.eval.token_stats import score_examples
    from forgetkit.unlearn import load_unlearned

    model, tok = load_unlearned(out)
    forget = read_records(unlearn_run / "benchmark" / "forget10.jsonl")
    calibration = read_records(unlearn_run / "benchmark" / "calibration.jsonl")

    def losses(records):
        examples = tokenize_qa(tok, records, 128).examples
        with torch.no_grad():
            return [s.avg_nll for s in score_examples(model, examples, tok.pad_token_id)]

    assert mia.auc(losses(forget), losses(calibration)) == pytest.approx(chosen["auc"], abs=1e-6)


def test_the_utility_guard_in_a_run(unlearn_run, tmp_path, capsys):
    out = tmp_path / "guard"
    code = _unlearn(unlearn_run, out, "--method", "ga", "--until", "indistinguishable", "train.epochs=10",
                    "train.lr=1e-2", "train.batch_size=8", "criterion.every=1", "criterion.utility_tolerance=1e-6")
    crit = json.loads((out / "summary.json").read_text())["criterion"]
    assert crit["stopped"] == UTILITY and crit["chosen"]["step"] == 0 and crit["rolled_back"]
    # step 0, then each step's check fires the guard: twice the run goes back to step 0's weights with half the
    # learning rate (criterion.backtracks = 2), and the third time it stops
    assert crit["checks"] == 4
    assert crit["backtracked"] == [{"step": s, "verdict": UTILITY, "to_step": 0, "lr_scale": 0.5} for s in (1, 2)]
    lrs = [json.loads(line)["lr"] for line in (out / "train_log.jsonl").read_text().splitlines()
           if "lr" in json.loads(line)]
    assert lrs[1] == pytest.approx(lrs[0] / 2, rel=0.2) and lrs[2] == pytest.approx(lrs[0] / 4, rel=0.2)
    # rolled back to the start, which the target's forget set is far from: written, recorded, but not a deletion
    assert code == 5 and not crit["reached"] and crit["verdict"].startswith("not indistinguishable: best AUC")
    err = capsys.readouterr().err
    assert "the request is NOT a finished deletion (exit 5)" in err and "Traceback" not in err
    from forgetkit.audit.ledger import entries

    audit = json.loads((out / "audit.json").read_text())
    assert audit["criterion"]["reached"] is False
    row = entries(unlearn_run / "ledger.sqlite")[-1]
    assert json.loads(row["metrics_json"])["until_indistinguishable"] is False


def _one_line_error(capsys, code: int, fragment: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error:") and fragment in err[0], err


def test_one_line_errors(unlearn_run, tmp_path, capsys):
    bench = unlearn_run / "benchmark"
    user = ["--quiet", "unlearn", "--model", str(unlearn_run / "target"), "--forget", str(bench / "forget10.jsonl"),
            "--retain", str(bench / "retain90.jsonl"), "--method", "ga", "--until", "indistinguishable"]
    _one_line_error(capsys, main([*user, "--out", str(tmp_path / "a")]), "needs a calibration set")
    _one_line_error(capsys, main([*user, "--calibration", str(bench / "forget10.jsonl"), "--out",
                                  str(tmp_path / "b")]), "is also in the forget or retain set")
    _one_line_error(capsys, _unlearn(unlearn_run, tmp_path / "c", "--method", "retrain", "--until",
                                     "indistinguishable"), "nothing to stop")
    _one_line_error(capsys, _unlearn(unlearn_run, tmp_path / "d", "--method", "ga", "until=soon"),
                    "setting 'until'")
    one = tmp_path / "one.jsonl"
    one.write_text((bench / "calibration.jsonl").read_text().splitlines()[0] + "\n")
    # 6 forget examples against 1 calibration example: ±0.65, so a perfectly known forget set (AUC 1) would pass
    _one_line_error(capsys, main([*user, "--calibration", str(one), "--out", str(tmp_path / "e")]),
                    "tolerance of ±0.65 against 6 forget example(s)")
    assert "it needs at least 2 examples" in str(_refusal(6, 1))
    assert "no calibration set is enough for 1 forget example(s)" in str(_refusal(1, 100))
    assert not any((tmp_path / d).exists() for d in "abcde")
    assert math.isfinite(auc_tolerance(2, 2, 1.96))


def _refusal(n_forget: int, n_calibration: int) -> Exception:
    from forgetkit.request import _refuse_too_small

    with pytest.raises(ForgetkitError) as caught:
        _refuse_too_small(None, n_forget, n_calibration, 1.96)
    return caught.value


def test_calibration_needed_is_the_fewest_examples_below_one_half():
    for n_forget in (2, 3, 6, 10, 40):
        needed = calibration_needed(n_forget, 1.96)
        assert auc_tolerance(n_forget, needed, 1.96) < 0.5
        assert needed == 1 or auc_tolerance(n_forget, needed - 1, 1.96) >= 0.5
    assert calibration_needed(1, 1.96) is None  # 1.96·√(1/12) = 0.566: no number of examples is enough


def test_llmeraser_searches_its_damping_for_the_ratio_nearest_indistinguishable(lora_run, tmp_path, capsys):
    out = tmp_path / "erase"
    code = _unlearn(lora_run, out, "--method", "llmeraser", "--until", "indistinguishable",
                    "criterion.dampings=[100.0,10.0,3.0]", "params.curvature_examples=32")
    summary = json.loads((out / "summary.json").read_text())
    crit = summary["criterion"]
    assert code == (0 if crit["reached"] else 5)
    trace = crit["trace"]
    assert trace[0]["step"] == 0 and trace[0]["damping_ratio"] is None  # the unedited adapter first
    assert [t["damping_ratio"] for t in trace[1:]] == [100.0, 10.0, 3.0][: len(trace) - 1]
    chosen = crit["chosen"]
    allowed = [t for t in trace if t["verdict"] != UTILITY]
    assert abs(chosen["auc"] - 0.5) == min(abs(t["auc"] - 0.5) for t in allowed)
    kept_ratio = next(t["damping_ratio"] for t in trace if t["step"] == chosen["step"])
    assert summary["damping_ratio"] == kept_ratio
    audit = json.loads((out / "audit.json").read_text())
    assert audit["criterion"]["chosen"] == chosen
    # a ratio whose solve does not converge is never applied: the search records it and keeps a converged one
    code = _unlearn(lora_run, tmp_path / "hard", "--method", "llmeraser", "--until", "indistinguishable",
                    "criterion.dampings=[0.001,100.0]", "params.max_iter=20", "params.curvature_examples=32")
    hard = json.loads((tmp_path / "hard" / "summary.json").read_text())
    assert hard["criterion"]["unconverged"]["damping_ratio"] == 0.001
    assert [t["damping_ratio"] for t in hard["criterion"]["trace"]] == [None]  # the search stopped there
    assert hard["damping_ratio"] is None and code in (0, 5)  # the adapter as it was
    capsys.readouterr()
    first = read_records(lora_run / "benchmark" / "forget10.jsonl")[0]
    edits = tmp_path / "edits.jsonl"
    edits.write_text(json.dumps({"id": first.id, "question": first.question, "answer": first.answer,
                                 "new_answer": "unknown"}) + "\n")
    _one_line_error(capsys, _unlearn(lora_run, tmp_path / "q", "--method", "llmeraser", "--until", "indistinguishable",
                                     "--edits", str(edits)), "removals only")


class _Scripted:
    """Stands in for the hook's scoring: each check gets the next scripted forget-vs-calibration AUC (forget losses
    placed against fixed calibration losses) and retain loss, judged by the hook's real criterion."""

    def __init__(self, criterion: Criterion, script: list[tuple[float, float]]) -> None:
        self.criterion, self.script = criterion, list(script)

    def check(self, step: int, model) -> object:
        auc, retain_loss = self.script.pop(0)
        calibration = [float(i) for i in range(1, 11)]
        # forget losses below k of the 10 calibration losses: AUC = k / 10
        forget = [10.5 - 10 * auc] * 10
        return self.criterion.judge(step, forget, calibration, retain_loss)


def test_a_recipe_that_collapses_between_two_checks_is_checked_where_it_moves_and_backtracks(bpe_tokenizer,
                                                                                           tmp_path):
    """Built in code: the forget term falls by half within two steps, so the hook checks there and not at its grid
    (every 100 steps); that check has overshot, so the hook puts the best check's weights back and asks the loop
    for half the learning rate; the next moving check is indistinguishable and stops the run."""
    from forgetkit.methods.stopping import StoppingHook
    from forgetkit.models import build_tiny_model

    records = [QARecord(f"Who is person {i}?", f"A poet from town {i}.", f"p{i:04d}-job") for i in range(10)]
    settings = CriterionSettings(every=100, move_share=0.5, backtracks=1)
    hook = StoppingHook(settings, bpe_tokenizer, records[:5], records[5:], records, 48, tmp_path, forget_term="npo")
    # step 0: AUC 1.0 (known); step 3: 0.0 (overshot); step 6: 0.5 (indistinguishable)
    hook.sets = _Scripted(hook.criterion, [(1.0, 1.0), (0.0, 1.0), (0.5, 1.0)])
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    hook.check(0, model)
    records_by_step = {}
    for step, npo in enumerate([10.0, 9.0, 4.0, 3.5, 3.0, 1.4], start=1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)  # training moves the weights
        records_by_step[step] = hook(step, model, {"loss": npo + 1, "npo": npo})
    # anchored at step 1 (10.0): 4.0 at step 3 has moved by more than half; after the backtrack, anchored at 3.5
    assert [s for s, r in records_by_step.items() if r] == [3, 6]
    assert records_by_step[3]["backtrack"] == 0.5 and records_by_step[3]["criterion"]["backtracked_to"] == 0
    assert records_by_step[6]["stop"] == "indistinguishable" and "backtrack" not in records_by_step[6]
    summary = hook.finish(model, 6)
    assert summary.reached and summary.chosen.step == 6 and not summary.rolled_back
    assert summary.backtracked == [{"step": 3, "verdict": "overshot", "to_step": 0, "lr_scale": 0.5}]
    again = CriterionRecord.from_dict(json.loads(json.dumps(summary.to_dict())))  # as summary.json reads it back
    assert json.dumps(again.to_dict()) == json.dumps(summary.to_dict()) and "trace" not in summary.to_dict()


def test_backtracking_puts_the_best_weights_back_and_ends_when_its_budget_is_spent(bpe_tokenizer, tmp_path):
    from forgetkit.methods.stopping import StoppingHook
    from forgetkit.models import build_tiny_model

    records = [QARecord(f"Who is person {i}?", f"A poet from town {i}.", f"p{i:04d}-job") for i in range(10)]
    hook = StoppingHook(CriterionSettings(every=1, backtracks=1), bpe_tokenizer, records[:5], records[5:], records,
                        48, tmp_path, forget_term="npo", can_backtrack=True)
    hook.sets = _Scripted(hook.criterion, [(0.9, 1.0), (0.0, 1.0), (0.0, 1.0)])
    model = build_tiny_model(bpe_tokenizer, "llama", "micro")
    hook.check(0, model)
    best = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    first = hook(1, model, {"npo": 1.0})
    assert first["backtrack"] == 0.5
    assert all(torch.equal(p, best[n]) for n, p in model.named_parameters())  # the best check's weights again
    second = hook(2, model, {"npo": 1.0})
    assert second["stop"] == "overshot" and "backtrack" not in second  # the budget (1) is spent
    assert StoppingHook(CriterionSettings(), bpe_tokenizer, records[:5], records[5:], records, 48, tmp_path,
                        can_backtrack=False).backtracks_left == 0  # several processes: no backtracking
