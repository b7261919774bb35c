"""Certified noisy fine-tuning (Koloskova et al., ICML 2025): the adapter that holds the knowledge is clipped,
fine-tuned on D_r with clipped gradients, weight decay and Gaussian noise, then (post-processing) fine-tuned
on D_r without noise. The (ε, δ) certificate goes into the audit record and the ledger.

``sigma`` fixes the noise and ε follows; otherwise σ is set to reach ``epsilon``. The accounting is in
:mod:`forgetkit.certified.noisy_finetune`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from forgetkit.certified.noisy_finetune import NoisySchedule, certificate, noisy_sgd, sigma_for
from forgetkit.errors import ForgetkitError
from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, UnlearnContext, forward, register
from forgetkit.registry import CERTIFIED


@register
@dataclass
class NoisyFinetune(Method):
    epsilon: float = 10.0
    delta: float = 1e-5
    sigma: float | None = None  # None: the σ that reaches ``epsilon``
    clip_start: float = 30.0  # C0: a fixed radius, never one read from the trained adapter
    clip_grad: float = 0.1  # C1
    lr: float = 0.05  # γ
    weight_decay: float = 1.0  # λ
    steps: int = 200  # T
    recover_epochs: float = 3.0  # noise-free fine-tuning on D_r afterwards (post-processing); 0: none

    name = "noisy_finetune"
    forget_term = "retain_ce"
    summary = ("certified (ε, δ): clip the adapter to C0, T steps of x ← x − γ(clip(∇CE(D_r), C1) + λx) + N(0, σ²), "
               "then CE(D_r) without noise")
    trains_existing_adapter: ClassVar[bool] = True
    guarantee: ClassVar[str] = CERTIFIED  # when σ > 0: its certificate travels in the audit record

    def schedule(self) -> NoisySchedule:
        base = NoisySchedule(self.clip_start, self.clip_grad, self.lr, self.weight_decay, self.steps)
        sigma = self.sigma if self.sigma is not None else sigma_for(self.epsilon, self.delta, base)
        return NoisySchedule(self.clip_start, self.clip_grad, self.lr, self.weight_decay, self.steps, sigma)

    def start(self, ctx: UnlearnContext) -> dict:
        if not ctx.existing_adapter:
            raise ForgetkitError("noisy_finetune certifies the adapter that holds the fine-tuned knowledge: give a "
                                 "LoRA target (--adapter DIR, or a run prepared with target_mode=lora) and mode=lora")
        schedule = self.schedule()
        params = [p for p in ctx.model.parameters() if p.requires_grad]
        retain = ctx.data.retain
        size = ctx.config.train.batch_size
        order = torch.Generator().manual_seed(ctx.config.train.seed)

        def batches():
            for _ in itertools.count():
                perm = torch.randperm(len(retain), generator=order).tolist()
                yield from ctx.batches([retain[i] for i in perm], size)

        def batch_loss(part):
            part = {k: v.to(params[0].device) for k, v in part.items()}
            return losses.mean_nll(forward(ctx.model, part).logits, part["labels"])

        ctx.model.train()
        with tqdm(total=schedule.steps, desc="noisy phase", disable=ctx.quiet, unit="step") as bar:
            log = noisy_sgd(params, batch_loss, batches(), schedule, seed=ctx.config.train.seed,
                            progress=lambda _step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")))
        ctx.data.forget = None  # the noise-free phase runs on D_r alone, its epochs over D_r
        if schedule.sigma == 0:  # no noise: the same steps, no guarantee (an empirical audit, like any method)
            return {"noisy_phase": log, "certificate_withheld": "sigma = 0"}
        return {"certificate": certificate(schedule, self.delta), "noisy_phase": log}

    def train_steps(self, default: float) -> float:
        return self.recover_epochs

    def parts(self, model, batch: UnlearnBatch, reference=None):
        yield self.term(1.0, self.retain_ce(model, batch), "retain_ce")
