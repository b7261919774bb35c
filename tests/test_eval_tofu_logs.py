"""Forget Quality and Model Utility on TOFU's own released logs, and ``forgetkit aggregate``."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from forgetkit.cli import main
from forgetkit.eval import tofu

FIXTURES = Path(__file__).parent / "fixtures" / "tofu"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "tofu"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> dict[str, Path]:
    """The stripped TOFU logs (Llama-2-7B full and retain90), unzipped to JSON files."""
    out = tmp_path_factory.mktemp("tofu")
    paths = {}
    for name in ("full", "retain90"):
        path = out / f"{name}.json"
        path.write_bytes(gzip.decompress((FIXTURES / f"llama2-7b_{name}_eval_log_aggregated.json.gz").read_bytes()))
        paths[name] = path
    return paths


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_reproduces_tofus_published_numbers(logs):
    full, retain90 = load(logs["full"]), load(logs["retain90"])
    result = tofu.aggregate(full, retain90)
    assert result["forget_quality"] == pytest.approx(1.83e-21, rel=0.01)
    assert result["model_utility"] == pytest.approx(0.6227, abs=5e-4)
    assert len(result["model_utility_components"]) == 9
    assert tofu.aggregate(retain90)["model_utility"] == pytest.approx(0.6137, abs=5e-4)
    assert tofu.aggregate(retain90, retain90)["forget_quality"] == 1.0


def test_truth_ratios_equal_the_ones_tofu_logged(logs):
    for set_log in load(logs["full"]).values():
        logged = list(set_log["truth_ratio"].values())
        np.testing.assert_allclose(tofu.set_ratios(set_log), logged, rtol=1e-5)  # TOFU logged float32 values


def test_aggregate_command_prints_json(logs, capsys):
    assert main(["aggregate", "--logs", str(logs["full"]), "--oracle-logs", str(logs["retain90"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["forget_quality"] == pytest.approx(1.83e-21, rel=0.01)
    assert result["model_utility"] == pytest.approx(0.6227, abs=5e-4)


def test_aggregate_without_oracle_says_forget_quality_is_missing(logs, capsys):
    assert main(["aggregate", "--logs", str(logs["retain90"])]) == 0
    out = capsys.readouterr().out
    assert "forget_quality: missing: no oracle log given" in out
    assert "model_utility: 0.613" in out


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures/tofu not beside the repository")
def test_aggregate_reads_the_unstripped_released_files(capsys):
    full = SHARED / "llama2-7b_full_eval_log_aggregated.json"
    retain = SHARED / "llama2-7b_retain90_eval_log_aggregated.json"
    assert main(["aggregate", "--logs", str(full), "--oracle-logs", str(retain), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["forget_quality"] == pytest.approx(1.83e-21, rel=0.01)


def test_bad_logs_are_one_line_errors(logs, tmp_path, capsys):
    broken = tmp_path / "broken.json"
    broken.write_text('{"eval_log.json": ')
    assert main(["aggregate", "--logs", str(broken)]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err and "malformed JSON" in err and "Traceback" not in err

    other = tmp_path / "other.json"
    other.write_text('{"results": {}}')
    assert main(["aggregate", "--logs", str(other)]) == 2
    assert "not an evaluation log" in capsys.readouterr().err

    small = tmp_path / "small.json"
    doc = load(logs["retain90"])
    for metric in doc["eval_log_forget.json"].values():
        metric.pop("0")
    small.write_text(json.dumps(doc))
    assert main(["aggregate", "--logs", str(small), "--oracle-logs", str(logs["full"])]) == 2
    assert "not the same forget set" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures/tofu not beside the repository")
def test_tofu_real_qa_deals_tofus_own_pairs_out_by_author_and_the_user_data_path_reads_them(tmp_path):
    """benchmarks/tofu_real_qa.py's data: the released logs' ground-truth pairs, 20 per author, dealt out so that
    no author is in two splits; `prepare --data`'s reader takes the directory as TOFU's layout with those splits."""
    import importlib.util

    from forgetkit.data.user_splits import DatasetSettings, split_user_data

    spec = importlib.util.spec_from_file_location("tofu_real_qa", Path(__file__).parents[1] / "benchmarks" /
                                                  "tofu_real_qa.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    counts = script.write_layout(SHARED, tmp_path / "data", 3, 6, 3, 3)
    assert counts == {"forget10": 60, "retain90": 120, "holdout10": 60, "calibration": 60, "full": 180}
    log = json.loads((SHARED / script.LOG).read_text())["eval_log_forget.json"]["generated_text"]
    forget = [json.loads(line) for line in (tmp_path / "data" / "forget10.json").read_text().splitlines()]
    assert [r["answer"] for r in forget] == [log[str(i)][2].strip() for i in range(60)]
    assert "[INST]" not in forget[0]["question"] and forget[0]["question"] in log["0"][0]
    splits = split_user_data(DatasetSettings(path=str(tmp_path / "data"), group_size=20, forget_splits=["forget10"]))
    questions = {name: {r.question for r in records} for name, records in splits.files.items()}
    for a, b in (("forget10", "retain90"), ("forget10", "holdout10"), ("forget10", "calibration"),
                 ("holdout10", "calibration"), ("retain90", "calibration")):
        assert not questions[a] & questions[b], (a, b)
    assert len(questions["forget10"]) == 60 and len(questions["calibration"]) == 60
