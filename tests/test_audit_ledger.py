"""The audit ledger: one transactional row per request, concurrent writers, a kill mid-write, no forget text."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from forgetkit.audit.ledger import entries, entry, format_entry, guarantee_of, record
from forgetkit.errors import ForgetkitError
from forgetkit.unlearn import UNLEARNERS  # every unlearner registered


def _audit(method: str = "npo", **extra) -> dict:
    """An audit record as forgetkit.request.finish writes it: the guarantee is the registry's for the method."""
    return {"tool": "forgetkit unlearn", "method": method, "guarantee": UNLEARNERS[method].guarantee,
            "config": {"method": method}, "config_hash": "c0ffee",
            "model": {"path": "m", "hash": "aaaa"}, "adapter_in": None, "output": {"path": "o", "hash": "bbbb"},
            "forget": {"file": "f.jsonl", "hash": "ffff", "count": 3}, "retain": {"hash": "rrrr", "count": 7},
            "started": "2026-11-23T10:00:00+00:00", "ended": "2026-11-23T10:01:00+00:00",
            "metrics": {"forget_quality": 0.5, "model_utility": 0.4, "forget": {"probability": 0.1},
                        "mia_auc": {"loss": 0.55}, "empirical_epsilon": {"epsilon": 0.25}}, **extra}


def test_guarantee_kinds():
    assert guarantee_of(_audit("retrain")) == ("exact", None, None)
    assert guarantee_of(_audit("npo")) == ("empirical audit", None, None)
    assert guarantee_of(_audit("npo", certificate={"epsilon": 1.0, "delta": 1e-5})) == ("certified", 1.0, 1e-5)


def test_record_list_show(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    first = record(ledger, _audit("npo"))
    second = record(ledger, _audit("retrain"))
    rows = entries(ledger)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["forget_hash"] == "ffff" and rows[0]["forget_count"] == 3 and rows[0]["empirical_epsilon"] == 0.25
    text = format_entry(entry(ledger, second[-8:]))
    assert "exact unlearning" in text and "3 removal record(s), content hash ffff" in text
    assert "empirical ε lower bound" in format_entry(rows[0])
    with pytest.raises(ForgetkitError, match="no request"):
        entry(ledger, "nope")
    with pytest.raises(ForgetkitError, match="no ledger"):
        entries(tmp_path / "missing.sqlite")


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stderr=subprocess.PIPE)


def test_concurrent_requests_all_land(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    code = f"""
        from forgetkit.audit.ledger import record
        for i in range(15):
            record({str(ledger)!r}, {{"method": "ga", "forget": {{"hash": "h", "count": i}}}})
    """
    procs = [_python(code) for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()
    rows = entries(ledger)
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    with sqlite3.connect(ledger) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_kill_mid_write_leaves_no_half_record(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    record(ledger, _audit("npo"))
    code = f"""
        import os, signal
        import forgetkit.audit.ledger as ledger
        real = ledger._connect

        class Dying:
            def __init__(self, conn):
                self.conn = conn
            def execute(self, sql, *args):
                if sql == "COMMIT":  # the row is written inside the transaction: die before it commits
                    os.kill(os.getpid(), signal.SIGKILL)
                return self.conn.execute(sql, *args)

        from contextlib import contextmanager

        @contextmanager
        def dying(path):
            with real(path) as conn:
                yield Dying(conn)

        ledger._connect = dying
        ledger.record({str(ledger)!r}, {{"method": "ga", "forget": {{"hash": "h", "count": 1}}}})
    """
    p = _python(code)
    assert p.wait(timeout=120) == -9
    rows = entries(ledger)
    assert [r["method"] for r in rows] == ["npo"]
    with sqlite3.connect(ledger) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    record(ledger, _audit("kl"))
    assert [r["method"] for r in entries(ledger)] == ["npo", "kl"]


def test_unlearn_records_the_request_and_audit_cli(unlearn_run, tmp_path, capsys):
    from forgetkit.cli import main

    ledger = tmp_path / "ledger.sqlite"
    out = tmp_path / "ga"
    assert main(["unlearn", "--run", str(unlearn_run), "--method", "ga", "train.epochs=1", "--out", str(out),
                 "--ledger", str(ledger), "--quiet"]) == 0
    (row,) = entries(ledger)
    audit = json.loads((out / "audit.json").read_text())
    assert row["output_hash"] == audit["output"]["hash"] and row["forget_hash"] == audit["forget"]["hash"]
    assert row["forget_count"] == audit["forget"]["count"] and row["guarantee"] == "empirical audit"
    capsys.readouterr()
    assert main(["audit", "list", "--ledger", str(ledger)]) == 0
    assert row["id"] in capsys.readouterr().out
    assert main(["audit", "show", row["id"], "--ledger", str(ledger)]) == 0
    shown = capsys.readouterr().out
    assert "method 'ga'" in shown and row["forget_hash"] in shown
    assert main(["audit", "export", "--json", "--ledger", str(ledger), "--out", str(tmp_path / "x.json")]) == 0
    assert json.loads((tmp_path / "x.json").read_text())[0]["id"] == row["id"]
    raw = ledger.read_bytes() + (tmp_path / "x.json").read_bytes() + shown.encode()
    for line in (unlearn_run / "benchmark" / "forget10.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert r["answer"].encode() not in raw and r["question"].encode() not in raw
    assert main(["audit", "show", "--ledger", str(ledger)]) == 2
