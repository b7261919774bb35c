"""Influence-guided PEFT unlearning (the founding proposal), a three-phase pipeline around one loss.

1. Influence estimation: I = (H_r + λI)⁻¹∇L(D_f) by LiSSA over the candidate modules' weights
   (the base's LoRA-able projections for a fully fine-tuned target; the target adapter's own
   LoRA weights when the knowledge lives in an adapter), aggregated per module: the top-k
   modules (or a parameter budget) are the critical ones.
2. Adapters where it matters: LoRA (or sine LoRA) on the critical modules only (with an adapter
   target: only its critical modules train), trained with
   L = α·CE(D_r) + reg_lambda·‖θ ⊙ ∇L(D_f)‖₁ + γ·(forgetting objective on D_f: npo, graddiff or none).
3. Selective unlearning and refinement: influence over the trained adapter's weights, the top
   ``mask_fraction`` of entries by |I| zeroed and held at zero, then ``refine_steps`` steps of
   cross-entropy on D_r ∪ D_synth, D_synth selected by gradient matching: the candidates (a
   sample of D_r, and the forget questions with perturbed and vague answers: never the forget
   answers) whose loss gradient has the highest cosine with ∇L(D_f) (``synth=gradient_matched``),
   random retain examples (``random``), or none.

Phases 1 and 3 can be switched off (``phase1``/``phase3``), and phase 2's training too
(``phase2=false``: no steps) for the ablation.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, replace
from typing import ClassVar

import torch

from forgetkit.errors import ConfigError
from forgetkit.methods import losses
from forgetkit.methods.base import Method, UnlearnBatch, UnlearnContext, forward, register

OBJECTIVES = ("npo", "graddiff", "none")
SYNTH = ("gradient_matched", "random", "none")


@register
@dataclass
class InfluencePEFT(Method):
    objective: str = "npo"
    beta: float = 0.1  # npo's β
    reg_lambda: float = 1.0  # the forgetting regulariser's weight (0: off)
    phase1: bool = True
    top_k: int | None = 8
    parameter_budget: int | None = None  # instead of top_k: as many critical modules as fit
    influence_examples: int = 64  # retain examples in the curvature and forget examples in ∇L(D_f)
    lissa_depth: int = 10
    power_iterations: int = 5
    damping_ratio: float = 0.1
    phase2: bool = True
    phase3: bool = True
    mask_fraction: float = 0.0  # the proposal's 0.95 undoes the forgetting (docs/results.md)
    refine_steps: int = 20
    refine_lr: float | None = 1e-3  # None: the training lr
    synth: str = "gradient_matched"
    synth_pool: int = 128  # candidates scored for gradient matching (a sample of retain + answer variants)
    synth_examples: int | None = None  # None: as many as forget examples
    seed: int = 0

    name: ClassVar[str] = "influence_peft"
    forget_term = "npo"
    summary: ClassVar[str] = ("influence-guided PEFT: LiSSA influence → adapters on critical modules with a "
                              "forgetting regulariser (+ NPO) → influence mask → refine on D_r ∪ gradient-matched data")
    trains_existing_adapter: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"method.influence_peft.objective must be one of {', '.join(OBJECTIVES)}")
        if self.synth not in SYNTH:
            raise ConfigError(f"method.influence_peft.synth must be one of {', '.join(SYNTH)}")
        if not 0 <= self.mask_fraction <= 1:
            raise ConfigError("method.influence_peft.mask_fraction must be in [0, 1]")
        if self.top_k is not None and self.parameter_budget is not None:
            self.top_k = None  # a budget, when given, replaces the default k
        self.needs_reference = self.objective == "npo"
        self._regulariser = None

    # -- the loss of phase 2 --------------------------------------------------------------------
    def parts(self, model, batch: UnlearnBatch, reference=None):
        yield self.term(self.alpha, self.retain_ce(model, batch), "retain_ce")
        if self.objective == "npo":
            labels = batch.forget["labels"]
            nll, _ = losses.sequence_nll(forward(model, batch.forget).logits, labels)
            ref_nll, _ = losses.sequence_nll(reference(model, batch.forget).logits, labels)
            yield self.term(self.gamma, losses.npo_loss(nll, ref_nll, self.beta), "npo")
        elif self.objective == "graddiff":
            yield self.term(self.gamma, -losses.mean_nll(forward(model, batch.forget).logits, batch.forget["labels"]),
                            "neg_forget_ce")
        if self._regulariser is not None:
            yield self.term(1.0, self._regulariser(), "forget_reg")

    # -- the phases -----------------------------------------------------------------------------
    def _sample(self, examples, count: int) -> list[dict]:
        examples = list(examples)
        return random.Random(self.seed).sample(examples, count) if len(examples) > count else examples

    def _influence_batches(self, ctx: UnlearnContext) -> tuple[list, list]:
        n = self.influence_examples
        return (ctx.batches(self._sample(ctx.data.forget, n)), ctx.batches(self._sample(ctx.data.retain, n)))

    def _score_options(self) -> dict:
        return {"solver": "lissa", "damping_ratio": self.damping_ratio, "depth": self.lissa_depth,
                "power_iterations": self.power_iterations}

    def place_adapter(self, ctx: UnlearnContext, lora):
        """Phase 1 for a target without an adapter: LoRA goes on the critical base modules."""
        if not self.phase1:
            return lora, {}
        from forgetkit.adapters.lora import default_target_modules
        from forgetkit.influence.guided import critical_modules

        start = time.perf_counter()
        forget, retain = self._influence_batches(ctx)
        candidates = [f"*.{m}" for m in (lora.target_modules or default_target_modules(ctx.model))]
        chosen, scores = critical_modules(ctx.model, candidates, forget, retain, k=self.top_k,
                                          parameter_budget=self.parameter_budget, **self._score_options())
        return replace(lora, target_modules=chosen), {
            "phase1_s": time.perf_counter() - start, "critical_modules": chosen,
            "candidate_modules": len(scores.module_scores()), "phase1_products": scores.info["products"]}

    def start(self, ctx: UnlearnContext) -> dict:
        """With an adapter target, phase 1 over its LoRA weights (only critical modules train); then the
        forgetting regulariser's ∇L(D_f) at the adapter's starting point."""
        from forgetkit.influence.guided import ForgettingRegulariser
        from forgetkit.influence.scores import influence_scores

        info: dict = {}
        forget, retain = self._influence_batches(ctx)
        if ctx.existing_adapter and self.phase1:
            start = time.perf_counter()
            named = [(n, p) for n, p in ctx.model.named_parameters() if "lora_" in n]
            scores = influence_scores(ctx.model, named, forget, retain, **self._score_options())
            chosen = set(scores.top_modules(k=self.top_k, parameter_budget=self.parameter_budget))
            from forgetkit.influence.curvature import module_of

            for n, p in named:
                p.requires_grad_(module_of(n) in chosen)
            info.update({"phase1_s": time.perf_counter() - start, "critical_modules": sorted(chosen),
                         "candidate_modules": len(scores.module_scores()),
                         "phase1_products": scores.info["products"]})
        if self.reg_lambda > 0 and self.phase2:
            params = [p for n, p in ctx.model.named_parameters() if p.requires_grad]
            self._regulariser = ForgettingRegulariser(ctx.model, params, forget, self.reg_lambda)
        return info

    def train_steps(self, default: float) -> float:
        """Phase 2's epochs (0: phase 2 off)."""
        return default if self.phase2 else 0.0

    def finish(self, ctx: UnlearnContext) -> dict:
        """Phase 3: influence mask over the trained adapter, then refinement on D_r ∪ D_synth."""
        if not self.phase3:
            return {}
        from forgetkit.influence.guided import apply_masks, gradient_matched, mask_by_influence
        from forgetkit.influence.scores import influence_scores
        from forgetkit.train import PairedData, TrainConfig, train_loop

        start = time.perf_counter()
        named = [(n, p) for n, p in ctx.model.named_parameters() if p.requires_grad]
        forget, retain = self._influence_batches(ctx)
        scores = influence_scores(ctx.model, named, forget, retain, **self._score_options())
        masks = mask_by_influence(named, scores, self.mask_fraction)
        synth, cosines = self._synthetic(ctx, named, scores, gradient_matched)
        info = {"pruned": int(sum(m.sum() for m in masks.values())),
                "adapter_entries": sum(p.numel() for _, p in named), "synth_examples": len(synth),
                "synth_mean_cosine": sum(cosines) / len(cosines) if cosines else None}
        if self.refine_steps > 0:
            retain_all = list(ctx.data.retain) + synth
            train = ctx.config.train
            epochs = self.refine_steps * train.batch_size / len(retain_all)
            refine = TrainConfig(epochs=epochs, batch_size=train.batch_size, lr=self.refine_lr or train.lr,
                                 seed=train.seed, mixed_precision=train.mixed_precision,
                                 max_grad_norm=train.max_grad_norm)

            def refine_loss(model, batch):
                ce = losses.mean_nll(forward(model, batch.retain).logits, batch.retain["labels"])
                return ce, {"refine_ce": float(ce.detach())}

            stats = train_loop(ctx.model, refine_loss, PairedData(retain=retain_all), refine, ctx.pad,
                               run_dir=ctx.out / "refine", desc="influence_peft (refine)", quiet=ctx.quiet,
                               after_step=lambda _m: apply_masks(named, masks))
            info["refine_steps"] = stats.steps
        info["phase3_s"] = time.perf_counter() - start
        return info

    def _synthetic(self, ctx: UnlearnContext, named, scores, gradient_matched) -> tuple[list[dict], list[float]]:
        """D_synth: the gradient-matched candidates, random retain examples, or none."""
        count = self.synth_examples if self.synth_examples is not None else len(ctx.data.forget)
        if self.synth == "none" or count == 0:
            return [], []
        if self.synth == "random":
            return self._sample(ctx.data.retain, count), []
        # candidates: retain examples and the forget questions with perturbed and vague answers
        pool = self._sample(list(ctx.data.retain) + ctx.answer_variants(), self.synth_pool)
        params = [p for _, p in named]
        target = torch.cat([g.reshape(-1) for g in scores.forget_gradient])
        cosines = gradient_matched(ctx.model, params, [ctx.batches([e])[0] for e in pool], target)
        order = sorted(range(len(pool)), key=lambda i: -cosines[i])[:count]
        return [pool[i] for i in order], [cosines[i] for i in order]
