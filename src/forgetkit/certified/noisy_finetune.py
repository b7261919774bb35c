"""Certified unlearning by noisy fine-tuning (Koloskova et al., ICML 2025, "gradient clipping" variant).

After a deletion, the adapter x̂ (trained on D, forget set included) is clipped to a ball of radius C0,
x₀ = Π_C0(x̂), then fine-tuned for T steps on the retain data only, by

    x_{t+1} = x_t − γ·(clip(g_t, C1) + λ·x_t) + ξ_{t+1},   ξ ~ N(0, σ² I),

g_t the retain-loss gradient of a minibatch. The certifying algorithm runs the same steps from an adapter
trained without the forget set; both start within 2·C0 of each other, and no step touches the forget data.

The accounting (Rényi divergence by "privacy amplification by iteration", Feldman et al. 2018): each step's
map x ↦ x − γ(clip(g) + λx) is c-Lipschitz up to a shift, c = 1 − γλ, ‖ψ(x) − ψ(x')‖ ≤ c‖x − x'‖ + 2γC1,
whatever the loss (no smoothness or convexity). The Gaussian noise of step t absorbs a shift a_t at a Rényi
cost α·a_t²/(2σ²); the shifts must absorb K = 2·C0·c^T + 2γC1·Σ_t c^t, weighted by w_t = c^(T−1−t). The
cheapest split, a_t ∝ w_t, gives the Rényi divergence of every order α

    D_α ≤ α·ρ,   ρ = K² / (2σ²·Σ_t w_t²),

and (Mironov 2017, Prop. 3, at the best α) the (ε, δ) guarantee ε = ρ + 2·√(ρ·ln(1/δ)). Any later
computation on the retain data alone (``recover_epochs`` of ordinary fine-tuning) is post-processing and
keeps it.

The bound is dimension-free, the noise is not: σ per coordinate over every adapter weight, so what a given ε
costs in utility grows with the adapter's size (docs/results.md measures it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import torch

from forgetkit.errors import ConfigError, ForgetkitError


@dataclass(frozen=True)
class NoisySchedule:
    """The noisy phase: C0 (clip_start), C1 (clip_grad), γ (lr), λ (weight_decay), T (steps), σ (sigma)."""

    clip_start: float
    clip_grad: float
    lr: float
    weight_decay: float
    steps: int
    sigma: float = 0.0

    def __post_init__(self) -> None:
        if min(self.clip_start, self.clip_grad, self.lr) <= 0 or self.steps < 1:
            raise ConfigError("noisy fine-tune: clip_start, clip_grad and lr must be positive, steps ≥ 1")
        if not 0 <= self.lr * self.weight_decay < 1:
            raise ConfigError(f"noisy fine-tune: lr × weight_decay must lie in [0, 1), got "
                              f"{self.lr * self.weight_decay:g}")
        if self.sigma < 0:
            raise ConfigError("noisy fine-tune: sigma must be ≥ 0")

    @property
    def contraction(self) -> float:
        return 1.0 - self.lr * self.weight_decay

    def shift_and_weights(self) -> tuple[float, float]:
        """K, the total shift the noise must absorb, and Σ_t w_t² (w_t = c^(T−1−t))."""
        c, steps = self.contraction, self.steps
        weights = [c ** (steps - 1 - t) for t in range(steps)]
        shift = 2 * self.clip_start * c ** steps + 2 * self.lr * self.clip_grad * sum(weights)
        return shift, sum(w * w for w in weights)

    def rho(self) -> float:
        """ρ with D_α ≤ α·ρ for every order α > 1 (infinite without noise)."""
        if self.sigma == 0:
            return math.inf
        shift, weight_sq = self.shift_and_weights()
        return shift ** 2 / (2 * self.sigma ** 2 * weight_sq)


def epsilon(schedule: NoisySchedule, delta: float) -> float:
    """The ε of the (ε, δ) guarantee: ρ + 2·√(ρ·ln(1/δ))."""
    _check_delta(delta)
    rho = schedule.rho()
    return rho + 2 * math.sqrt(rho * math.log(1 / delta))


def sigma_for(target_epsilon: float, delta: float, schedule: NoisySchedule) -> float:
    """The noise σ that gives exactly ``target_epsilon`` at ``delta`` for the schedule's other settings."""
    _check_delta(delta)
    if target_epsilon <= 0:
        raise ConfigError(f"noisy fine-tune: epsilon must be positive, got {target_epsilon}")
    log_inv = math.log(1 / delta)
    rho = (math.sqrt(log_inv + target_epsilon) - math.sqrt(log_inv)) ** 2  # ρ + 2√(ρL) = ε, solved for ρ
    shift, weight_sq = schedule.shift_and_weights()
    return shift / math.sqrt(2 * rho * weight_sq)


def _check_delta(delta: float) -> None:
    if not 0 < delta < 1:
        raise ConfigError(f"noisy fine-tune: delta must lie in (0, 1), got {delta}")


def certificate(schedule: NoisySchedule, delta: float) -> dict:
    """What the audit record keeps: the guarantee and every setting it rests on."""
    return {"kind": "noisy fine-tuning (Koloskova et al. 2025), Rényi accounting", "epsilon": epsilon(schedule, delta),
            "delta": delta, "rho": schedule.rho(), **asdict(schedule)}


def _global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def noisy_sgd(params: list[torch.nn.Parameter], batch_loss: Callable[[object], torch.Tensor], batches: Iterator,
              schedule: NoisySchedule, seed: int = 0, progress=None) -> dict:
    """Clip ``params`` (jointly) to C0, then run the schedule's T noisy clipped steps on ``batches`` (retain data
    only); returns the start's norm before clipping and the first and last losses. A non-finite loss or gradient
    stops with a ForgetkitError (the caller writes nothing)."""
    noise = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        start_norm = float(_global_norm(params))
        scale = min(1.0, schedule.clip_start / start_norm) if start_norm > 0 else 1.0
        for p in params:
            p.mul_(scale)
    losses = []
    for step in range(schedule.steps):
        for p in params:
            p.grad = None
        loss = batch_loss(next(batches))
        loss.backward()
        loss = float(loss.detach())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        grad_norm = float(_global_norm(grads))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise ForgetkitError(f"noisy fine-tune: non-finite loss or gradient at step {step}; nothing written")
        clip = min(1.0, schedule.clip_grad / grad_norm) if grad_norm > 0 else 1.0
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.mul_(schedule.contraction).sub_(schedule.lr * clip * g)
                if schedule.sigma:
                    p.add_(torch.randn(p.shape, generator=noise).to(p.device, p.dtype), alpha=schedule.sigma)
        losses.append(loss)
        if progress is not None:
            progress(step, loss)
    for p in params:
        p.grad = None
    return {"start_norm": start_norm, "start_scale": scale, "first_loss": losses[0], "last_loss": losses[-1]}
