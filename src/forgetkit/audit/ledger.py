"""The audit ledger: every unlearning request in a local SQLite database (``forgetkit audit``).

One row per request, written in one transaction (SQLite's atomic commit: a process killed
mid-write leaves the previous state, never half a record), in WAL mode with a busy timeout so
concurrent requests queue instead of failing. A row holds ids, times, hashes, counts, the method,
its config, the guarantee (``exact``, ``certified`` with ε and δ, or ``empirical audit``), the
evaluation's headline numbers and the empirical ε lower bound of the best membership-inference
attack: never a record's text (the request arrives as ``audit.json``, which holds none).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from forgetkit.checks import output_path
from forgetkit.errors import ForgetkitError
from forgetkit.registry import CERTIFIED, EMPIRICAL, EXACT

log = logging.getLogger("forgetkit")
LEDGER_FILE = "ledger.sqlite"
COLUMNS = (
    ("seq", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("id", "TEXT UNIQUE NOT NULL"), ("recorded", "TEXT NOT NULL"),
    ("tool", "TEXT"), ("method", "TEXT NOT NULL"),
    ("request_kind", "TEXT"), ("guarantee", "TEXT NOT NULL"), ("epsilon", "REAL"), ("delta", "REAL"),
    ("model_hash", "TEXT"), ("adapter_in_hash", "TEXT"), ("output_hash", "TEXT"), ("forget_hash", "TEXT"),
    ("forget_count", "INTEGER"), ("kept_hash", "TEXT"), ("kept_count", "INTEGER"), ("config_hash", "TEXT"),
    ("config_json", "TEXT"), ("metrics_json", "TEXT"), ("empirical_epsilon", "REAL"), ("started", "TEXT"),
    ("ended", "TEXT"), ("output_path", "TEXT"),
)
SCHEMA = f"CREATE TABLE IF NOT EXISTS requests ({', '.join(f'{n} {t}' for n, t in COLUMNS)})"
# The files a request's output was exported to and served as (``forgetkit export --gguf``): the deletion request
# tied to the file a deployer serves. A ledger written before this table existed gets it on its next write.
EXPORT_COLUMNS = (("seq", "INTEGER PRIMARY KEY AUTOINCREMENT"), ("request_id", "TEXT NOT NULL"),
                  ("recorded", "TEXT NOT NULL"), ("path", "TEXT NOT NULL"), ("hash", "TEXT NOT NULL"),
                  ("format", "TEXT NOT NULL"), ("bytes", "INTEGER"))
EXPORT_SCHEMA = f"CREATE TABLE IF NOT EXISTS exports ({', '.join(f'{n} {t}' for n, t in EXPORT_COLUMNS)})"


LOCK_WAIT_S = 60.0  # how long a request waits for a ledger another process holds


@contextmanager
def _open(path: Path, read_only: bool) -> Iterator[sqlite3.Connection]:
    """A connection to a ledger that exists: an SQLite database that is empty or has the requests table."""
    if path.is_dir():
        raise ForgetkitError(f"{path}: the ledger is a directory; give a file (--ledger PATH)")
    try:
        conn = (sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=LOCK_WAIT_S,
                                isolation_level=None) if read_only
                else sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None))
    except sqlite3.DatabaseError as exc:
        raise ForgetkitError(f"{path}: cannot open the ledger ({exc})") from None
    try:
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.OperationalError as exc:
            raise _ledger_error(path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise ForgetkitError(f"{path}: not an SQLite database, so not a forgetkit ledger ({exc})") from None
        if tables and "requests" not in tables:
            raise ForgetkitError(f"{path}: an SQLite database with no 'requests' table: not a forgetkit ledger")
        yield conn
    finally:
        conn.close()


def _ledger_error(path: Path, exc: sqlite3.Error) -> ForgetkitError:
    if "locked" in str(exc) or "busy" in str(exc):
        return ForgetkitError(f"{path}: the ledger is locked by another process (waited {LOCK_WAIT_S:g} s); "
                              "retry when it has finished")
    return ForgetkitError(f"{path}: the ledger cannot be used ({exc})")


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection for appending: the ledger is created (WAL mode, the requests table) when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _open(path, read_only=False) as conn:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(SCHEMA)
            conn.execute(EXPORT_SCHEMA)
        except sqlite3.OperationalError as exc:
            raise _ledger_error(path, exc) from None
        yield conn


def check_ledger(path: str | Path) -> Path:
    """Before a request does any work: its ledger is a forgetkit ledger not held by another process,
    or does not exist yet and can be created. Nothing is written."""
    path = Path(path)
    if not path.exists():
        return output_path(path, "the ledger", kind="file")
    with _open(path, read_only=False) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
        except sqlite3.OperationalError as exc:
            raise _ledger_error(path, exc) from None
    return path


def guarantee_of(audit: dict) -> tuple[str, float | None, float | None]:
    """The guarantee of a request, (kind, ε, δ): certified when it carries a certificate (its ε and δ), else what
    its audit record states (``forgetkit.request.finish`` takes it from the registry), else empirical."""
    certificate = audit.get("certificate")
    if certificate:
        return CERTIFIED, certificate.get("epsilon"), certificate.get("delta")
    kind = audit.get("guarantee", EMPIRICAL)
    return (EMPIRICAL if kind == CERTIFIED else kind), None, None


def row_from_audit(audit: dict) -> dict:
    """The ledger row of an ``audit.json`` record (``forgetkit unlearn`` or an editor)."""
    kind, epsilon, delta = guarantee_of(audit)
    removed = audit.get("forget") or {}
    kept = audit.get("retain") or {}
    metrics = audit.get("metrics") or {}
    empirical = (metrics.get("empirical_epsilon") or {}).get("epsilon") if isinstance(metrics, dict) else None
    now = datetime.now(timezone.utc)
    return {
        "id": f"{now:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}", "recorded": now.isoformat(timespec="seconds"),
        "tool": audit.get("tool"), "method": audit["method"], "request_kind": audit.get("request", "removal"),
        "guarantee": kind, "epsilon": epsilon, "delta": delta,
        "model_hash": (audit.get("model") or {}).get("hash"),
        "adapter_in_hash": (audit.get("adapter_in") or {}).get("hash"),
        "output_hash": (audit.get("output") or {}).get("hash"),
        "forget_hash": removed.get("hash"), "forget_count": removed.get("count"),
        "kept_hash": kept.get("hash"), "kept_count": kept.get("count"), "config_hash": audit.get("config_hash"),
        "config_json": json.dumps(audit.get("config"), sort_keys=True),
        "metrics_json": json.dumps(_headline(metrics, audit.get("criterion")), sort_keys=True),
        "empirical_epsilon": empirical,
        "started": audit.get("started"), "ended": audit.get("ended"),
        "output_path": (audit.get("output") or {}).get("path"),
    }


def _headline(metrics: dict, criterion: dict | None = None) -> dict:
    """The evaluation numbers a compliance reader needs (aggregates only), and with ``--until`` whether the forget
    set ended indistinguishable from never-seen data (False: not a finished deletion)."""
    forget = metrics.get("forget") or {}
    auc = metrics.get("mia_auc")
    headline = {"forget_quality": metrics.get("forget_quality"), "model_utility": metrics.get("model_utility"),
                "forget_probability": forget.get("probability"), "forget_rouge_l": forget.get("rougeL_recall"),
                "mia_auc": auc, "success": metrics.get("success"),
                "certified_removal": metrics.get("certified_removal")}
    if criterion and "reached" in criterion:
        headline["until_indistinguishable"] = criterion["reached"]
    return headline


def record(ledger: str | Path, audit: dict) -> str:
    """Append the request of ``audit`` to the ledger in one transaction; return its id."""
    row = row_from_audit(audit)
    _insert(Path(ledger), "requests", COLUMNS, row)
    return row["id"]


def record_export(ledger: str | Path, request_id: str, path: Path, file_hash: str, kind: str) -> None:
    """Tie the file ``path`` (fingerprint ``file_hash``; ``kind``: ``gguf f16`` …) to the recorded request
    ``request_id`` whose output it was made from, in one transaction."""
    row = {"request_id": request_id, "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "path": str(path.resolve()), "hash": file_hash, "format": kind, "bytes": path.stat().st_size}
    _insert(Path(ledger), "exports", EXPORT_COLUMNS, row)


def _insert(ledger: Path, table: str, columns: tuple, row: dict) -> None:
    names = [n for n, _ in columns if n != "seq"]
    with _connect(ledger) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise _ledger_error(Path(ledger), exc) from None
        try:
            conn.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                         [row[n] for n in names])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def write_request(out: Path, audit: dict, summary: dict, ledger: Path) -> None:
    """Finish a request: ``OUT/audit.json``, its ledger row (the id goes into the summary), then
    ``OUT/summary.json``, each written atomically."""
    from forgetkit.io import write_json

    write_json(out / "audit.json", audit)
    summary["ledger"] = {"path": str(ledger), "id": record(ledger, audit)}
    write_json(out / "summary.json", summary)


def entries(ledger: str | Path) -> list[dict]:
    """Every recorded request, oldest first, each with the files its output was exported to (``exports``)."""
    path = Path(ledger)
    if not path.is_file():
        raise ForgetkitError(f"{path}: no ledger here (it is created by the first forgetkit unlearn request)")
    rows = _select(path, "SELECT * FROM requests ORDER BY seq")
    exports = _select(path, "SELECT * FROM exports ORDER BY seq")
    for row in rows:
        row["exports"] = [x for x in exports if x["request_id"] == row["id"]]
    return rows


def _select(path: Path, query: str) -> list[dict]:
    with _open(path, read_only=True) as conn:
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(query)]
        except sqlite3.OperationalError as exc:  # an empty database, or one from before the table: none yet
            if "no such table" in str(exc):
                return []
            raise _ledger_error(path, exc) from None


def entry(ledger: str | Path, request_id: str) -> dict:
    found = [e for e in entries(ledger) if e["id"] == request_id or e["id"].endswith(request_id)]
    if len(found) != 1:
        raise ForgetkitError(f"{ledger}: {'no' if not found else 'more than one'} request with id '{request_id}'")
    return found[0]


def file_fingerprint(path: Path) -> str:
    """The fingerprint of one file's bytes (an exported GGUF), read in 1 MiB chunks."""
    from forgetkit.io import fingerprint

    with path.open("rb") as f:
        return fingerprint(iter(lambda: f.read(1 << 20), b""))


def verify(e: dict) -> dict:
    """Recompute the fingerprint of a recorded request's output: ``{path, recorded, now, matches}`` (``now`` is
    None when the output is gone). The files fingerprinted are the ones the request hashed: the pattern its
    ``audit.json`` (beside the output) records, else the default ones (``forgetkit.io.dir_hash``)."""
    from forgetkit.io import dir_hash

    if not e.get("output_path") or not e.get("output_hash"):
        raise ForgetkitError(f"request {e['id']}: the ledger records no output fingerprint to verify")
    out = Path(e["output_path"])
    result = {"path": str(out), "recorded": e["output_hash"], "now": None, "matches": False}
    if not out.is_dir():
        return result
    pattern = None
    try:
        audit = json.loads((out.parent / "audit.json").read_text(encoding="utf-8"))
        if (audit.get("output") or {}).get("hash") == e["output_hash"]:
            pattern = audit["output"].get("pattern")
    except (OSError, ValueError, AttributeError):
        pass  # no readable audit.json beside it: the default files
    result["now"] = dir_hash(out, pattern)
    result["matches"] = result["now"] == e["output_hash"]
    return result


def request_of(output: Path, ledger: str | Path | None = None) -> tuple[Path, dict] | None:
    """The ledger and the recorded request whose output is the directory ``output`` (``OUT/adapter`` of
    ``forgetkit unlearn``: ``OUT/summary.json`` names its ledger and id; ``ledger`` overrides where the ledger
    is), if the directory still has the fingerprint recorded for it; None when ``output`` is no request's
    output, or no longer its recorded state (said in a warning: what is exported from it is not the request's)."""
    summary_file = output.parent / "summary.json"
    try:
        recorded = json.loads(summary_file.read_text(encoding="utf-8"))["ledger"]
        path, request_id = Path(ledger or recorded["path"]), recorded["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # not the output of a recorded request
    if ledger is None and not path.is_file():
        log.warning("%s: the ledger %s names is gone: the export is not recorded", output, summary_file)
        return None
    e = entry(path, request_id)
    check = verify({**e, "output_path": str(output)})
    if not check["matches"]:
        log.warning(
            "%s: no longer the output request %s recorded (fingerprint %s, recorded %s): the export is not recorded "
            "in its ledger", output, e["id"], check["now"], check["recorded"])
        return None
    return path, e


def verify_exports(e: dict) -> list[dict]:
    """Recompute each exported file's fingerprint: ``{path, recorded, now, matches}`` (``now`` None: gone)."""
    checked = []
    for x in e.get("exports", []):
        path = Path(x["path"])
        now = file_fingerprint(path) if path.is_file() else None
        checked.append({"path": x["path"], "recorded": x["hash"], "now": now, "matches": now == x["hash"]})
    return checked


def format_entry(e: dict) -> str:
    """One request, in words a compliance officer can read."""
    metrics = json.loads(e["metrics_json"] or "{}")
    guarantee = {EXACT: "exact unlearning: the model was retrained without the records (by construction, as if "
                          "never trained on them)",
                 CERTIFIED: f"certified removal with (ε = {e['epsilon']}, δ = {e['delta']})",
                 EMPIRICAL: "empirical: approximate unlearning, checked by evaluation (no formal guarantee)"}
    lines = [
        f"Request {e['id']} (recorded {e['recorded']})",
        f"  what was removed: {e['forget_count']} {e['request_kind']} record(s), content hash {e['forget_hash']} "
        "(the text is not stored)",
        f"  how: method '{e['method']}' ({e['tool']}), config hash {e['config_hash']}, "
        f"from {e['started']} to {e['ended']}",
        f"  model: {e['model_hash']}" + (f" with adapter {e['adapter_in_hash']}" if e["adapter_in_hash"] else "")
        + f"  ->  result {e['output_hash']}" + (f" ({e['output_path']})" if e["output_path"] else ""),
        f"  kept data: {e['kept_count']} record(s), hash {e['kept_hash']}",
        f"  guarantee: {guarantee[e['guarantee']]}",
    ]
    for x in e.get("exports", []):
        lines.append(f"  served as: {x['path']} ({x['format']}, {x['bytes']:,} bytes, fingerprint {x['hash']}, "
                     f"exported {x['recorded']})")
    if any(v is not None for v in metrics.values()):
        checks = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if v is not None)
        lines.append(f"  checks: {checks}")
        if e["empirical_epsilon"] is not None:
            lines.append(f"  empirical ε lower bound (best membership-inference attack, 95 %): "
                         f"{e['empirical_epsilon']:.3f}")
    else:
        lines.append("  checks: none recorded (run with --eval to record them)")
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)
