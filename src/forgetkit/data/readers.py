"""Reading forget / retain / holdout / utility sets from the formats people keep them in.

One entry point, :func:`read_records`, picks the reader by path: ``.jsonl``; ``.json`` (a list
of objects, ``{"data": [...]}``, a dict of equal-length columns, or TOFU's released ``.json``
files, which are JSON Lines); ``.csv`` (values are strings; a ``perturbed_answer`` cell that
starts with ``[`` is read as a JSON list, any other cell as a one-element list, never split on
a separator); ``.parquet``; or a directory written by ``datasets.save_to_disk``.

Every record is validated, and any failure is one :class:`DataError` line naming the file, the
line (line-based formats, 1-based) or record (0-based index), and the field. Overlap between
forget and retain sets is reported by count only: record text never reaches a log.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from forgetkit.data.records import RECORD_TYPES, REQUIRED_FIELDS, FieldMap, QARecord, TextRecord
from forgetkit.errors import ConfigError, DataError, ForgetkitError, first_line

log = logging.getLogger("forgetkit")
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# A raw row and its position as DataError keywords: {"line": n} or {"record": i}.
Row = tuple[object, dict]


def read_records(
    path: str | Path,
    kind: str = "qa",
    field_map: FieldMap | None = None,
    split: str | None = None,
) -> list[QARecord] | list[TextRecord]:
    """Read and validate every record of ``path`` as ``kind`` (``qa`` or ``text``).

    ``field_map`` names the user's columns for our fields; ``split`` picks the split of a saved
    ``DatasetDict``. Raises :class:`DataError` for any unreadable file or invalid record.
    """
    if kind not in RECORD_TYPES:
        raise ConfigError(f"unknown record kind '{kind}' (known: {', '.join(RECORD_TYPES)})")
    path = Path(path)
    field_map = field_map or FieldMap()
    return _records(path, _read_rows(path, field_map, split), kind, field_map)


def read_grouped(path: str | Path, group: str | None, field_map: FieldMap | None = None,
                 split: str | None = None) -> tuple[list[QARecord], list[str], list[dict]]:
    """The QA records of ``path`` (as :func:`read_records` reads them), each one's value of the field ``group``
    (the author, person or subject its facts are about: a string or an integer, never blank; all empty when
    ``group`` is None) and each one's position (``{"line": n}`` or ``{"record": i}``) for errors."""
    path = Path(path)
    field_map = field_map or FieldMap()
    rows = _read_rows(path, field_map, split)
    records = _records(path, rows, "qa", field_map)
    groups = []
    for row, where in rows:
        value = row.get(group) if group else ""
        if group and (isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip()):
            problem = "missing" if value is None else f"expected a non-empty string or integer, got {value!r}"
            raise DataError(path, f"{problem} (the grouping field)", **where, field=group)
        groups.append(str(value).strip())
    return records, groups, [where for _, where in rows]


def _records(path: Path, rows: list[Row], kind: str, field_map: FieldMap) -> list:
    """Every row as a validated record of ``kind``, with ids unique."""
    records = [_to_record(path, row, where, kind, field_map, i) for i, (row, where) in enumerate(rows)]
    if not records:
        raise DataError(path, "no records")
    _check_unique_ids(path, records, [where for _, where in rows])
    return records


def _read_rows(path: Path, field_map: FieldMap, split: str | None) -> list[Row]:
    """The raw rows of ``path`` with their positions, by the reader its type calls for."""
    if not path.exists():
        raise DataError(path, "file not found")
    if path.is_dir():
        return _datasets_rows(path, split)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_rows(path, _read_text(path))
    if suffix == ".json":
        return _json_rows(path)
    if suffix == ".csv":
        return _csv_rows(path, field_map.source("perturbed_answer"))
    if suffix == ".parquet":
        return _parquet_rows(path)
    raise DataError(path, f"unsupported file type '{path.suffix}' (supported: {', '.join(SUFFIXES)}, "
                          "or a datasets directory)")


def _read_text(path: Path) -> str:
    """The file as text; invalid UTF-8 is reported at the line holding the bad bytes."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(path, "invalid UTF-8", line=line) from None
    return text.removeprefix("\ufeff")  # editors on Windows add a byte-order mark


def jsonl_rows(path: Path) -> list[Row]:
    """The JSON values of a JSON Lines file with their line numbers (``{"line": n}``)."""
    return _jsonl_rows(path, _read_text(path))


def _jsonl_rows(path: Path, text: str) -> list[Row]:
    """One JSON value per non-blank line."""
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and friends, which are not line ends here.
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=n) from None
        rows.append((obj, {"line": n}))
    return rows


def _json_rows(path: Path) -> list[Row]:
    """A JSON document of records in any of the accepted layouts, or JSON Lines named ``.json``."""
    text = _read_text(path)
    if not text.strip():
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # TOFU's .json files hold one object per line
            return _jsonl_rows(path, text)
        raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    if isinstance(doc, dict) and isinstance(doc.get("data"), list):
        doc = doc["data"]
    if isinstance(doc, dict):
        if doc and all(isinstance(v, list) for v in doc.values()):
            return _column_rows(path, doc)
        # A single object: a one-line JSON Lines file, as TOFU would write a one-record set.
        return [(doc, {"line": 1} if "\n" not in text.strip() else {"record": 0})]
    if not isinstance(doc, list):
        raise DataError(path, f"expected a list of records, got {type(doc).__name__}")
    return [(obj, {"record": i}) for i, obj in enumerate(doc)]


def _column_rows(path: Path, columns: dict[str, list]) -> list[Row]:
    """Rows of a columnar document: ``{"question": [...], "answer": [...]}``."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        sizes = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise DataError(path, f"columns differ in length ({sizes})")
    n = next(iter(lengths.values()))
    return [({k: v[i] for k, v in columns.items()}, {"record": i}) for i in range(n)]


def _csv_rows(path: Path, perturbed_column: str) -> list[Row]:
    """Rows of a CSV file with a header; each row's position is the physical line it starts on."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header: list[str] | None = None
    rows = []
    end = 0  # the last physical line the reader has consumed
    for cells in reader:
        start, end = end + 1, reader.line_num
        if not cells:  # a blank line
            continue
        if header is None:
            header = cells
            continue
        where = {"line": start}
        if len(cells) > len(header):
            raise DataError(path, f"{len(cells)} cells but {len(header)} header columns", **where)
        # A short row lacks its last columns; None makes them "missing" rather than "empty".
        row: dict = dict(zip(header, cells + [None] * (len(header) - len(cells)), strict=True))
        cell = row.get(perturbed_column)
        if isinstance(cell, str) and cell.lstrip().startswith("["):
            try:
                row[perturbed_column] = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"malformed JSON list: {exc.msg}", **where,
                                field=perturbed_column) from None
        rows.append((row, where))
    return rows


def _parquet_rows(path: Path) -> list[Row]:
    """Rows of a Parquet file, read through pyarrow."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(path, f"not a readable Parquet file ({first_line(exc)})") from None
    return [(row, {"record": i}) for i, row in enumerate(table.to_pylist())]


def _datasets_rows(path: Path, split: str | None) -> list[Row]:
    """Rows of a directory saved by ``datasets``; a ``DatasetDict`` needs ``split``."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError:
        raise DataError(path, "directory is not a datasets directory (saved by save_to_disk)") from None
    if isinstance(ds, datasets.DatasetDict):
        available = ", ".join(ds)
        if split is None:
            raise DataError(path, f"holds several splits; choose one with --split (available: {available})")
        if split not in ds:
            raise DataError(path, f"no split '{split}' (available: {available})")
        ds = ds[split]
    return [(row, {"record": i}) for i, row in enumerate(ds)]


def _to_record(path: Path, row: object, where: dict, kind: str, field_map: FieldMap, index: int):
    """Validate one raw row and build the record of ``kind``; ``index`` names it when it has no id."""
    if not isinstance(row, dict):
        raise DataError(path, f"expected a JSON object, got {type(row).__name__}", **where)
    cls = RECORD_TYPES[kind]
    values: dict = {}
    for name in cls.__dataclass_fields__:
        column = field_map.source(name)
        value = row.get(column)
        if name in REQUIRED_FIELDS[kind]:
            values[name] = _required_string(path, value, where, column)
        elif value is not None and value != "":  # an empty optional cell (CSV) means absent
            values[name] = _optional_value(path, name, value, where, column)
    values.setdefault("id", f"{path.stem}-{index}")
    return cls(**values)


def _required_string(path: Path, value: object, where: dict, column: str) -> str:
    """A required field's value: present, a string, and not blank."""
    if value is None:
        raise DataError(path, "missing", **where, field=column)
    text = _string(path, value, where, column)
    if not text.strip():
        raise DataError(path, "empty", **where, field=column)
    return text


def _optional_value(path: Path, name: str, value: object, where: dict, column: str) -> object:
    """An optional field's value in its record type: ids as strings, perturbed answers as a tuple."""
    if name == "id":
        # bool is an int subclass, but True is no one's id.
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise DataError(path, f"expected a string or integer, got {type(value).__name__}", **where,
                            field=column)
        return str(value)
    if name == "perturbed_answer":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise DataError(path, f"expected a list of strings, got {type(value).__name__}", **where,
                            field=column)
        return tuple(_string(path, v, where, f"{column}[{j}]") for j, v in enumerate(items))
    return _string(path, value, where, column)


def _string(path: Path, value: object, where: dict, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(path, f"expected a string, got {type(value).__name__}", **where, field=field)
    return value


def _check_unique_ids(path: Path, records: list, positions: list[dict]) -> None:
    """Raise at the second record of any id that occurs twice."""
    seen: dict[str, dict] = {}
    for rec, where in zip(records, positions, strict=True):
        if rec.id in seen:
            first = ", ".join(f"{k} {v}" for k, v in seen[rec.id].items())
            raise DataError(path, f"duplicate id '{rec.id}' (first at {first})", **where, field="id")
        seen[rec.id] = where


def content_key(record: QARecord | TextRecord) -> str:
    """What makes two records the same content: their text, lower-cased, whitespace collapsed."""
    text = record.text if isinstance(record, TextRecord) else record.question + "\x1f" + record.answer
    return " ".join(text.lower().split())


def find_overlap(forget: list, retain: list) -> list[int]:
    """Indices into ``retain`` of records whose content also appears in ``forget``."""
    forget_keys = {content_key(r) for r in forget}
    return [i for i, r in enumerate(retain) if content_key(r) in forget_keys]


def refuse_overlap(forget: list, other: list | None, role: str, *, source: object = None,
                   allow: bool = False) -> int:
    """Refuse a ``role`` set (retain, calibration, holdout) that holds forget records, by content (text,
    case and spacing aside): one line naming the first such record's id and the count, so that a method never
    trains on what it is asked to forget, nor measures against it. ``allow`` (``--allow-overlap``) lets a user
    who means it go on; the overlap is then logged by count. Returns the overlap's size."""
    overlap = find_overlap(forget, other or [])
    if not overlap:
        return 0
    if not allow:
        first = other[overlap[0]]
        raise ForgetkitError(f"{source or f'the {role} set'}: {len(overlap)} {role} record(s) are also in the forget "
                             f"set (the first: record '{first.id}', field id); remove them (forgetkit data check "
                             "--dedupe), or pass --allow-overlap if you mean it")
    log.warning("%d %s record(s) also appear in the forget set (--allow-overlap)", len(overlap), role)
    return len(overlap)


def remove_overlap(forget: list, retain: list, *, dedupe: bool) -> tuple[list, int]:
    """Warn (by count, never text) about retain records also in forget; drop them if ``dedupe``.

    Returns the retain set (without the overlap when ``dedupe``) and the overlap count.
    """
    overlap = find_overlap(forget, retain)
    if not overlap:
        return retain, 0
    if dedupe:
        drop = set(overlap)
        log.warning("dropped %d record(s) that also appear in the forget set from retain", len(overlap))
        return [r for i, r in enumerate(retain) if i not in drop], len(overlap)
    log.warning("%d retain record(s) also appear in the forget set; pass --dedupe to drop them from retain",
                len(overlap))
    return retain, len(overlap)
