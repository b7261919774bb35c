"""Stability of GradDiff with plain, clipped and sine-bounded LoRA across ranks (and ω): the bounded-LoRA study.

Every run is ``forgetkit unlearn --run RUN --split SPLIT --method graddiff adapter=KIND lora.r=R
lora.alpha=2R [lora.sine_omega=W] train.lr=LR train.epochs=E --eval-every N``: the same steps and
learning-rate grid for every variant (α = 2r keeps the LoRA scaling α/r = 2 at every rank).
The step log holds the forget and retain losses, the gradient norm before clipping and the adapter
weight norm at every step, and Forget Quality / Model Utility from a quick evaluation every N steps.

Runs are cached: a finished run (``summary.json``) or a diverged one (``diverged.json``) is not
rerun, and an interrupted one resumes from its checkpoint. Writes ``RESULTS/table.md``,
``RESULTS/runs.json`` and the plots ``grad_norm.png``, ``forget_quality.png``, ``fq_vs_mu.png``.

Usage::

    python benchmarks/bounded_study.py --run-dir runs/small [--out runs/small/bounded] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from forgetkit.io import write_json

DIVERGED_EXIT = 3
BATCH_SIZE = 16


@dataclass(frozen=True)
class Variant:
    split: str
    kind: str  # lora, clipped, sine
    rank: int
    omega: float | None
    lr: float

    @property
    def name(self) -> str:
        omega = f"-w{self.omega:g}" if self.omega is not None else ""
        return f"{self.split}-{self.kind}{omega}-r{self.rank}-lr{self.lr:g}"


def grid(splits: list[str], ranks: list[int], omegas: list[float], default_omega: float, omega_rank: int,
         lrs: list[float], forget01_rank: int) -> list[Variant]:
    """Plain, clipped and sine (default ω) at every rank; sine's other ω at ``omega_rank``; forget01 at one rank."""
    variants = []
    for split, lr in itertools.product(splits, lrs):
        split_ranks = ranks if split == "forget10" else [forget01_rank]
        for rank in split_ranks:
            variants += [Variant(split, "lora", rank, None, lr), Variant(split, "clipped", rank, None, lr),
                         Variant(split, "sine", rank, default_omega, lr)]
            if rank == omega_rank and split == "forget10":
                variants += [Variant(split, "sine", rank, w, lr) for w in omegas if w != default_omega]
    return variants


def epochs_for(run_dir: Path, split: str, steps: int, batch_size: int = BATCH_SIZE) -> float:
    """The epochs that make ``steps`` optimiser steps on ``split`` (every split gets the same steps)."""
    n = sum(1 for line in (run_dir / "benchmark" / f"{split}.jsonl").open() if line.strip())
    return steps / math.ceil(n / batch_size)


def run_one(variant: Variant, run_dir: Path, out_root: Path, steps: int, eval_every: int, quiet: bool) -> Path:
    out = out_root / variant.name
    if (out / "summary.json").is_file() or (out / "diverged.json").is_file():
        return out
    epochs = epochs_for(run_dir, variant.split, steps)
    overrides = [f"adapter={variant.kind}", f"lora.r={variant.rank}", f"lora.alpha={2 * variant.rank}",
                 f"train.lr={variant.lr}", f"train.epochs={epochs}", f"train.batch_size={BATCH_SIZE}",
                 "train.checkpoint_every=20"]
    if variant.omega is not None:
        overrides.append(f"lora.sine_omega={variant.omega}")
    forgetkit = str(Path(sys.executable).parent / "forgetkit")
    cmd = [forgetkit, *(["--quiet"] if quiet else []), "unlearn", "--run", str(run_dir), "--split", variant.split,
           "--method", "graddiff", *overrides, "--eval-every", str(eval_every), "--out", str(out)]
    print(f"[bounded study] {variant.name}", flush=True)
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True)
    if result.returncode == DIVERGED_EXIT:
        write_json(out / "diverged.json", {"message": result.stderr.strip().splitlines()[-1]})
    elif result.returncode != 0:
        sys.stderr.write(result.stderr)
        raise SystemExit(f"{variant.name}: forgetkit unlearn failed (exit {result.returncode})")
    return out


def summarise(variant: Variant, out: Path) -> dict:
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in log if r.get("forget_quality") is not None]
    best = max(evals, key=lambda r: r["forget_quality"]) if evals else None
    last = evals[-1] if evals else None
    return {
        "name": variant.name, "split": variant.split, "kind": variant.kind, "rank": variant.rank,
        "omega": variant.omega, "lr": variant.lr, "steps": len(log),
        "diverged": (out / "diverged.json").is_file(),
        "best_fq": best and best["forget_quality"], "mu_at_best": best and best["model_utility"],
        "best_step": best and best["step"],
        "final_fq": last and last["forget_quality"], "final_mu": last and last["model_utility"],
        "first_grad_norm": log[0]["grad_norm"], "max_grad_norm": max(r["grad_norm"] for r in log),
        "final_weight_norm": log[-1]["weight_norm"], "first_weight_norm": log[0]["weight_norm"],
        "max_weight_norm": max(r["weight_norm"] for r in log),
        "final_forget_ce": -log[-1].get("neg_forget_ce", float("nan")), "final_retain_ce": log[-1].get("retain_ce"),
        "log": log,
    }


def table(rows: list[dict]) -> str:
    def num(x, fmt):
        return "–" if x is None else format(x, fmt)

    lines = ["| split | adapter | rank | lr | best FQ (step) | MU at best | final FQ | final MU | "
             "grad norm: first → max (growth) | weight norm: first → final | final forget CE | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kind = r["kind"] + (f" ω={r['omega']:g}" if r["omega"] is not None else "")
        lines.append(f"| {r['split']} | {kind} | {r['rank']} | {r['lr']:g} | {num(r['best_fq'], '.3g')} "
                     f"({r['best_step']}) | {num(r['mu_at_best'], '.3f')} | {num(r['final_fq'], '.3g')} | "
                     f"{num(r['final_mu'], '.3f')} | {r['first_grad_norm']:.3g} → {r['max_grad_norm']:.3g} "
                     f"(×{r['max_grad_norm'] / r['first_grad_norm']:.0f}) | "
                     f"{r['first_weight_norm']:.3g} → {r['final_weight_norm']:.3g} | "
                     f"{r['final_forget_ce']:.3g} | {'yes' if r['diverged'] else 'no'} |")
    return "\n".join(lines)


def plots(rows: list[dict], out_dir: Path, split: str, omega: float) -> list[Path]:
    """Curves of the rank sweep (sine at ``omega``) per learning rate, and FQ against MU of every evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["split"] == split]
    lrs = sorted({r["lr"] for r in rows})
    colours = {"lora": "tab:red", "clipped": "tab:orange", "sine": "tab:blue"}
    written = []
    for key, ylabel, fname in (("grad_norm", "gradient norm (before clipping)", "grad_norm.png"),
                               ("forget_quality", "Forget Quality (quick eval)", "forget_quality.png")):
        fig, axes = plt.subplots(1, len(lrs), figsize=(6 * len(lrs), 4.2), squeeze=False)
        for ax, lr in zip(axes[0], lrs, strict=True):
            for r in rows:
                if r["lr"] != lr or (r["kind"] == "sine" and r["omega"] != omega):
                    continue
                points = [(x["step"], x[key]) for x in r["log"] if x.get(key) is not None]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, color=colours[r["kind"]], alpha=0.35 + 0.65 * r["rank"] / 32,
                            marker="o" if key == "forget_quality" else None, markersize=3,
                            label=f"{r['kind']} r={r['rank']}")
            ax.set_yscale("log")
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel)
            ax.set_title(f"GradDiff, {split}, lr {lr:g}")
            ax.legend(fontsize=7, ncol=3)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        written.append(out_dir / fname)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        points = [(x["model_utility"], x["forget_quality"]) for x in r["log"] if x.get("forget_quality") is not None]
        if points:
            mu, fq = zip(*points, strict=True)
            ax.scatter(mu, fq, s=10, color=colours[r["kind"]], alpha=0.6,
                       label=r["kind"] if r["kind"] not in ax.get_legend_handles_labels()[1] else None)
    ax.set_yscale("log")
    ax.set_xlabel("Model Utility")
    ax.set_ylabel("Forget Quality")
    ax.set_title(f"GradDiff on {split}: every evaluation of every run")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "fq_vs_mu.png", dpi=110)
    plt.close(fig)
    written.append(out_dir / "fq_vs_mu.png")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", default="runs/small")
    parser.add_argument("--out", help="results directory (default RUN/bounded)")
    parser.add_argument("--splits", nargs="+", default=["forget10", "forget01"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[4, 8, 16, 32])
    parser.add_argument("--omegas", nargs="+", type=float, default=[10, 30, 100, 300])
    parser.add_argument("--omega", type=float, default=100.0, help="sine's ω at every rank")
    parser.add_argument("--omega-rank", type=int, default=8, help="the rank at which ω is swept")
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 1e-2])
    parser.add_argument("--steps", type=int, default=130, help="optimiser steps of every run (batch 16)")
    parser.add_argument("--eval-every", type=int, default=26)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    out_root = Path(args.out) if args.out else run_dir / "bounded"
    out_root.mkdir(parents=True, exist_ok=True)
    variants = grid(args.splits, args.ranks, args.omegas, args.omega, args.omega_rank, args.lrs,
                    forget01_rank=args.omega_rank)
    rows = [summarise(v, run_one(v, run_dir, out_root, args.steps, args.eval_every, args.quiet)) for v in variants]
    text = table(rows)
    (out_root / "table.md").write_text(text + "\n")
    write_json(out_root / "runs.json", [{k: v for k, v in r.items() if k != "log"} for r in rows])
    print(text)
    if "forget10" in args.splits:
        for path in plots(rows, out_root, "forget10", args.omega):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
