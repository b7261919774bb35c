"""Certified removal (Guo et al., 2020): the Newton step against exact retraining, and the certificate's arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from forgetkit.certified.convex_head import CertifiedHead, budget, fit, objective_gradient
from forgetkit.errors import ForgetkitError


def _data(n: int = 200, d: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True).clamp_min(1.0)  # ‖x‖ ≤ 1
    w_true = torch.randn(d, generator=g, dtype=torch.float64)
    y = torch.where(X @ w_true + 0.3 * torch.randn(n, generator=g, dtype=torch.float64) > 0, 1.0, -1.0)
    return X, y


def test_budget_arithmetic():
    c = math.sqrt(2 * math.log(1.5 / 1e-4))  # √(2 · 9.61581) = 4.38539
    assert budget(1.0, 1.0, 1e-4) == pytest.approx(1 / c)
    assert budget(2.0, 0.5, 1e-4) == pytest.approx(1 / c)
    assert budget(1.0, 1.0, 1e-4) == pytest.approx(0.228030, rel=1e-5)
    with pytest.raises(ForgetkitError):
        budget(1.0, 1.0, 1.5)


def test_fit_reaches_the_minimum():
    X, y = _data()
    b = torch.randn(5, dtype=torch.float64)
    w = fit(X, y, 1e-2, b)
    assert float(objective_gradient(w, X, y, 1e-2, b).norm()) < 1e-9


def test_newton_removal_matches_retraining_within_its_bound():
    X, y = _data()
    head = CertifiedHead(lam=1e-2, sigma=10.0, epsilon=1.0, seed=1).fit(X, y)
    rec = head.remove([3])
    assert rec["action"] == "newton"
    exact = fit(X[torch.arange(200) != 3], y[torch.arange(200) != 3], 1e-2, head.b)
    assert float((head.w - exact).norm()) < 1e-3 * float(exact.norm())
    assert rec["residual"] <= rec["residual_bound"]  # the gradient residual the certificate accounts for
    assert rec["spent"] == pytest.approx(rec["residual_bound"])


def test_budget_exhaustion_retrains():
    X, y = _data()
    head = CertifiedHead(lam=1e-3, sigma=1e-3, epsilon=0.1, seed=0).fit(X, y)  # a tiny budget
    rec = head.remove([0, 1, 2])
    assert rec["action"] == "retrained" and head.retrainings == 1 and head.spent == 0.0
    assert float(objective_gradient(head.w, head.X, head.y, head.lam, head.b).norm()) < 1e-9
    assert head.X.shape[0] == 197


def test_a_saved_head_continues_exactly_and_its_requests_enter_the_ledger(tmp_path):
    from forgetkit.audit.ledger import entries, format_entry, record

    X, y = _data()
    head = CertifiedHead(lam=1e-2, sigma=10.0, epsilon=1.0, seed=1).fit(X, y)
    first = head.remove([3])
    head.save(tmp_path / "head")
    again = CertifiedHead.load(tmp_path / "head")
    assert again.spent == head.spent and again.history == head.history and torch.equal(again.w, head.w)
    assert again.remove([0, 1]) == head.remove([0, 1])  # the same Newton step (or retraining, same noise)
    assert torch.equal(again.w, head.w)

    ledger = tmp_path / "ledger.sqlite"
    record(ledger, head.audit_record(first, removed_hash="abc123"))
    (row,) = entries(ledger)
    assert row["guarantee"] == "certified" and row["epsilon"] == 1.0 and row["delta"] == 1e-4
    assert row["forget_count"] == 1 and row["method"] == "certified_head"
    assert "newton" in format_entry(row)
    (tmp_path / "broken").mkdir()
    with pytest.raises(ForgetkitError, match="not a saved certified head"):
        CertifiedHead.load(tmp_path / "broken")
