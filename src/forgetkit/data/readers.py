"""Reading forget / retain / holdout / utility sets from the formats people keep them in.

One entry point, :func:`read_records`, picks the reader by path: ``.jsonl``; ``.json`` (a list
of objects, ``{"data": [...]}``, a dict of equal-length columns, or TOFU's released ``.json``
files, which are JSON Lines); ``.csv`` (a ``perturbed_answer`` cell holds a JSON list);
``.parquet``; or a directory written by ``datasets.save_to_disk``. Every record is validated,
and any failure is one :class:`DataError` line naming the file, the line (line-based formats,
1-based) or record (0-based index), and the field. Overlap between forget and retain sets is
reported by count only: record text never reaches a log.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from forgetkit.data.records import RECORD_TYPES, REQUIRED_FIELDS, FieldMap, QARecord, TextRecord
from forgetkit.errors import ConfigError, DataError

log = logging.getLogger("forgetkit")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# (raw row, position kwargs for DataError)
Row = tuple[object, dict]


def read_records(
    path: str | Path,
    kind: str = "qa",
    field_map: FieldMap | None = None,
    split: str | None = None,
) -> list[QARecord] | list[TextRecord]:
    """Read and validate every record of ``path`` as ``kind`` (``qa`` or ``text``)."""
    if kind not in RECORD_TYPES:
        raise ConfigError(f"unknown record kind '{kind}' (known: {', '.join(RECORD_TYPES)})")
    path = Path(path)
    field_map = field_map or FieldMap()
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        rows = _datasets_rows(path, split)
    elif path.suffix == ".jsonl":
        rows = _jsonl_rows(path, _read_text(path))
    elif path.suffix == ".json":
        rows = _json_rows(path)
    elif path.suffix == ".csv":
        rows = _csv_rows(path)
    elif path.suffix == ".parquet":
        rows = _parquet_rows(path)
    else:
        raise DataError(path, f"unsupported file type '{path.suffix}' (supported: {', '.join(SUFFIXES)}, "
                              "or a datasets directory)")
    records = [_to_record(path, row, where, kind, field_map, i) for i, (row, where) in enumerate(rows)]
    if not records:
        raise DataError(path, "no records")
    seen: dict[str, int] = {}
    for i, (rec, (_, where)) in enumerate(zip(records, rows, strict=True)):
        if rec.id in seen:
            raise DataError(path, f"duplicate id '{rec.id}' (first at index {seen[rec.id]})", **where, field="id")
        seen[rec.id] = i
    return records


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, "invalid UTF-8", line=line) from None


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=n) from None
        rows.append((obj, {"line": n}))
    return rows


def _json_rows(path: Path) -> list[Row]:
    text = _read_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # TOFU's .json files hold one object per line
            return _jsonl_rows(path, text)
        raise DataError(path, f"malformed JSON: {exc.msg}", line=exc.lineno) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict):  # columns: {"question": [...], "answer": [...]}
        lengths = {len(v) for v in doc.values() if isinstance(v, list)}
        if len(lengths) != 1 or not all(isinstance(v, list) for v in doc.values()):
            raise DataError(path, "expected a list of records, or a mapping of equal-length columns")
        n = lengths.pop()
        doc = [{k: v[i] for k, v in doc.items()} for i in range(n)]
    if not isinstance(doc, list):
        raise DataError(path, f"expected a list of records, got {type(doc).__name__}")
    return [(obj, {"record": i}) for i, obj in enumerate(doc)]


def _csv_rows(path: Path) -> list[Row]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    rows = []
    for row in reader:
        where = {"line": reader.line_num}
        if None in row:
            raise DataError(path, "more cells than header columns", **where)
        if "perturbed_answer" in row and row["perturbed_answer"].lstrip().startswith("["):
            try:
                row["perturbed_answer"] = json.loads(row["perturbed_answer"])
            except json.JSONDecodeError as exc:
                raise DataError(path, f"malformed JSON list: {exc.msg}", **where, field="perturbed_answer") from None
        rows.append(({k: (v if v != "" else None) for k, v in row.items()}, where))
    return rows


def _parquet_rows(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})") from None
    return [(row, {"record": i}) for i, row in enumerate(table.to_pylist())]


def _datasets_rows(path: Path, split: str | None) -> list[Row]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(path, "directory is not a datasets directory (saved by save_to_disk)") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(path, f"choose a split with --split (available: {', '.join(ds)})")
        ds = ds[split]
    return [(row, {"record": i}) for i, row in enumerate(ds)]


def _to_record(path: Path, row: object, where: dict, kind: str, field_map: FieldMap, index: int):
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", **where)
    cls = RECORD_TYPES[kind]
    values: dict = {}
    for name in cls.__dataclass_fields__:
        column = field_map.source(name)
        value = row.get(column)
        if name in REQUIRED_FIELDS[kind]:
            if value is None:
                raise DataError(path, "missing", **where, field=column)
            values[name] = _string(path, value, where, column)
            if not values[name].strip():
                raise DataError(path, "empty", **where, field=column)
        elif value is None:
            continue
        elif name == "id":
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise DataError(path, f"expected a string or integer, got {type(value).__name__}", **where,
                                field=column)
            values[name] = str(value)
        elif name == "perturbed_answer":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise DataError(path, f"expected a list of strings, got {type(value).__name__}", **where,
                                field=column)
            values[name] = tuple(_string(path, v, where, f"{column}[{j}]") for j, v in enumerate(items))
        else:
            values[name] = _string(path, value, where, column)
    values.setdefault("id", f"{path.stem}-{index}")
    return cls(**values)


def _string(path: Path, value: object, where: dict, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", **where, field=field)
    return value


def _content_key(record: QARecord | TextRecord) -> str:
    text = record.text if isinstance(record, TextRecord) else record.question + "\x1f" + record.answer
    return " ".join(text.lower().split())


def find_overlap(forget: list, retain: list) -> list[int]:
    """Indices into ``retain`` of records whose content also appears in ``forget``."""
    forget_keys = {_content_key(r) for r in forget}
    return [i for i, r in enumerate(retain) if _content_key(r) in forget_keys]


def remove_overlap(forget: list, retain: list, *, dedupe: bool) -> tuple[list, int]:
    """Warn (by count, never text) about retain records also in forget; drop them if ``dedupe``."""
    overlap = find_overlap(forget, retain)
    if not overlap:
        return retain, 0
    if dedupe:
        drop = set(overlap)
        log.warning("dropped %d retain record(s) that also appear in the forget set", len(overlap))
        return [r for i, r in enumerate(retain) if i not in drop], len(overlap)
    log.warning("%d retain record(s) also appear in the forget set; pass --dedupe to drop them from retain",
                len(overlap))
    return retain, len(overlap)

