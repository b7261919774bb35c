"""Readers for every format, field remapping, and one clear line for every kind of bad input."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgetkit.cli import main
from forgetkit.data.readers import find_overlap, read_records, remove_overlap
from forgetkit.data.records import FieldMap, QARecord, TextRecord
from forgetkit.errors import ConfigError, DataError

ROWS = [
    {"id": "a", "question": "Who is Ada?", "answer": "A poet.", "perturbed_answer": ["A baker.", "A pilot."]},
    {"id": "b", "question": "Where is Ada?", "answer": "In Arlen.", "paraphrased_answer": "Arlen."},
    {"id": "c", "question": "When?", "answer": "In 1984."},
]
FIXTURES = Path(__file__).parent / "fixtures"


def _write(path: Path, fmt: str, rows: list[dict]) -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "json":
        path.write_text(json.dumps(rows))
    elif fmt == "json-lines":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "columns":
        keys = sorted({k for r in rows for k in r})
        path.write_text(json.dumps({k: [r.get(k) for r in rows] for k in keys}))
    elif fmt == "csv":
        keys = sorted({k for r in rows for k in r})
        with path.open("w", newline="") as fh:
            w = csv.DictWriter(fh, keys)
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(_rectangular(rows)), path)
    elif fmt == "datasets":
        datasets.Dataset.from_list(_rectangular(rows)).save_to_disk(str(path))
    return path


def _rectangular(rows: list[dict]) -> list[dict]:
    """Every row with every column (Arrow infers columns from the first row only)."""
    keys = sorted({k for r in rows for k in r})
    return [{k: r.get(k) for k in keys} for r in rows]


SUFFIX = {"jsonl": ".jsonl", "json": ".json", "json-lines": ".json", "columns": ".json", "csv": ".csv",
          "parquet": ".parquet", "datasets": ""}


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_every_format_reads_the_same_records(tmp_path, fmt):
    path = _write(tmp_path / f"data{SUFFIX[fmt]}", fmt, ROWS)
    records = read_records(path)
    assert [r.id for r in records] == ["a", "b", "c"]
    assert records[0] == QARecord("Who is Ada?", "A poet.", "a", perturbed_answer=("A baker.", "A pilot."))
    assert records[1].paraphrased_answer == "Arlen." and records[2].perturbed_answer == ()


def test_datasets_dict_needs_a_split(tmp_path):
    table = datasets.Dataset.from_list(_rectangular(ROWS))
    dd = datasets.DatasetDict({"train": table, "test": table})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(read_records(tmp_path / "dd", split="test")) == 3
    with pytest.raises(DataError, match=r"dd: holds several splits; .*available: train, test"):
        read_records(tmp_path / "dd")
    with pytest.raises(DataError, match=r"no split 'dev' \(available: train, test\)"):
        read_records(tmp_path / "dd", split="dev")


def test_tofu_json_lines_file():
    records = read_records(FIXTURES / "tofu_world_facts_head.json")
    assert len(records) == 5 and records[0].answer == "Paris"
    assert records[0].perturbed_answer == ("Berlin", "London", "Madrid")
    assert records[0].id == "tofu_world_facts_head-0"


def test_tofu_style_json_lines_errors_name_the_line(tmp_path):
    head = (FIXTURES / "tofu_world_facts_head.json").read_bytes().splitlines(keepends=True)
    path = tmp_path / "tofu.json"
    path.write_bytes(head[0] + b'{"question": "Q", "answer": \n' + head[2])
    with pytest.raises(DataError, match=r"tofu.json: line 2: malformed JSON"):
        read_records(path)
    path.write_bytes(head[0] + head[1] + b'{"question": "\xff", "answer": "A"}\n')
    with pytest.raises(DataError, match=r"tofu.json: line 3: invalid UTF-8"):
        read_records(path)
    path.write_bytes(head[0] + b'{"question": "Q"}\n')
    with pytest.raises(DataError, match=r"tofu.json: line 2: field 'answer': missing"):
        read_records(path)


def test_json_layouts_single_object_and_empty(tmp_path):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(ROWS[0]))
    assert [r.id for r in read_records(path)] == ["a"]
    path.write_text(json.dumps({"data": ROWS}))
    assert [r.id for r in read_records(path)] == ["a", "b", "c"]
    path.write_text(json.dumps({"question": ["Q1", "Q2"], "answer": ["A1"]}))
    with pytest.raises(DataError, match=r"one.json: columns differ in length \(question=2, answer=1\)"):
        read_records(path)
    for content in ("", "  \n", "[]", '{"data": []}'):
        path.write_text(content)
        with pytest.raises(DataError, match=r"one.json: no records"):
            read_records(path)


def test_csv_cells_lists_and_positions(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('id,prompt,completion,wrong,extra\n'
                    '1,"Q1\nover two lines",A1,"[""x"", ""y""]",ignored\n'
                    '\n'
                    '2,Q2,A2,just one,\n')
    fm = FieldMap.parse(["question_key=prompt", "answer_key=completion", "perturbed_answer_key=wrong"])
    records = read_records(path, field_map=fm)
    assert records == [QARecord("Q1\nover two lines", "A1", "1", perturbed_answer=("x", "y")),
                       QARecord("Q2", "A2", "2", perturbed_answer=("just one",))]
    path.write_text('question,answer,perturbed_answer\n"Q\n1",A,\nQ2,A,"[""x"", 3]"\n')
    with pytest.raises(DataError, match=r"p.csv: line 4: field 'perturbed_answer\[1\]': expected a string"):
        read_records(path)
    path.write_text('question,answer,perturbed_answer\nQ,A,"[""x"",]"\n')
    with pytest.raises(DataError, match=r"p.csv: line 2: field 'perturbed_answer': malformed JSON list"):
        read_records(path)
    path.write_text("question,answer\nQ,A,surplus\n")
    with pytest.raises(DataError, match=r"p.csv: line 2: 3 cells but 2 header columns"):
        read_records(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("question,answer\nQ,A\nQ2,\n", "bad.csv: line 3: field 'answer': empty"),
        ("question,answer\nQ,A\nQ2\n", "bad.csv: line 3: field 'answer': missing"),
        ("answer,question\nA,Q\nA2,  \n", "bad.csv: line 3: field 'question': empty"),
        ("question,answer\n", "bad.csv: no records"),
        ("", "bad.csv: no records"),
    ],
)
def test_bad_csv_names_line_and_field(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_records(path)
    assert expected in str(err.value)


def test_field_remapping_and_text_records(tmp_path):
    path = _write(tmp_path / "m.jsonl", "jsonl", [{"prompt": "Q?", "completion": "A.", "uid": 7}])
    fm = FieldMap.parse(["question_key=prompt", "answer_key=completion", "id_key=uid"])
    assert read_records(path, field_map=fm) == [QARecord("Q?", "A.", "7")]
    text = _write(tmp_path / "t.jsonl", "jsonl", [{"text": "Some story."}])
    assert read_records(text, kind="text") == [TextRecord("Some story.", "t-0")]
    with pytest.raises(ConfigError, match="unknown field 'colour_key'"):
        FieldMap.parse(["colour_key=x"])
    with pytest.raises(ConfigError, match="unknown record kind"):
        read_records(path, kind="image")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"question": "Q", "answer": "A"}\n{"question": "Q2"}\n',
         ["bad.jsonl", "line 2", "field 'answer'", "missing"]),
        ('{"question": "Q", "answer": ""}\n', ["line 1", "field 'answer'", "empty"]),
        ('{"question": "Q", "answer": 3}\n', ["line 1", "field 'answer'", "expected a string, got int"]),
        ('{"question": "Q", "answer": {"a": 1}}\n', ["line 1", "field 'answer'", "got dict"]),
        ('{"question": "Q", "answer": "A", "perturbed_answer": 4}\n',
         ["line 1", "field 'perturbed_answer'", "expected a list of strings, got int"]),
        ('{"question": "Q", "answer": "A", "perturbed_answer": ["x", 2]}\n',
         ["line 1", "field 'perturbed_answer[1]'", "expected a string"]),
        ('{"question": "Q", "answer": "A", "id": 1.5}\n', ["line 1", "field 'id'", "float"]),
        ('{"question": "Q", "answer": "A", "id": ["x"]}\n', ["line 1", "field 'id'", "got list"]),
        ('{"question": "Q", "answer": "A", "id": true}\n', ["line 1", "field 'id'", "got bool"]),
        ('{"question": null, "answer": "A"}\n', ["line 1", "field 'question'", "missing"]),
        ('{"question": "Q", "answer": "A"}\n{"question": "Q", \n', ["line 2", "malformed JSON"]),
        ('["not", "an", "object"]\n', ["line 1", "expected a JSON object"]),
        ('{"id": "x", "question": "Q", "answer": "A"}\n{"id": "x", "question": "Q", "answer": "A"}\n',
         ["line 2", "field 'id'", "duplicate id 'x' (first at line 1)"]),
        ("", ["bad.jsonl", "no records"]),
        ("\n\n", ["bad.jsonl", "no records"]),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, content, expected):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_records(path)
    for part in expected:
        assert part in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.jsonl", b'{"question": "Q", "answer": "A"}\n{"question": "R", "answer": "B"}\n{"q\xff": 1}\n'),
        ("bad.csv", b"question,answer\nQ,A\nR\xe9,B\n"),
    ],
)
def test_invalid_utf8_names_the_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}: line 3: invalid UTF-8"):
        read_records(path)


def test_line_numbers_count_newlines_only_and_ignore_a_bom(tmp_path):
    path = tmp_path / "odd.jsonl"
    rows = [{"question": "Q\u2028with a line separator", "answer": "A"}, {"question": "Q2"}]
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    with pytest.raises(DataError, match=r"odd.jsonl: line 2: field 'answer': missing"):
        read_records(path)


def test_bad_json_list_and_csv_positions(tmp_path):
    path = _write(tmp_path / "bad.json", "json", [ROWS[0], {"question": "Q"}])
    with pytest.raises(DataError, match=r"bad.json: record 1: field 'answer': missing"):
        read_records(path)
    rows = [{"question": "Q", "answer": "A"}, {"question": "Q", "answer": None}]
    path = _write(tmp_path / "bad.parquet", "parquet", rows)
    with pytest.raises(DataError, match=r"bad.parquet: record 1: field 'answer': missing"):
        read_records(path)


def test_missing_file_and_unsupported_type(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_records(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        read_records(tmp_path / "x.txt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="dir: directory is not a datasets directory"):
        read_records(tmp_path / "dir")
    (tmp_path / "broken.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="broken.parquet: not a readable Parquet file"):
        read_records(tmp_path / "broken.parquet")


def test_overlap_is_counted_never_printed(caplog):
    forget = [QARecord("Who is Ada?", "A poet.", "f1"), QARecord("Who is Cy?", "A cook.", "f2")]
    retain = [QARecord("who is  ada?", "A poet.", "r1"), QARecord("Who is Bo?", "A baker.", "r2"),
              QARecord("WHO IS CY?\n", " a cook.", "r3")]
    assert find_overlap(forget, retain) == [0, 2]
    with caplog.at_level(logging.WARNING, logger="forgetkit"):
        kept, n = remove_overlap(forget, retain, dedupe=False)
    assert n == 2 and kept == retain
    assert "2 retain record(s) also appear in the forget set; pass --dedupe" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="forgetkit"):
        kept, n = remove_overlap(forget, retain, dedupe=True)
    assert n == 2 and [r.id for r in kept] == ["r2"]
    assert "dropped 2 record(s)" in caplog.text and "from retain" in caplog.text
    for text in ("ada", "poet", "cy?", "cook", "bo?", "baker"):
        assert text not in caplog.text.lower()
    caplog.clear()
    assert remove_overlap(forget, retain[1:2], dedupe=True) == (retain[1:2], 0) and not caplog.text


def test_text_overlap():
    retain = [TextRecord("a story.", "r"), TextRecord("B.", "s")]
    assert find_overlap([TextRecord("A  story.", "f")], retain) == [0]


def test_cli_reports_bad_data_in_one_line_without_traceback(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "Q", "answer": "A"}\n{"question": "Q2"}\n')
    assert main(["data", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: {path}: line 2: field 'answer': missing"]


def test_cli_dedupe_writes_clean_retain(tmp_path, capsys):
    forget = _write(tmp_path / "f.jsonl", "jsonl", ROWS[:1])
    retain = _write(tmp_path / "r.jsonl", "jsonl", [dict(ROWS[0], id="z")] + ROWS[1:])
    out = tmp_path / "clean.jsonl"
    args = ["data", "check", "--forget", str(forget), "--retain", str(retain), "--dedupe", "--out", str(out)]
    assert main(args) == 0
    assert "overlap: 1" in capsys.readouterr().out
    assert [r.id for r in read_records(out)] == ["b", "c"]
