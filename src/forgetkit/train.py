"""The training loop: one readable fine-tuning loop on Hugging Face ``accelerate``.

``fine_tune`` trains a causal LM (all weights, or only its peft adapters) on one tokenised
set with the model's own next-token loss on the labelled tokens. It is what ``prepare``
uses for the base, the target and the oracle. Accelerate places the model, wraps it for
DDP/FSDP/DeepSpeed under ``accelerate launch``, and handles gradient accumulation.
A non-finite loss stops the run before the step is applied (:class:`DivergenceError`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from forgetkit.cost import measure
from forgetkit.data.formatting import TokenizedSet, collate
from forgetkit.errors import ConfigError, ForgetkitError

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")


class DivergenceError(ForgetkitError):
    """The loss became NaN/inf: the run stopped and the last good state was kept."""

    exit_code = 3


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "constant"
    max_grad_norm: float = 1.0
    grad_accum: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler '{self.scheduler}' (known: {', '.join(SCHEDULERS)})")
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0 or self.grad_accum <= 0:
            raise ConfigError("epochs, batch_size, lr and grad_accum must be positive")


@dataclass
class TrainStats:
    steps: int
    examples: int
    tokens: int
    first_loss: float
    final_loss: float
    wall_time_s: float
    peak_memory_mb: float
    memory_kind: str
    trainable_parameters: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_s"] = round(self.tokens_per_s, 1)
        return d


def fine_tune(
    model: torch.nn.Module,
    data: TokenizedSet,
    config: TrainConfig,
    pad_token_id: int,
    desc: str = "train",
    quiet: bool = False,
) -> TrainStats:
    """Train ``model``'s trainable parameters on ``data``; return loss, time and memory figures."""
    if len(data) == 0:
        raise ForgetkitError(f"{desc}: nothing to train on (empty set)")
    accelerator = Accelerator(gradient_accumulation_steps=config.grad_accum)
    set_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(
        data.examples,
        batch_size=config.batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=lambda b: collate(b, pad_token_id),
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = max(1, round(config.epochs * steps_per_epoch))
    scheduler = get_scheduler(
        config.scheduler,
        optimizer,
        num_warmup_steps=round(config.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    model.train()
    step, tokens, examples = 0, 0, 0
    first_loss = last_loss = float("nan")
    bar = tqdm(total=total_steps, desc=desc, disable=quiet or not accelerator.is_local_main_process, leave=False)
    with measure(accelerator.device) as cost:
        while step < total_steps:
            for batch in loader:
                with accelerator.accumulate(model):
                    loss = model(**batch).loss
                    if not torch.isfinite(loss):
                        raise DivergenceError(
                            f"{desc}: loss became {loss.item()} at step {step}; stopped before applying it"
                        )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm:
                        accelerator.clip_grad_norm_(params, config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                tokens += int(batch["attention_mask"].sum())
                examples += batch["input_ids"].shape[0]
                last_loss = loss.item()
                if not accelerator.sync_gradients:
                    continue
                if step == 0:
                    first_loss = last_loss
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.3f}")
                if step >= total_steps:
                    break
    bar.close()
    model.eval()
    return TrainStats(
        steps=step,
        examples=examples,
        tokens=tokens,
        first_loss=first_loss,
        final_loss=last_loss,
        wall_time_s=cost.wall_time_s,
        peak_memory_mb=cost.peak_memory_mb,
        memory_kind=cost.memory_kind,
        trainable_parameters=sum(p.numel() for p in params),
    )
