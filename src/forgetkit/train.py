"""The training loop: one readable loop on Hugging Face ``accelerate`` for every gradient-based job.

``train_loop`` minimises a loss function over paired batches (``forget``, ``retain`` and
``alternate`` parts of :class:`UnlearnBatch`); it knows nothing of
methods. ``fine_tune`` (the base, target and oracle of ``prepare``) is the same loop with the
model's cross-entropy on one set.

- Data order is a function of (seed, step): the set that drives the epochs (forget when
  present, else retain) is read in a seeded permutation per epoch, and the retain set in its own
  permutation, cycled. So a resumed run sees exactly the batches an uninterrupted one would.
- Settings are checked against the data before any work: a run of more than ``MAX_PASSES``
  forward/backward passes (``epochs`` or ``grad_accum`` far too large) is refused (:func:`check_steps`), and
  so is a batch whose collated tensors or hidden states alone exceed the machine's memory
  (:func:`check_memory`): the order is never built for it. ``max_length`` beyond the model's context is
  clipped with a one-line notice (:func:`fit_max_length`).
- Under ``accelerate launch`` each process takes an interleaved share of every batch; DDP
  averages the gradients. Gradient accumulation, mixed precision (``mixed_precision``), the LR
  schedule and gradient clipping are the usual ones.
- Each optimiser step is logged (loss terms, gradient norm before clipping, trainable-weight
  norm, learning rate) to ``train_log.jsonl`` when a run directory is given, and a checkpoint
  (trainable weights in safetensors, optimiser and scheduler state, RNG state, step) is written
  atomically every ``checkpoint_every`` steps; rerunning resumes from it. A checkpoint that does not parse
  (a torn or damaged file) is set aside as ``checkpoint.damaged`` with one warning and the run starts at
  step 0; one that parses but does not fit the model is refused.
- A loss function may yield its loss as parts (a method's forget and retain terms): in one process
  each part is backpropagated before the next is computed, so only one part's activations are alive
  at a time (the gradient is the same sum). Under DDP/FSDP/DeepSpeed the parts are summed and
  backpropagated once, as those wrappers expect one backward per micro-batch.
- ``gradient_checkpointing`` recomputes the layers' activations in the backward pass (non-reentrant,
  switched off again when the loop ends): the same weights for less activation memory.
- A non-finite loss, or a gradient norm above ``abort_grad_norm``, stops the run before the
  step is applied, writes the last good state as a checkpoint, and raises
  :class:`DivergenceError` (exit code 3).
"""

from __future__ import annotations

import json
import math
import pickle
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, set_seed
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from forgetkit.config import ADDED_SETTING
from forgetkit.cost import measure, refuse_beyond_memory
from forgetkit.data.formatting import TokenizedSet, collate
from forgetkit.errors import ConfigError, ForgetkitError, SettingError, first_line, require, require_positive
from forgetkit.io import atomic_path, set_aside
from forgetkit.models.logits import context_length, cross_entropy_parts
from forgetkit.models.memory import hidden_state_bytes, layers_kept_for_backward

# Bumped when the loop's arithmetic or data order changes, so cached trained stages are rebuilt.
TRAINER_VERSION = 2
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine")
PRECISIONS = ("no", "bf16", "fp16")
CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "train_log.jsonl"
# The most forward/backward passes (micro-batches) one run may take: more is a mistaken setting (days of work at
# any model size), refused before the run starts.
MAX_PASSES = 10_000_000


@dataclass
class UnlearnBatch:
    """One step's data: forget examples, retain examples, and alternative answers to the forget questions.

    Each part is a collated dict (``input_ids``, ``attention_mask``, ``labels``); ``alternate[i]``
    answers the question of ``forget[i]`` differently (a refusal or a vague answer).
    """

    forget: dict[str, torch.Tensor] | None = None
    retain: dict[str, torch.Tensor] | None = None
    alternate: dict[str, torch.Tensor] | None = None


class DivergenceError(ForgetkitError):
    """The loss became NaN/inf (or the gradient norm passed its bound): stopped, last good state kept."""

    exit_code = 3


@dataclass
class TrainConfig:
    epochs: float = 1.0
    batch_size: int = 16
    retain_batch_size: int | None = None  # None: batch_size
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    scheduler: str = "constant"
    max_grad_norm: float = 1.0  # clipping; 0 = off
    abort_grad_norm: float | None = None  # a pre-clip gradient norm above this stops the run
    grad_accum: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 0  # optimiser steps between checkpoints (0: none before the end)
    seed: int = 0
    # recompute each layer's activations in the backward pass instead of keeping them: less memory, more compute
    gradient_checkpointing: bool = field(default=False, metadata=ADDED_SETTING)
    # cross-entropy fine-tuning (prepare's stages, retrain) runs each batch in chunks of at most this many rows,
    # backpropagated one by one: the same gradient for a chunk's activation memory (None: the whole batch at once)
    micro_batch_size: int | None = field(default=None, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"unknown scheduler '{self.scheduler}' (known: {', '.join(SCHEDULERS)})")
        if self.mixed_precision not in PRECISIONS:
            raise ConfigError(f"unknown mixed_precision '{self.mixed_precision}' (known: {', '.join(PRECISIONS)})")
        require(math.isfinite(self.epochs), "epochs", f"must be a finite number, got {self.epochs}")
        require_positive(self, "epochs", "batch_size", "retain_batch_size", "lr", "grad_accum", "micro_batch_size")
        require_positive(self, "weight_decay", "warmup_ratio", "max_grad_norm", "checkpoint_every", allow_zero=True)
        require(self.warmup_ratio < 1, "warmup_ratio", f"must be below 1, got {self.warmup_ratio}")
        require(self.abort_grad_norm is None or self.abort_grad_norm > 0, "abort_grad_norm",
                f"must be positive, got {self.abort_grad_norm}")


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
    resumed_from_step: int = 0
    stopped: str | None = None  # why an on_step hook ended the run early

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["stopped"] is None:
            del d["stopped"]
        d["tokens_per_s"] = round(self.tokens_per_s, 1)
        return d


@dataclass
class PairedData:
    """Tokenised examples of one job; ``alternate[i]`` pairs with ``forget[i]``."""

    forget: Sequence[dict] | None = None
    retain: Sequence[dict] | None = None
    alternate: Sequence[dict] | None = None

    def driver(self) -> Sequence[dict]:
        """The set whose passes are the epochs: forget when there is one, else retain."""
        return self.forget if self.forget else (self.retain or [])


class EpochOrder:
    """Items ``0..n-1`` in a fresh seeded permutation each epoch, read as one endless stream.

    A batch is a slice of the stream: one larger than the set spans several epochs (each item once per epoch it
    spans), as it always has. Reading ``count`` items costs O(count + n) wherever the batch starts; a count that
    could not fit in memory is refused before any work (:func:`check_memory`), never built."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self._perms = n, seed, {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}  # only the epoch being read
        return self._perms[epoch]

    def take(self, start: int, count: int) -> list[int]:
        """Items ``start .. start + count - 1`` of the stream."""
        items: list[int] = []
        while len(items) < count:
            epoch, offset = divmod(start + len(items), self.n)
            items += self._perm(epoch)[offset : offset + count - len(items)]
        return items


def _notice(message: str) -> None:
    """A one-line notice on stderr (from the main process only): a setting was adjusted to fit, nothing failed."""
    if process_state().is_main_process:
        print(f"notice: {message}", file=sys.stderr)


def _total_steps(config: TrainConfig, n: int) -> int:
    """Optimiser steps of ``config`` over a driving set of ``n`` examples."""
    return max(1, math.ceil(config.epochs * math.ceil(n / config.batch_size) / config.grad_accum))


def check_steps(data: PairedData, config: TrainConfig, setting: str = "train") -> None:
    """Refuse, before any work, a run of more than ``MAX_PASSES`` forward/backward passes (:class:`SettingError`
    naming ``epochs``, or ``grad_accum`` when the passes of its one step are the excess): it would never finish.
    ``setting`` is ``config``'s dotted prefix."""
    n = len(data.driver())
    batches = config.epochs * math.ceil(n / config.batch_size)
    if batches > MAX_PASSES:
        raise SettingError(f"{setting}.epochs", f"{config.epochs:g} epochs of {n} examples in batches of "
                                                f"{config.batch_size} are {batches:.3g} passes, more than a run's "
                                                f"{MAX_PASSES:,}")
    passes = _total_steps(config, n) * config.grad_accum
    if passes > MAX_PASSES:
        raise SettingError(f"{setting}.grad_accum", f"{config.grad_accum} micro-batches a step are {passes:.3g} "
                                                    f"passes, more than a run's {MAX_PASSES:,}")


def fit_max_length(model, max_length: int, setting: str = "max_length") -> int:
    """``max_length`` clipped to the model's context (``max_position_embeddings``), with a notice naming
    ``setting``: a longer sequence cannot be fed to the model (GPT-2 fails on it, RoPE models extrapolate), so
    tokenisation truncates at the context instead. Clipped rather than refused: the setting is an upper bound,
    and every sequence within the context is unchanged."""
    context = context_length(model)
    if max_length <= context:
        return max_length
    _notice(f"{setting} {max_length} is longer than the model's context of {context} positions; clipped to {context}")
    return context


# int64 tensors a collated batch holds per token: input ids, labels, attention mask
_COLLATED_BYTES_PER_TOKEN = 3 * 8


def check_memory(model, data: PairedData, config: TrainConfig, setting: str, processes: int) -> None:
    """Refuse (:class:`SettingError`), before any work, a batch that could never fit in the machine's memory: its
    collated tensors (every row of a process's share of the batch, of its set's longest example), or the hidden
    states the backward pass keeps (``micro_batch_size`` rows at a time when set, over the layers from the first
    trainable one up). Both are lower bounds of what a step takes."""
    layers = layers_kept_for_backward(model)
    size = next(model.parameters()).element_size()
    size = min(size, 2) if config.mixed_precision != "no" else size
    parts = [(data.driver(), config.batch_size, "batch_size")]
    if data.forget and data.retain:
        name = "retain_batch_size" if config.retain_batch_size else "batch_size"
        parts.append((data.retain, config.retain_batch_size or config.batch_size, name))
    for examples, batch, name in parts:
        rows = math.ceil(batch / processes)
        longest = max(len(e["input_ids"]) for e in examples)
        refuse_beyond_memory(f"{setting}.{name}", batch, rows * longest * _COLLATED_BYTES_PER_TOKEN,
                             f"a collated batch of {rows} rows of up to {longest} tokens")
        rows = min(rows, config.micro_batch_size or rows)
        need = hidden_state_bytes(model, rows, longest, layers, size)
        refuse_beyond_memory(f"{setting}.{name}", batch, need,
                             f"the hidden states of {rows} rows of up to {longest} tokens over {layers} layers")


def on_cpu() -> bool:
    """Whether accelerate should run on CPU: there is no accelerator (then a multi-process launch uses gloo)."""
    return not torch.accelerator.is_available()


def process_state() -> PartialState:
    """This process's place in a launch (``is_main_process``, ``num_processes``), consistent with the loop's."""
    return PartialState(cpu=on_cpu())


LossPart = tuple[torch.Tensor, dict[str, float]]  # a loss (or a part of one) and its named terms to log
# A loss function returns one LossPart, or yields parts whose sum is the loss.
LossFn = Callable[[torch.nn.Module, UnlearnBatch], LossPart | Iterable[LossPart]]


def sum_parts(parts: Iterable[LossPart]) -> LossPart:
    """The parts' sum, with each named term summed over the parts that log it (every part's graph alive at once)."""
    total, terms = 0.0, {}
    for value, named in parts:
        total = total + value
        for name, v in named.items():
            terms[name] = terms.get(name, 0.0) + v
    return total, terms


def _loss_parts(result: LossPart | Iterable[LossPart], separate: bool) -> Iterable[LossPart]:
    """A loss function's result as parts to backpropagate one by one: as yielded when ``separate``, else
    summed into one."""
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor):
        return [result]
    return result if separate else [sum_parts(result)]


def _checkpointing(model, on: bool) -> None:
    """Activation ("gradient") checkpointing of the model's layers, non-reentrant: it needs no input that
    requires a gradient, as under LoRA on a frozen base."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(f"train.gradient_checkpointing: model type '{getattr(base.config, 'model_type', '?')}' "
                          "does not support it")
    if on:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.activation_checkpointing_disable()


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """The parameters the loop trains (and checkpoints), by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, data_seed: int) -> None:
    with atomic_path(run_dir / CHECKPOINT_DIR) as tmp:
        tmp.mkdir()
        save_file({n: p.detach().cpu().contiguous() for n, p in trainable(model).items()},
                  str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state()}, tmp / "state.pt")
        (tmp / "progress.json").write_text(json.dumps({"step": step, "data_seed": data_seed}))


# What reading a torn or damaged checkpoint file raises (JSON, safetensors, torch's zip and pickle formats).
_UNREADABLE = (ValueError, KeyError, TypeError, EOFError, RuntimeError, pickle.UnpicklingError, SafetensorError)


def _read_checkpoint(ckpt: Path) -> tuple[int, dict[str, torch.Tensor], dict]:
    """The step, trainable weights and optimiser/scheduler/RNG state of a checkpoint directory; raises one of
    ``_UNREADABLE`` when a file does not parse."""
    step = json.loads((ckpt / "progress.json").read_text())["step"]
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"progress.json: step {step!r} is not a step number")
    weights = load_file(str(ckpt / "trainable.safetensors"))
    state = torch.load(ckpt / "state.pt", weights_only=True)
    if not isinstance(state, dict) or not {"optimizer", "scheduler", "rng"} <= set(state):
        raise ValueError("state.pt: not an optimizer, scheduler and RNG state")
    return step, weights, state


def _load_checkpoint(run_dir: Path, model, optimizer, scheduler, main: bool) -> int:
    """Restore the checkpoint in ``run_dir`` and return its step (0 when there is none). One that does not parse is
    set aside by the main process (``checkpoint.damaged``, one warning line) and the run starts at step 0; one
    that parses but does not fit the model's trainable parameters is a one-line refusal."""
    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / "progress.json").is_file():
        return 0
    try:
        step, weights, state = _read_checkpoint(ckpt)
    except (*_UNREADABLE, FileNotFoundError) as exc:  # a file missing: torn, or (another process) set aside already
        if main:
            set_aside(ckpt, f"checkpoint does not parse ({type(exc).__name__}: {first_line(exc)}); training starts "
                            "at step 0")
        return 0
    params = trainable(model)
    mismatch = ForgetkitError(f"{ckpt}: checkpoint does not match this model's trainable parameters; "
                              "remove it or use another output directory")
    if set(weights) != set(params) or any(weights[n].shape != p.shape for n, p in params.items()):
        raise mismatch
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError) as exc:  # the optimiser state of other parameter groups
        raise mismatch from exc
    torch.set_rng_state(state["rng"])
    return step


def _truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps ≤ ``step`` (those a resumed run does not repeat)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def train_loop(
    model: torch.nn.Module,
    loss_fn: LossFn,
    data: PairedData,
    config: TrainConfig,
    pad_token_id: int,
    run_dir: str | Path | None = None,
    desc: str = "train",
    quiet: bool = False,
    after_step: Callable[[torch.nn.Module], None] | None = None,
    on_step: Callable[[int, torch.nn.Module, dict[str, float]], dict | None] | None = None,
    setting: str = "train",
) -> TrainStats:
    """Minimise ``loss_fn`` over ``data`` with ``model``'s trainable parameters.

    With ``run_dir``, the step log and checkpoints go there, and a checkpoint found there is
    resumed from. The model is left in eval mode, unwrapped, holding the final weights.
    ``after_step(model)`` runs after each optimiser step, under ``no_grad`` (e.g. adapter norm
    clipping); ``on_step(step, model, losses)`` (``losses``: the step's loss and its terms) may return
    values to add to that step's log line (e.g. a periodic evaluation; it must leave the model as it found it
    unless it asks to backtrack); a ``stop`` value among them ends the run after that step
    (``TrainStats.stopped`` holds it); a ``backtrack`` value S (one process only: the hook has put earlier
    weights back) scales the learning rate by S from the next step on and forgets the optimiser's moments.
    Before any step, ``config`` is checked against ``data`` (:func:`check_steps`) and its batches against the
    machine's memory (:func:`check_memory`); ``setting`` is its dotted prefix in their errors.
    """
    if len(data.driver()) == 0:
        raise ForgetkitError(f"{desc}: nothing to train on (empty set)")
    check_steps(data, config, setting)
    job = _Job(model, data, config, pad_token_id, Path(run_dir) if run_dir is not None else None, desc, setting)
    show = not quiet and job.accelerator.is_local_main_process
    bar = tqdm(total=job.total_steps, initial=job.start_step, desc=desc, disable=not show, leave=False)
    counts = {"tokens": 0, "examples": 0}
    first_loss = last_loss = float("nan")
    step, stop = job.start_step, None  # stop: an on_step hook's reason to end the run early (--until)
    with measure(job.accelerator.device) as cost:
        while step < job.total_steps:
            step_loss, terms = job.accumulate(step, loss_fn, counts)
            grad_norm, lr = job.optimise(step)
            if after_step is not None:
                with torch.no_grad():
                    after_step(job.raw)
            step += 1
            first_loss = step_loss if step == job.start_step + 1 else first_loss
            last_loss = step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}")
            stop = job.report(step, on_step, {"loss": step_loss, **terms}, grad_norm, lr)
            if stop:
                break
            if job.run_dir and config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and step < job.total_steps:
                _checkpoint(job.run_dir, step, job.raw, job.optimizer, job.scheduler, config, job.accelerator)
    bar.close()
    job.raw.eval()
    if config.gradient_checkpointing:
        _checkpointing(job.raw, False)
    return TrainStats(steps=step - job.start_step, examples=counts["examples"], tokens=counts["tokens"],
                      first_loss=first_loss, final_loss=last_loss, wall_time_s=cost.wall_time_s,
                      peak_memory_mb=cost.peak_memory_mb, memory_kind=cost.memory_kind,
                      trainable_parameters=sum(p.numel() for p in job.params), resumed_from_step=job.start_step,
                      stopped=stop)


class _Job:
    """One :func:`train_loop` run set up: accelerate's model, optimiser and schedule (resumed from the run's
    checkpoint), the seeded data order, and the step's parts: :meth:`accumulate` (forward and backward over the
    step's micro-batches), :meth:`optimise` (clip, guard, apply) and :meth:`report` (hook and log line)."""

    def __init__(self, model, data: PairedData, config: TrainConfig, pad_token_id: int, run_dir: Path | None,
                 desc: str, setting: str) -> None:
        self.data, self.config, self.pad, self.run_dir, self.desc = data, config, pad_token_id, run_dir, desc
        if AcceleratorState._shared_state.get("_mixed_precision", config.mixed_precision) != config.mixed_precision:
            AcceleratorState._reset_state()  # a second job in this process with another precision (keeps the group)
        self.accelerator = accelerator = Accelerator(cpu=on_cpu(), mixed_precision=config.mixed_precision)
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        check_memory(model, data, config, setting, self.world)
        set_seed(config.seed)
        self.params = list(trainable(model).values())
        optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        self.total_steps = _total_steps(config, len(data.driver()))
        from transformers import get_scheduler  # here: transformers' optimisation module pulls in peft and its models

        scheduler = get_scheduler(config.scheduler, optimizer, num_training_steps=self.total_steps,
                                  num_warmup_steps=round(config.warmup_ratio * self.total_steps))
        self.start_step = (_load_checkpoint(run_dir, model, optimizer, scheduler, accelerator.is_main_process)
                           if run_dir else 0)
        if config.gradient_checkpointing:
            _checkpointing(model, True)
        self.wrapped, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.raw = accelerator.unwrap_model(self.wrapped)
        self.separate_parts = accelerator.distributed_type == DistributedType.NO
        self.wrapped.train()
        self.driver_order = EpochOrder(len(data.driver()), config.seed)
        self.retain_bs = config.retain_batch_size or config.batch_size
        self.retain_order = EpochOrder(len(data.retain), config.seed + 1) if data.forget and data.retain else None
        self.log_path = run_dir / LOG_FILE if run_dir else None
        if self.log_path and accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
            _truncate_log(self.log_path, self.start_step)

    def _part(self, examples: Sequence[dict], indices: list[int]) -> dict[str, torch.Tensor]:
        mine = indices[self.rank::self.world] or indices[:1]
        return {k: v.to(self.accelerator.device) for k, v in collate([examples[i] for i in mine], self.pad).items()}

    def micro_batch(self, m: int) -> UnlearnBatch:
        """Micro-batch ``m`` of the seeded order (this process's share of it)."""
        data, size = self.data, self.config.batch_size
        idx = self.driver_order.take(m * size, size)
        if not data.forget:  # plain fine-tuning: the retain set drives
            return UnlearnBatch(forget=None, retain=self._part(data.retain, idx))
        batch = UnlearnBatch(forget=self._part(data.forget, idx))
        if data.alternate:
            batch.alternate = self._part(data.alternate, idx)
        if self.retain_order is not None:
            batch.retain = self._part(data.retain, self.retain_order.take(m * self.retain_bs, self.retain_bs))
        return batch

    def accumulate(self, step: int, loss_fn: LossFn, counts: dict) -> tuple[float, dict[str, float]]:
        """Forward and backward over step ``step``'s micro-batches, each loss part backpropagated as it comes
        (a NaN/inf loss stops the run before it is applied); the step's mean loss and terms over processes."""
        config, accelerator = self.config, self.accelerator
        step_loss, terms = 0.0, {}
        for k in range(config.grad_accum):
            batch = self.micro_batch(step * config.grad_accum + k)
            sync = k == config.grad_accum - 1
            with accelerator.autocast(), (accelerator.no_sync(self.wrapped) if not sync else nullcontext()):
                for loss, micro_terms in _loss_parts(loss_fn(self.wrapped, batch), self.separate_parts):
                    if not torch.isfinite(loss):
                        self.stop(step, f"{self.desc}: loss became {loss.item()} at step {step}")
                    accelerator.backward(loss / config.grad_accum)
                    # Logged values are means over processes (each saw its share of the batch).
                    names = list(micro_terms)
                    values = torch.tensor([loss.item(), *(micro_terms[n] for n in names)], device=accelerator.device)
                    values = accelerator.reduce(values, "mean").tolist() if self.world > 1 else values.tolist()
                    step_loss += values[0] / config.grad_accum
                    for name, value in zip(names, values[1:], strict=True):
                        terms[name] = terms.get(name, 0.0) + value / config.grad_accum
            for p in (batch.forget, batch.retain, batch.alternate):
                if p is not None:
                    counts["tokens"] += int(p["attention_mask"].sum())
                    counts["examples"] += int(p["input_ids"].shape[0])
        return step_loss, terms

    def optimise(self, step: int) -> tuple[float, float]:
        """Clip the gradient, stop on a non-finite (or ``abort_grad_norm``-exceeding) norm, apply the step; the
        norm before clipping and the learning rate the step used."""
        config = self.config
        clip = config.max_grad_norm if config.max_grad_norm else float("inf")
        grad_norm = float(self.accelerator.clip_grad_norm_(self.params, clip))
        if not math.isfinite(grad_norm) or (config.abort_grad_norm and grad_norm > config.abort_grad_norm):
            self.stop(step, f"{self.desc}: gradient norm {grad_norm:.4g} at step {step} "
                            f"(bound {config.abort_grad_norm})")
        lr = self.optimizer.param_groups[0]["lr"]  # what this step uses (a backtrack may have scaled it)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        return grad_norm, lr

    def report(self, step: int, on_step, losses: dict[str, float], grad_norm: float, lr: float) -> str | None:
        """After step ``step``: the main process runs the ``on_step`` hook (with or without a run directory) and
        logs the step's line (``losses``: the loss and its terms); every process then agrees on the hook's
        ``stop``, which is returned."""
        stop = None
        if self.accelerator.is_main_process:
            extra = (on_step(step, self.raw, losses) or {}) if on_step is not None else {}
            stop = extra.get("stop")
            if "backtrack" in extra:
                self.backtrack(extra["backtrack"])
            if self.log_path:
                weight_norm = math.sqrt(sum(float(p.detach().float().square().sum()) for p in self.params))
                record = {"step": step, **losses, "grad_norm": grad_norm, "weight_norm": weight_norm, "lr": lr,
                          **extra}
                with self.log_path.open("a") as fh:
                    fh.write(json.dumps(record) + "\n")
        if on_step is not None and self.world > 1:  # every process stops where the main process's hook said so
            flag = torch.tensor([1.0 if stop else 0.0], device=self.accelerator.device)
            stop = stop or ("stopped by the main process" if float(self.accelerator.reduce(flag, "sum")) else None)
        return stop

    def backtrack(self, scale: float) -> None:
        """After a hook put earlier weights back: the learning rate (and the schedule's base) times ``scale``, and
        no Adam moments of the abandoned trajectory."""
        if self.world > 1:
            raise ForgetkitError(f"{self.desc}: a hook asked to backtrack in a {self.world}-process run (one only)")
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        scheduler = getattr(self.scheduler, "scheduler", self.scheduler)
        for group in optimizer.param_groups:
            group["lr"] *= scale
        scheduler.base_lrs = [lr * scale for lr in scheduler.base_lrs]
        optimizer.state.clear()

    def stop(self, step: int, reason: str):
        """Keep the state before this step (the last good one) and raise :class:`DivergenceError`."""
        _stop(self.run_dir, step, self.raw, self.optimizer, self.scheduler, self.config, self.accelerator, reason)


def _checkpoint(run_dir, step, raw, optimizer, scheduler, config, accelerator) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _save_checkpoint(run_dir, step, raw, optimizer, scheduler, config.seed)
    accelerator.wait_for_everyone()


def _stop(run_dir, step, raw, optimizer, scheduler, config, accelerator, reason: str):
    """Keep the state before this step (the last good one) and raise DivergenceError."""
    optimizer.zero_grad()
    where = ""
    if run_dir is not None:
        if accelerator.is_main_process:
            _save_checkpoint(run_dir, step, raw, optimizer, scheduler, config.seed)
        where = f"; the last good state (after step {step}) is in {run_dir / CHECKPOINT_DIR}"
    raise DivergenceError(f"{reason}; stopped before applying it{where}")


def fine_tune(
    model: torch.nn.Module,
    data: TokenizedSet,
    config: TrainConfig,
    pad_token_id: int,
    desc: str = "train",
    quiet: bool = False,
    setting: str = "train",
) -> TrainStats:
    """Train ``model``'s trainable parameters on ``data`` with its own cross-entropy (in chunks of
    ``config.micro_batch_size`` rows when set); ``setting`` names ``config`` in notices and errors (e.g.
    ``target``: ``target.batch_size``)."""

    def cross_entropy(model, batch: UnlearnBatch):
        return ((part, {}) for part in cross_entropy_parts(model, batch.retain, config.micro_batch_size))

    return train_loop(model, cross_entropy, PairedData(retain=data.examples), config, pad_token_id, desc=desc,
                      quiet=quiet, setting=setting)
