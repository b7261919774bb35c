"""Certified removal for a logistic head on frozen features (Guo, Goldstein, Hannun, van der Maaten, ICML 2020).

Training minimises the perturbed, L2-regularised objective over n examples (labels ±1)

    L_b(w; D) = Σ_i ℓ(wᵀx_i, y_i) + (λn/2)‖w‖² + bᵀw,    ℓ(z, y) = log(1 + e^{−yz}),  b ~ N(0, σ²I),

to its minimum (Newton's method, float64). Removing a set R of examples takes one Newton step on
the objective without them,

    w⁻ = w* + H⁻¹Δ,   Δ = λ|R|·w* + Σ_{i∈R} ∇ℓ(w*ᵀx_i, y_i),   H = ∇²L(w*; D∖R),

whose gradient residual ‖∇L_b(w⁻; D∖R)‖ is at most γ·‖X‖₂·‖H⁻¹Δ‖·‖X H⁻¹Δ‖ (X: the remaining
features, γ = 1/4 bounds the Lipschitz constant of ℓ'' for the logistic loss; Guo et al., Cor. 1).
With b ~ N(0, σ²I), removals whose summed residual bounds stay within β = σε/c, c = √(2 ln(1.5/δ)),
are (ε, δ)-certified (Guo et al., Thm. 3 with Gaussian noise). Once a request would exceed the
budget, the head is retrained from scratch on the remaining data with fresh noise and the budget
starts again. Features must have ‖x‖ ≤ 1 for the worst-case bound; the data-dependent bound used
here holds for any features.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from forgetkit.config import config_hash
from forgetkit.errors import ForgetkitError
from forgetkit.io import fingerprint, write_json
from forgetkit.registry import CERTIFIED
from forgetkit.request import AuditRecord, Fingerprint, RecordSet, now

GAMMA_LOGISTIC = 0.25
TENSORS, STATE = "head.safetensors", "head.json"


def budget(sigma: float, epsilon: float, delta: float) -> float:
    """β = σε / √(2 ln(1.5/δ)): the gradient residual an (ε, δ) certificate allows in total."""
    if sigma <= 0 or epsilon <= 0 or not 0 < delta < 1:
        raise ForgetkitError("certified head: sigma and epsilon must be positive and delta in (0, 1)")
    return sigma * epsilon / math.sqrt(2 * math.log(1.5 / delta))


def _loss_terms(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ'(z) and ℓ''(z) per example at z = Xw."""
    z = X @ w
    s = torch.sigmoid(-y * z)
    return -y * s, s * (1 - s)


def objective_gradient(w, X, y, lam: float, b) -> torch.Tensor:
    d1, _ = _loss_terms(w, X, y)
    return X.T @ d1 + lam * X.shape[0] * w + b


def objective_hessian(w, X, y, lam: float) -> torch.Tensor:
    _, d2 = _loss_terms(w, X, y)
    return (X.T * d2) @ X + lam * X.shape[0] * torch.eye(X.shape[1], dtype=X.dtype)


def fit(X: torch.Tensor, y: torch.Tensor, lam: float, b: torch.Tensor, tol: float = 1e-12,
        max_iter: int = 100) -> torch.Tensor:
    """The minimiser of L_b (strictly convex for λ > 0) by Newton's method."""
    w = torch.zeros(X.shape[1], dtype=X.dtype)
    for _ in range(max_iter):
        g = objective_gradient(w, X, y, lam, b)
        if float(g.norm()) <= tol * max(1.0, X.shape[0]):
            return w
        w = w - torch.linalg.solve(objective_hessian(w, X, y, lam), g)
    raise ForgetkitError("certified head: Newton's method did not converge (raise lam)")


@dataclass
class CertifiedHead:
    """A binary logistic head with removal certificates; labels in {−1, +1}."""

    lam: float = 1e-3
    sigma: float = 1.0
    epsilon: float = 1.0
    delta: float = 1e-4
    seed: int = 0
    w: torch.Tensor | None = None
    spent: float = 0.0  # summed residual bounds since the last (re)training
    retrainings: int = 0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.lam <= 0:
            raise ForgetkitError("certified head: lam must be positive (the objective must be strongly convex)")
        self.budget = budget(self.sigma, self.epsilon, self.delta)
        self._draws = 0

    def _noise(self, d: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._draws)
        self._draws += 1
        return torch.randn(d, generator=generator, dtype=torch.float64) * self.sigma

    def fit(self, X: torch.Tensor, y: torch.Tensor) -> CertifiedHead:
        self.X, self.y = X.to(torch.float64), y.to(torch.float64)
        if not set(self.y.unique().tolist()) <= {-1.0, 1.0}:
            raise ForgetkitError("certified head: labels must be -1 or +1")
        self.b = self._noise(X.shape[1])
        self.w = fit(self.X, self.y, self.lam, self.b)
        self.spent = 0.0
        return self

    def remove(self, indices: list[int]) -> dict:
        """Remove the examples at ``indices`` (of the current training set): a Newton step, or a retraining
        when the certificate's budget would be exceeded. Returns the request's record (numbers only)."""
        keep = torch.ones(self.X.shape[0], dtype=torch.bool)
        keep[list(indices)] = False
        if int(keep.sum()) == 0:
            raise ForgetkitError("certified head: cannot remove every example")
        X, y, Xr, yr = self.X[keep], self.y[keep], self.X[~keep], self.y[~keep]
        d1, _ = _loss_terms(self.w, Xr, yr)
        delta_vec = self.lam * len(indices) * self.w + Xr.T @ d1
        step = torch.linalg.solve(objective_hessian(self.w, X, y, self.lam), delta_vec)
        spectral = float(torch.linalg.matrix_norm(X, ord=2))
        bound = GAMMA_LOGISTIC * spectral * float(step.norm()) * float((X @ step).norm())
        record = {"removed": len(indices), "remaining": int(keep.sum()), "residual_bound": bound,
                  "budget": self.budget}
        self.X, self.y = X, y
        if self.spent + bound <= self.budget:
            self.w = self.w + step
            self.spent += bound
            record.update(action="newton", spent=self.spent,
                          residual=float(objective_gradient(self.w, X, y, self.lam, self.b).norm()))
        else:
            self.fit(X, y)
            self.retrainings += 1
            record.update(action="retrained", spent=self.spent, residual=0.0)
        record["certificate"] = {"epsilon": self.epsilon, "delta": self.delta}
        self.history.append(record)
        return record

    def predict(self, X: torch.Tensor) -> torch.Tensor:
        return torch.sign(X.to(torch.float64) @ self.w)

    def save(self, out: str | Path) -> None:
        """``head.safetensors`` (w, the noise b, the training features X and labels y, which later Newton steps
        need) and ``head.json`` (settings, budget spent, history); each written to a temp file, then renamed."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{TENSORS}.tmp"
        save_file({"w": self.w, "b": self.b, "X": self.X, "y": self.y}, str(tmp))
        os.replace(tmp, out / TENSORS)
        write_json(out / STATE, {"lam": self.lam, "sigma": self.sigma, "epsilon": self.epsilon, "delta": self.delta,
                                 "seed": self.seed, "spent": self.spent, "retrainings": self.retrainings,
                                 "draws": self._draws, "history": self.history})

    @classmethod
    def load(cls, path: str | Path) -> CertifiedHead:
        path = Path(path)
        try:
            state = json.loads((path / STATE).read_text(encoding="utf-8"))
            tensors = load_file(str(path / TENSORS))
        except (OSError, json.JSONDecodeError, SafetensorError) as exc:
            raise ForgetkitError(f"{path}: not a saved certified head ({exc})") from None
        draws = state.pop("draws")
        head = cls(**state)
        head._draws = draws
        head.w, head.b, head.X, head.y = tensors["w"], tensors["b"], tensors["X"], tensors["y"]
        return head

    def audit_record(self, record: dict, removed_hash: str, model_hash: str | None = None,
                     saved_to: str | None = None) -> dict:
        """The ledger's view of one :meth:`remove` request (hashes and numbers; the guarantee is certified)."""
        settings = {"lam": self.lam, "sigma": self.sigma, "epsilon": self.epsilon, "delta": self.delta}
        started = now()
        return AuditRecord(
            tool="forgetkit.certified.convex_head", method="certified_head", config=settings,
            config_hash=config_hash(settings), model=Fingerprint(None, model_hash), guarantee=CERTIFIED,
            forget=RecordSet(None, removed_hash, record["removed"]),
            retain=RecordSet(None, _tensor_hash(self.X, self.y), record["remaining"]),
            output=Fingerprint(saved_to, _tensor_hash(self.w)), started=started, ended=started,
            metrics={"certified_removal": {"action": record["action"], "budget": record["budget"],
                                           "residual_bound": record["residual_bound"],
                                           "budget_spent": record["spent"]}},
            details={"certificate": record["certificate"]}).to_dict()


def _tensor_hash(*tensors: torch.Tensor) -> str:
    return fingerprint(t.contiguous().numpy().tobytes() for t in tensors)
