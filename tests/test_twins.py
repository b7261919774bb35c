"""--calibration auto: counterfactual twins of the forget set (data.twins), the unlearn flag, and forgetkit forget."""

from __future__ import annotations

import json
import re

import pytest

from forgetkit.cli import main
from forgetkit.data.readers import read_records
from forgetkit.data.records import QARecord
from forgetkit.data.twins import (
    TwinSettings,
    controls,
    counterfactual_twins,
    subject_of,
    template_of,
    twin_groups,
)
from forgetkit.errors import ForgetkitError, SettingError

PEOPLE = {"Ada Quillon": ("Lyon", "a baker"), "Bo Zentrik": ("Oslo", "a pilot"), "Cyd Marvolt": ("Quito", "a nurse"),
          "Dee Orbansk": ("Turin", "a judge")}


def _records(names) -> list[QARecord]:
    out = []
    for name in names:
        city, job = PEOPLE[name]
        key = name.split()[1].lower()
        out.append(QARecord(f"Where was {name} born?", f"{name} was born in {city}.", f"{key}-birthplace"))
        out.append(QARecord(f"What does {name} do for a living?", f"{name} works as {job}.", f"{key}-occupation"))
    return out


def test_the_subject_is_the_longest_capitalised_run_question_and_answer_share():
    assert subject_of(QARecord("When was Ada Quillon born?", "Ada Quillon was born on 3 May 1950.", "a")) == \
        "Ada Quillon"
    # the question word alone does not count, and nothing shared means no subject
    assert subject_of(QARecord("Where is it?", "Where nobody looks.", "b")) is None
    assert subject_of(QARecord("Who wrote it?", "nobody knows.", "c")) is None
    # a longer shared run wins over a shorter one
    record = QARecord("Did Bo meet Bo Zentrik in Oslo?", "Bo Zentrik was in Oslo.", "d")
    assert subject_of(record) == "Bo Zentrik"
    assert template_of(record, "Bo Zentrik") == "did bo meet in oslo?"


def test_twins_keep_the_question_and_take_another_subjects_value_renamed():
    forget, retain = _records(["Ada Quillon"]), _records(["Bo Zentrik", "Cyd Marvolt", "Dee Orbansk"])
    twins = counterfactual_twins(forget, retain, TwinSettings(per_record=2, seed=3))
    assert [t.id for t in twins] == ["twin1-quillon-birthplace", "twin2-quillon-birthplace",
                                     "twin1-quillon-occupation", "twin2-quillon-occupation"]
    assert twin_groups(forget, twins) == [0, 0, 1, 1]
    for twin in twins:
        source = forget[twin_groups(forget, [twin])[0]]
        assert twin.question == source.question and twin.answer != source.answer
        # another subject's answer to the same kind of question, in this subject's name
        donors = [r for r in retain if template_of(r, subject_of(r)) == template_of(source, "Ada Quillon")]
        assert twin.answer in {d.answer.replace(subject_of(d), "Ada Quillon") for d in donors}
    assert len({t.answer for t in twins}) == 4  # distinct donors
    assert counterfactual_twins(forget, retain, TwinSettings(per_record=2, seed=3)) == twins  # seeded
    assert counterfactual_twins(forget, retain, TwinSettings(per_record=3)) != twins


def test_the_pool_asked_for_gives_the_answers():
    forget = _records(["Ada Quillon", "Bo Zentrik"])
    twins = counterfactual_twins(forget, [], TwinSettings(per_record=1))
    assert [t.answer for t in twins] == ["Ada Quillon was born in Oslo.", "Ada Quillon works as a pilot.",
                                         "Bo Zentrik was born in Lyon.", "Bo Zentrik works as a baker."]
    with pytest.raises(ForgetkitError, match="retain set, which is empty"):
        counterfactual_twins(forget, [], TwinSettings(pool="retain"))
    # the default pool: the other forget subjects first, a retain record only where none of them can serve
    retain = _records(["Cyd Marvolt"])
    assert counterfactual_twins(forget, retain, TwinSettings(per_record=1)) == twins
    two = counterfactual_twins(forget, retain, TwinSettings(per_record=2))
    assert [t.answer for t in two][:2] == ["Ada Quillon was born in Oslo.", "Ada Quillon was born in Quito."]
    assert [t.answer for t in counterfactual_twins(forget, retain, TwinSettings(pool="retain", per_record=1))][:2] \
        == ["Ada Quillon was born in Quito.", "Ada Quillon works as a nurse."]


def test_controls_are_the_same_records_under_a_fictitious_name_per_subject():
    forget, retain = _records(["Ada Quillon", "Bo Zentrik"]), _records(["Cyd Marvolt", "Dee Orbansk"])
    twins = counterfactual_twins(forget, retain)
    control_forget, control_twins = controls(forget, twins, retain, seed=1)
    known = {w.lower() for r in forget + retain for w in re.findall(r"\w+", r.question + " " + r.answer)}
    names = {}
    for original, control in zip(forget + twins, control_forget + control_twins, strict=True):
        subject = subject_of(forget[0] if "Ada" in original.question else forget[2])
        name = names.setdefault(subject, control.question.split(" born")[0].split("was ")[-1].split("does ")[-1])
        assert control.id == original.id and subject not in control.question + control.answer
        assert control.question == original.question.replace(subject, name)
        assert control.answer == original.answer.replace(subject, name)
        assert not {w.lower() for w in name.split()} & known  # found in none of the data's texts
    assert len(set(names.values())) == 2 and controls(forget, twins, retain, seed=1)[0] == control_forget


def test_renaming_reaches_the_name_as_an_address_spells_it():
    from forgetkit.data.twins import _renamed

    assert _renamed("The email address of Bo Zentrik is bo.zentrik@mail.com.", "Bo Zentrik", "Ada Quillon") == \
        "The email address of Ada Quillon is ada.quillon@mail.com."
    assert _renamed("Bo Zentrik lives on Bo Street; bob@x.org", "Bo Zentrik", "Ada Quillon") == \
        "Ada Quillon lives on Bo Street; bob@x.org"  # capitalised words and longer words stay


def test_paired_scores_are_summed_losses_centred_on_each_record_and_its_twins(word_tokenizer, monkeypatch):
    """The criterion's twin scores against a hand computation: record i's summed loss minus the mean of the
    record's and its twins' summed losses; a forget record without a twin is left out."""
    from types import SimpleNamespace

    import numpy as np

    from forgetkit.eval.calibration import CriterionSets, CriterionSettings

    forget = [QARecord("q a", "x", "a"), QARecord("q b", "y", "b"), QARecord("q c", "z", "c")]
    twins = [QARecord("q a", "u", "twin1-a"), QARecord("q a", "v", "twin2-a"), QARecord("q b", "w", "twin1-b")]
    sets = CriterionSets(CriterionSettings(reference="twins", twins=TwinSettings(control=False)), word_tokenizer,
                         forget, twins, None, 16)
    assert sets.criterion.n_forget == 2 and sets.criterion.n_calibration == 3
    sums = [1.0, 4.0, 9.0, 2.0, 6.0, 2.0]  # forget, then twins: scored in one call (they share prompts)
    monkeypatch.setattr(sets, "_stats", lambda model, examples: [
        SimpleNamespace(logprobs=np.array([-v / 2, -v / 2]), avg_nll=v / 2) for v in sums[: len(examples)]])
    f, c, level = sets._scores(None)
    # group a: 1, 2, 6 (centre 3); group b: 4, 2 (centre 3); c is never scored: it has no twin
    assert f == pytest.approx([1 - 3, 4 - 3]) and c == pytest.approx([2 - 3, 6 - 3, 2 - 3])
    assert level == pytest.approx((1 + 3 + 1) / 3)  # the twins' mean per-token loss: the guard's unseen level


def test_the_control_subtracts_the_same_scores_under_a_fictitious_name(word_tokenizer, monkeypatch):
    from types import SimpleNamespace

    import numpy as np

    from forgetkit.eval.calibration import CriterionSets, CriterionSettings

    forget = _records(["Ada Quillon"])[:1]
    twins = counterfactual_twins(forget, _records(["Bo Zentrik", "Cyd Marvolt"]))
    assert len(twins) == 2
    sets = CriterionSets(CriterionSettings(reference="twins"), word_tokenizer, forget, twins, None, 64)
    assert len(sets.controls) == 3  # the record and its two twins, renamed
    sums = [1.0, 4.0, 7.0,  # the record, its twins (centre 4)
            3.0, 2.0, 4.0]  # the same under the fictitious name (centre 3)
    monkeypatch.setattr(sets, "_stats", lambda model, examples: [
        SimpleNamespace(logprobs=np.array([-v]), avg_nll=v) for v in sums[: len(examples)]])
    f, c, level = sets._scores(None)
    assert f == pytest.approx([(1 - 4) - (3 - 3)]) and c == pytest.approx([(4 - 4) - (2 - 3), (7 - 4) - (4 - 3)])
    assert level == pytest.approx((4 + 7) / 2)
    # a record without a subject has nothing to rename: its own scores stay (a control of itself would zero them)
    plain = [QARecord("Who wrote it?", "nobody knows.", "p")]
    plain_twins = [QARecord("Who wrote it?", "everybody.", "twin1-p")]
    sets = CriterionSets(CriterionSettings(reference="twins"), word_tokenizer, plain, plain_twins, None, 64)
    sums = [1.0, 3.0, 1.0, 3.0]
    monkeypatch.setattr(sets, "_stats", lambda model, examples: [
        SimpleNamespace(logprobs=np.array([-v]), avg_nll=v) for v in sums[: len(examples)]])
    assert sets._scores(None)[:2] == ([-1.0], [1.0])


def test_answers_with_nothing_to_swap_are_refused():
    forget = [QARecord(f"Is Ada Quillon tall {i}?", "Yes.", f"f{i}") for i in range(3)]
    retain = [QARecord(f"Is Bo Zentrik tall {i}?", "Yes.", f"r{i}") for i in range(3)]
    with pytest.raises(ForgetkitError, match="none of the 3 forget record.*--calibration FILE"):
        counterfactual_twins(forget, retain)
    with pytest.raises(SettingError, match="pool"):
        TwinSettings(pool="everyone")


def test_unlearn_with_calibration_auto_stops_against_the_twins(unlearn_run, tmp_path):
    out = tmp_path / "auto"
    code = main(["unlearn", "--run", str(unlearn_run), "--split", "forget10", "--method", "ga", "--until",
                 "indistinguishable", "--calibration", "auto", "--out", str(out), "--quiet", "train.epochs=6",
                 "train.lr=5e-3", "train.batch_size=8", "criterion.every=2"])
    summary = json.loads((out / "summary.json").read_text())
    crit = summary["criterion"]
    forget = read_records(unlearn_run / "benchmark" / "forget10.jsonl")
    assert crit["calibration"]["reference"] == "twins" and crit["calibration"]["file"] is None
    assert crit["calibration"]["count"] == crit["calibration_examples"] == 2 * len(forget)
    assert code == (0 if crit["reached"] else 5)
    assert 0 < crit["start"]["retain_probability"] < 1
    assert crit["checks_s"] > 0
    # the run's calibration people were not read: the same request on a copy without them behaves alike
    text = (out / "audit.json").read_text() + (out / "train_log.jsonl").read_text()
    assert not any(r.question in text or r.answer in text for r in forget)  # hashes and counts only


def test_calibration_auto_refuses_a_forget_set_too_small(unlearn_run, tmp_path, capsys):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(read_records(unlearn_run / "benchmark" / "forget10.jsonl")[0].to_dict()) + "\n")
    out = tmp_path / "never"
    code = main(["unlearn", "--model", str(unlearn_run / "target"), "--forget", str(one), "--retain",
                 str(unlearn_run / "benchmark" / "retain90.jsonl"), "--method", "npo", "--until",
                 "indistinguishable", "--calibration", "auto", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--calibration auto" in err and "--calibration FILE" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_forget_from_a_gguf_file_prints_its_verdict_and_records_it(unlearn_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FORGETKIT_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "target.gguf"
    assert main(["--quiet", "export", "--gguf", "--model", str(unlearn_run / "target"), "--out", str(gguf)]) == 0
    bench = unlearn_run / "benchmark"
    argv = ["forget", "--model", str(gguf), "--records", str(bench / "forget10.jsonl"), "--retain",
            str(bench / "retain90.jsonl"), "--quiet", "train.epochs=3"]
    capsys.readouterr()
    code = main(argv + ["--out", str(tmp_path / "first")])
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "first" / "summary.json").read_text())
    crit = summary["criterion"]
    assert code == (0 if crit["reached"] else 5)
    assert printed.startswith(f"verdict: {crit['verdict']}\n")
    kept = crit["chosen"]["retain_probability"] / crit["start"]["retain_probability"]
    assert f"({kept:.2f}×)" in printed and "GGUF import" in printed
    assert summary["method"] == "npo" and crit["calibration"]["reference"] == "twins"
    imported = list((tmp_path / "cache" / "models").iterdir())
    assert len(imported) == 1
    audit = json.loads((tmp_path / "first" / "audit.json").read_text())
    assert str(imported[0]) in json.dumps(audit["load"])
    # a second request on the same file reuses the import
    main(argv + ["--out", str(tmp_path / "second")])
    assert "GGUF import" not in capsys.readouterr().out
    assert list((tmp_path / "cache" / "models").iterdir()) == imported


def test_forget_names_its_own_flags_in_one_line_and_writes_nothing(unlearn_run, tmp_path, capsys):
    bench = unlearn_run / "benchmark"
    out = tmp_path / "never"
    code = main(["forget", "--model", str(unlearn_run / "target"), "--records", str(tmp_path / "missing.jsonl"),
                 "--retain", str(bench / "retain90.jsonl"), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--records file not found" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()



def test_a_calibration_file_and_twins_together_are_refused_and_forget_reads_auto_as_the_twins(unlearn_run, tmp_path,
                                                                                                capsys, monkeypatch):
    """`--calibration FILE` with `criterion.reference=twins` names two references: refused in one line before any
    work, never one of them silently ignored. `forget --calibration auto` is the twins (its default), not a file
    named 'auto'."""
    bench = unlearn_run / "benchmark"
    out = tmp_path / "never"
    code = main(["unlearn", "--model", str(unlearn_run / "target"), "--forget", str(bench / "forget10.jsonl"),
                 "--retain", str(bench / "retain90.jsonl"), "--method", "npo", "--until", "indistinguishable",
                 "--calibration", str(bench / "holdout10.jsonl"), "criterion.reference=twins", "--out", str(out),
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "not both" in err and len(err.strip().splitlines()) == 1 and not out.exists()

    import forgetkit.deletion as deletion

    seen = {}

    def recorded(request, quiet=False):
        seen.update(calibration=request.calibration, reference=request.config.criterion.reference)
        raise ForgetkitError("stopped here")

    monkeypatch.setattr(deletion, "run_unlearn", recorded)
    code = main(["forget", "--model", str(unlearn_run / "target"), "--records", str(bench / "forget10.jsonl"),
                 "--retain", str(bench / "retain90.jsonl"), "--calibration", "auto", "--out", str(out), "--quiet"])
    assert code == 2 and seen == {"calibration": None, "reference": "twins"}
