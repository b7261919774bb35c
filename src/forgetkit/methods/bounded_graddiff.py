"""Bounded GradDiff: gradient difference trained through sine-bounded MLP adapters (arXiv 2509.24166)."""

from __future__ import annotations

from dataclasses import dataclass

from forgetkit.methods.base import register
from forgetkit.methods.graddiff import GradDiff


@register
@dataclass
class BoundedGradDiff(GradDiff):
    name = "bounded_graddiff"
    forget_term = "neg_forget_ce"
    summary = "GradDiff through sine-bounded MLP adapters, |ΔW_ij| ≤ α/(r·√d_in) (adapter=sine)"
    default_adapter = "sine"
