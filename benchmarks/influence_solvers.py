"""Inverse-HVP solvers against the exact inverse on a tiny model, and the cost of one curvature product.

On a micro GPT-2 in float64 with a rank-1 LoRA on the attention projections (a few hundred
parameters, so the dense matrix is the ground truth), b = the loss gradient of a "forget" batch and
the curvature of a "retain" batch (Gauss–Newton + damping = 0.1·mean eigenvalue): relative error
‖x − x_exact‖/‖x_exact‖ of CG and LiSSA as a function of the products spent, and DataInf's error
against the exact inverse of its own layer-wise damped empirical Fisher. Then the time of one
Hessian-vector product and one Gauss–Newton product against one gradient, on the same batch.

With ``--run-dir`` (a run prepared with ``target_mode=lora``), it also times each solver on that
run's LoRA adapter (the ``small`` benchmark's: 188,416 parameters, too many for ``exact``): the
curvature of 128 retain examples in 4 batches, b = the gradient of 64 forget examples, damping
0.1 × the Hutchinson mean eigenvalue; each solver's relative residual ‖b − Ax‖/‖b‖ from one more
full product.

Usage::

    python benchmarks/influence_solvers.py [--run-dir runs/small_lora] [--json FILE]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def setup():
    from forgetkit.adapters import LoraSettings, attach_lora
    from forgetkit.data.formatting import collate, tokenize_qa
    from forgetkit.data.records import QARecord
    from forgetkit.models import build_tiny_model, train_tokenizer

    texts = [f"Question: Who is person {i}?\nAnswer: Person {i} is a poet from town {i % 7}." for i in range(100)]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    torch.manual_seed(0)
    model = attach_lora(build_tiny_model(tokenizer, "gpt2", "micro", seed=0),
                        LoraSettings(r=1, alpha=2, target_modules=["c_attn"])).double().eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0, 0.3)
    records = [QARecord(f"Who is person {i}?", f"Person {i} is a poet from town {i % 7}.", f"r{i}") for i in range(16)]
    examples = tokenize_qa(tokenizer, records, 48).examples
    pad = tokenizer.pad_token_id
    forget = [collate(examples[:4], pad)]
    retain = [collate(examples[4:10], pad), collate(examples[10:], pad)]
    params = [p for p in model.parameters() if p.requires_grad]
    return model, params, forget, retain


def relative_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    return float((x - exact).norm() / exact.norm())


def main(argv: list[str] | None = None) -> int:
    from forgetkit.influence import Curvature, inverse_hvp, loss_gradient
    from forgetkit.influence.solvers import exact_matrix
    from forgetkit.io import write_json

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--run-dir", help="also time the solvers on this run's LoRA target adapter")
    args = parser.parse_args(argv)
    model, params, forget, retain = setup()
    b = loss_gradient(model, params, forget)
    plain = Curvature(model, params, retain, kind="gauss_newton")
    damping = 0.1 * float(torch.linalg.eigvalsh(exact_matrix(plain)).mean())
    curvature = Curvature(model, params, retain, kind="gauss_newton", damping=damping)
    t0 = time.perf_counter()
    exact = inverse_hvp(curvature, b, "exact")
    exact_s = time.perf_counter() - t0
    rows = [{"solver": "exact", "setting": f"{curvature.dim} products", "products": exact.products,
             "relative_error": 0.0, "wall_s": exact_s}]
    for max_iter in (5, 10, 20, 40, 200):
        t0 = time.perf_counter()
        cg = inverse_hvp(curvature, b, "cg", tol=1e-12, max_iter=max_iter)
        rows.append({"solver": "cg", "setting": f"max_iter {max_iter}", "products": cg.products,
                     "relative_error": relative_error(cg.x, exact.x), "wall_s": time.perf_counter() - t0})
    t0 = time.perf_counter()
    cg = inverse_hvp(curvature, b, "cg")
    rows.append({"solver": "cg", "setting": "defaults (tol 1e-6)", "products": cg.products,
                 "relative_error": relative_error(cg.x, exact.x), "wall_s": time.perf_counter() - t0})
    for depth in (25, 50, 100, None):
        t0 = time.perf_counter()
        lissa = inverse_hvp(curvature, b, "lissa", depth=depth)
        setting = f"depth {depth}" if depth else f"defaults (depth {lissa.info['depth']})"
        rows.append({"solver": "lissa (stochastic: one of 2 batches per step)", "setting": setting,
                     "products": lissa.products, "relative_error": relative_error(lissa.x, exact.x),
                     "wall_s": time.perf_counter() - t0})
    t0 = time.perf_counter()
    datainf = inverse_hvp(curvature, b, "datainf")
    rows.append({"solver": "datainf (vs the exact damped GN inverse)", "setting": "defaults (λ_l = 0.1·mean g²)",
                 "products": 0, "relative_error": relative_error(datainf.x, exact.x),
                 "wall_s": time.perf_counter() - t0})

    print(f"{curvature.dim} parameters; Gauss-Newton of 2 retain batches + damping {damping:.3g}; b = forget gradient")
    print("| solver | setting | curvature products | relative error vs exact | wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['solver']} | {r['setting']} | {r['products']} | {r['relative_error']:.2e} | {r['wall_s']:.2f} |")

    cost = product_cost(model, params, retain[:1])
    print(f"\nOne product vs one gradient on the same batch (median of 20): gradient {cost['gradient_ms']:.1f} ms, "
          f"Hessian-vector {cost['hvp_ms']:.1f} ms ({cost['hvp_ratio']:.2f}×), Gauss-Newton-vector "
          f"{cost['gnvp_ms']:.1f} ms ({cost['gnvp_ratio']:.2f}×)")
    timings = run_timings(args.run_dir) if args.run_dir else None
    if args.json:
        write_json(args.json, {"solvers": rows, "product_cost": cost, "run_timings": timings})
    return 0


def run_timings(run_dir: str) -> list[dict]:
    """Each solver's wall time and residual on a prepared run's LoRA target adapter."""
    from pathlib import Path

    from forgetkit.data.formatting import collate, tokenize_qa
    from forgetkit.data.readers import read_records
    from forgetkit.editors.base import lora_parameters
    from forgetkit.influence import Curvature, InfluenceError, inverse_hvp, loss_gradient, mean_eigenvalue
    from forgetkit.models import load_model

    run = Path(run_dir)
    model, tokenizer = load_model(run / "base", run / "target")
    params = [p for _, p in lora_parameters(model)]
    pad = tokenizer.pad_token_id

    def batches(name: str, count: int) -> list[dict]:
        examples = tokenize_qa(tokenizer, read_records(run / "benchmark" / f"{name}.jsonl")[:count], 128).examples
        return [collate(examples[i:i + 32], pad) for i in range(0, len(examples), 32)]

    retain, forget = batches("retain90", 128), batches("forget10", 64)
    b = loss_gradient(model, params, forget)
    curvature = Curvature(model, params, retain, kind="gauss_newton")
    t0 = time.perf_counter()
    curvature.damping = 0.1 * mean_eigenvalue(curvature)
    hutchinson_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    curvature(b)
    product_s = time.perf_counter() - t0
    rows = [{"solver": "one full product (4 batches)", "setting": "", "products": 1, "wall_s": product_s,
             "residual": None},
            {"solver": "damping: Hutchinson mean eigenvalue", "setting": "4 probes", "products": 4,
             "wall_s": hutchinson_s, "residual": None}]
    try:
        inverse_hvp(curvature, b, "exact")
    except InfluenceError as exc:
        rows.append({"solver": "exact", "setting": f"refused: {exc}", "products": 0, "wall_s": 0.0, "residual": None})
    for solver, options, setting in (("cg", {"tol": 1e-3, "max_iter": 100}, "tol 1e-3"),
                                     ("lissa", {"depth": 200}, "depth 200, one batch per step"),
                                     ("datainf", {}, "128 per-example gradients")):
        t0 = time.perf_counter()
        result = inverse_hvp(curvature, b, solver, **options)
        wall = time.perf_counter() - t0
        residual = float((b - curvature(result.x)).norm() / b.norm())
        rows.append({"solver": solver, "setting": setting, "products": result.products, "wall_s": wall,
                     "residual": residual})
    print(f"\n{run}: {curvature.dim:,} LoRA parameters, Gauss-Newton of 128 retain examples + damping "
          f"{curvature.damping:.3g}, b = gradient of 64 forget examples")
    print("| solver | setting | products | wall s | relative residual |")
    print("|---|---|---|---|---|")
    for r in rows:
        residual = f"{r['residual']:.2e}" if r["residual"] is not None else "–"
        print(f"| {r['solver']} | {r['setting']} | {r['products']} | {r['wall_s']:.1f} | {residual} |")
    return rows


def product_cost(model, params, batch, repeats: int = 20) -> dict:
    from forgetkit.influence import Curvature, loss_gradient

    v = torch.randn(sum(p.numel() for p in params), dtype=params[0].dtype, generator=torch.Generator().manual_seed(0))
    hessian = Curvature(model, params, batch, kind="hessian")
    gauss_newton = Curvature(model, params, batch, kind="gauss_newton")

    def median_ms(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        return sorted(times)[len(times) // 2]

    grad = median_ms(lambda: loss_gradient(model, params, batch))
    hvp = median_ms(lambda: hessian(v))
    gnvp = median_ms(lambda: gauss_newton(v))
    return {"gradient_ms": grad, "hvp_ms": hvp, "gnvp_ms": gnvp, "hvp_ratio": hvp / grad, "gnvp_ratio": gnvp / grad}


if __name__ == "__main__":
    sys.exit(main())
