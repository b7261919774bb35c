"""One Gauss-Newton product on a real model: the textbook double-backward trick against forgetkit's, side by side.

The curvature products are the whole cost of LLMEraser's CG solve and of influence_peft's LiSSA phases.
On the target adapter of a prepared run (``forgetkit prepare --config smollm2``: SmolLM2-135M-Instruct,
a LoRA r 32 adapter, 9.8 M parameters) and one batch of forget examples, each in a fresh spawned process
from the same weights and the same vector v:

- bare: J·v by the double-backward trick over the full ``[B, T, V]`` logits (u ↦ Jᵀu with a graph, then
  its gradient in u), then Jᵀ·H·J·v by one more backward: what forgetkit did before;
- forgetkit: ``influence.Curvature`` (J·v by forward-mode differentiation, no graph kept; the head at
  the labelled positions only; then one backward).

It reports each block's wall time, peak resident memory (and what was resident before it), and the
relative difference of the two products.

Usage::

    python benchmarks/influence_real_model.py --run-dir runs/smollm2 [--batch-size 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.utils import logging as hf_logging

from forgetkit.cost import measure, rss_mb
from forgetkit.data.formatting import IGNORE_INDEX, collate, pad_id, tokenize_qa
from forgetkit.data.readers import read_records
from forgetkit.influence import Curvature
from forgetkit.influence.curvature import flatten, unflatten
from forgetkit.models import load_model


def _bare_product(model, params, batch, v: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = (batch["labels"][:, 1:] != IGNORE_INDEX).unsqueeze(-1).to(logits.dtype)
    u = torch.zeros_like(logits, requires_grad=True)
    jt_u = torch.autograd.grad(logits, params, grad_outputs=u, create_graph=True)
    jv = torch.autograd.grad(jt_u, u, grad_outputs=unflatten(v, params), retain_graph=True)[0]
    p = torch.softmax(logits.detach(), dim=-1)
    h_jv = (p * jv - p * (p * jv).sum(-1, keepdim=True)) * mask / mask.sum()
    return flatten(torch.autograd.grad(logits, params, grad_outputs=h_jv))


def _block(run: Path, impl: str, batch_size: int, repeats: int) -> dict:
    hf_logging.set_verbosity_error()
    model, tokenizer = load_model(run / "base", adapter=run / "target")
    model.eval()
    named = [(n, p) for n, p in model.named_parameters() if "lora_" in n]
    for _, p in named:
        p.requires_grad_(True)
    params = [p for _, p in named]
    records = read_records(run / "benchmark" / "forget10.jsonl")[:batch_size]
    batch = collate(tokenize_qa(tokenizer, records, 128).examples, pad_id(tokenizer))
    v = torch.randn(sum(p.numel() for p in params), generator=torch.Generator().manual_seed(0))
    curvature = Curvature(model, params, [batch])
    before = rss_mb()
    times = []
    with measure() as block:
        for _ in range(repeats):
            start = time.perf_counter()
            if impl == "bare":
                with sdpa_kernel(SDPBackend.MATH):
                    out = _bare_product(model, params, batch, v)
            else:
                out = curvature(v)
            times.append(time.perf_counter() - start)
    return {"impl": impl, "product_s": min(times), "peak_mb": block.peak_memory_mb, "resident_before_mb": before,
            "tokens": int(batch["attention_mask"].sum()), "shape": list(batch["input_ids"].shape),
            "parameters": len(v), "product": out.detach()}


def main(argv: list[str] | None = None) -> int:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/smollm2")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    got = {}
    for impl in ("bare", "forgetkit"):
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
            got[impl] = pool.submit(_block, Path(args.run_dir), impl, args.batch_size, args.repeats).result()
    bare, ours = got["bare"], got["forgetkit"]
    difference = float((ours["product"] - bare["product"]).norm() / bare["product"].norm())
    print(f"One Gauss-Newton product over {bare['parameters']:,} adapter parameters, batch {bare['shape']} "
          f"({bare['tokens']} tokens), {'cuda' if torch.cuda.is_available() else 'cpu'}, best of {args.repeats}:")
    print("| product | s | peak MB | resident before MB | block's own MB |")
    print("|---|---|---|---|---|")
    for name, row in (("bare (double backward, full logits)", bare), ("forgetkit (forward mode, labelled)", ours)):
        print(f"| {name} | {row['product_s']:.1f} | {row['peak_mb']:.0f} | {row['resident_before_mb']:.0f} | "
              f"{row['peak_mb'] - row['resident_before_mb']:.0f} |")
    print(f"time × bare {ours['product_s'] / bare['product_s']:.2f}; block memory × bare "
          f"{(ours['peak_mb'] - ours['resident_before_mb']) / (bare['peak_mb'] - bare['resident_before_mb']):.2f}; "
          f"relative difference of the products {difference:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
