"""Randomized smoothing of the prompt: a certified bound on how often the model still emits a forget answer.

For a forget question q with answer y and a noise distribution D over prompts, let
p(q) = P_{δ~D}[the model, greedy, emits y after the perturbed prompt q + δ]. "Emits y" is teacher-forced: every
answer token is the argmax after the perturbed prompt and the answer's previous tokens, which is exactly when
greedy decoding reproduces y (up to its end-of-turn token). Each question is scored under ``samples`` independent
draws of D; with k emissions of n draws, the one-sided Clopper-Pearson bound gives

- per question: p(q) ≤ upper(k, n) with confidence 1 − α/|Q| each, so that all of them hold together with
  confidence 1 − α (Bonferroni); the report gives the largest;
- for the set: the probability that the model emits the answer of a uniformly drawn forget question under
  D is at most upper(Σk, Σn) with confidence 1 − α.

Noise kinds (``kind:scale``):
- ``embed:σ``: Gaussian noise on the prompt's input embeddings, σ in units of the embedding table's
  root-mean-square entry;
- ``tokens:ρ``: each prompt token (the chat template's included) replaced by a uniformly drawn vocabulary
  token with probability ρ.
The answer's positions are never perturbed. Cost: ``samples`` teacher-forced passes per question (no
generation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from forgetkit.data.formatting import IGNORE_INDEX, collate, encode_qa, pad_id
from forgetkit.data.records import QARecord
from forgetkit.eval.mia import clopper_pearson
from forgetkit.eval.settings import parse_noise
from forgetkit.models.logits import answer_logits


def _emitted(model, part: dict[str, torch.Tensor], embeds: torch.Tensor | None) -> torch.Tensor:
    """``[B]`` bool: every answer token is the argmax (teacher-forced) for each row."""
    logits, targets, rows = answer_logits(model, part, embeds)
    wrong = (logits.argmax(-1) != targets).long()
    return torch.zeros(len(part["labels"]), dtype=torch.long, device=wrong.device).index_add(0, rows, wrong) == 0


@torch.no_grad()
def smoothed_emission(model, tokenizer, forget: Sequence[QARecord], noise: str, samples: int = 100,
                      alpha: float = 0.05, batch_size: int = 32, seed: int = 0, progress=None) -> dict:
    """The bounds of the module docstring for ``forget`` under ``noise``, with the unperturbed emission rate."""
    kind, scale = parse_noise(noise)
    model.eval()
    device = next(model.parameters()).device
    embedding = model.get_input_embeddings()
    rms = float(embedding.weight.detach().float().square().mean().sqrt())
    generator = torch.Generator(device="cpu").manual_seed(seed)
    pad = pad_id(tokenizer)
    counts, clean = [], 0
    for record in forget:
        ids, labels = encode_qa(tokenizer, record.question, record.answer)
        example = {"input_ids": ids, "labels": labels}
        one = {k: v.to(device) for k, v in collate([example], pad).items()}
        clean += int(_emitted(model, one, None)[0])
        prompt = torch.tensor([label == IGNORE_INDEX for label in labels], device=device)  # the answer: untouched
        hits = 0
        for start in range(0, samples, batch_size):
            n = min(batch_size, samples - start)
            part = {k: v.expand(n, -1) for k, v in one.items()}
            if kind == "embed":
                embeds = embedding(part["input_ids"])
                noise_t = torch.randn(embeds.shape, generator=generator).to(device=device, dtype=embeds.dtype)
                embeds = embeds + scale * rms * noise_t * prompt[None, :, None]
                hits += int(_emitted(model, part, embeds).sum())
            else:
                swap = (torch.rand(part["input_ids"].shape, generator=generator).to(device) < scale) & prompt
                random_ids = torch.randint(len(tokenizer), part["input_ids"].shape, generator=generator).to(device)
                part = {**part, "input_ids": torch.where(swap, random_ids, part["input_ids"])}
                hits += int(_emitted(model, part, None).sum())
        counts.append(hits)
        if progress is not None:
            progress.update(1)
    n_q = len(counts)
    per_question = [clopper_pearson(k, samples, alpha / max(n_q, 1))[1] for k in counts]
    pooled = clopper_pearson(sum(counts), samples * n_q, alpha)[1] if n_q else None
    return {"noise": noise, "samples_per_question": samples, "questions": n_q, "alpha": alpha,
            "unperturbed_emission_rate": clean / n_q if n_q else None,
            "emission_rate": sum(counts) / (samples * n_q) if n_q else None,
            "set_upper_bound": pooled, "max_question_upper_bound": max(per_question) if per_question else None,
            "forward_passes": samples * n_q + n_q}
