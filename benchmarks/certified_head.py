"""Certified removal for a logistic head on a language model's hidden states (Guo et al. 2020), measured.

The task, a classification-style use of the LM: a detector of contact details in a model's output. From the
frozen target model's mean last hidden state over a record (question and answer), tell the records that
hold an email address, phone number or home address from the other facts. The head trains on the run's
people (full.jsonl) and is tested on held-out people's records (holdout10.jsonl). Deletion requests then
remove the forget split's people one person at a time: a Newton step while the (ε, δ) budget lasts, a
retraining (fresh noise) when a request would exceed it (``forgetkit.certified.convex_head``).

Reported: accuracy on the held-out people and on the remaining training records before and after the
requests, for the certified head and for a head retrained from scratch without the people (with the same
noise vector), their relative weight distance, the budget spent, the retrainings, and the time of a Newton
step against a retraining.

Usage (a run prepared with ``forgetkit prepare --config small target_mode=lora run_dir=runs/demo``)::

    python benchmarks/certified_head.py --run-dir runs/demo [--split forget10] [--epsilon 1] [--sigma 1]
        [--ledger runs/demo/ledger.sqlite] [--save runs/demo/certified_head]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from forgetkit.audit import ledger
from forgetkit.certified.convex_head import CertifiedHead, fit
from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of, records_hash
from forgetkit.io import dir_hash

CONTACT = ("email", "phone", "home_address")


def features(run: Path, records, batch_size: int = 64) -> torch.Tensor:
    """Each record's mean last hidden state in the target model (LoRA merged), scaled to unit norm, float64."""
    from forgetkit.models import load_model

    adapter = run / "target" if (run / "target" / "adapter_config.json").is_file() else None
    model, tokenizer = load_model(run / "base" if adapter else run / "target", adapter)
    if adapter:
        model = model.merge_and_unload()
    model.eval()
    rows = []
    with torch.no_grad():
        for i in range(0, len(records), batch_size):
            texts = [f"{r.question} {r.answer}" for r in records[i:i + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True)
            hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append((hidden * mask).sum(1) / mask.sum(1))
    X = torch.cat(rows).double()
    return X / X.norm(dim=1, keepdim=True)


def labels(records) -> torch.Tensor:
    return torch.tensor([1.0 if r.id.split("-", 1)[-1] in CONTACT else -1.0 for r in records], dtype=torch.float64)


def accuracy(w: torch.Tensor, X: torch.Tensor, y: torch.Tensor) -> float:
    return float((torch.sign(X @ w) == y).double().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-4)
    parser.add_argument("--sigma", type=float, default=1.0)
    parser.add_argument("--lam", type=float, default=1e-3)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--ledger", help="record every removal request in this audit ledger (SQLite)")
    parser.add_argument("--save", help="save the head after the requests (forgetkit.certified.convex_head)")
    args = parser.parse_args()

    run = Path(args.run_dir)
    train = read_records(run / "benchmark" / "full.jsonl")
    held = read_records(run / "benchmark" / f"holdout{args.split.removeprefix('forget')}.jsonl")
    people = list(dict.fromkeys(group_of(r.id) for r in read_records(run / "benchmark" / f"{args.split}.jsonl")))
    start = time.perf_counter()
    X, Xh = features(run, train), features(run, held)
    feature_s = time.perf_counter() - start
    y, yh = labels(train), labels(held)

    start = time.perf_counter()
    head = CertifiedHead(lam=args.lam, sigma=args.sigma, epsilon=args.epsilon, delta=args.delta).fit(X, y)
    fit_s = time.perf_counter() - start
    before = {"held_out": accuracy(head.w, Xh, yh), "train": accuracy(head.w, X, y)}
    ids = [r.id for r in train]
    newton_s, retrain_s = [], []
    model_hash = dir_hash(run / "target")
    for person in people:
        indices = [i for i, rid in enumerate(ids) if group_of(rid) == person]
        start = time.perf_counter()
        record = head.remove(indices)
        (newton_s if record["action"] == "newton" else retrain_s).append(time.perf_counter() - start)
        ids = [rid for rid in ids if group_of(rid) != person]
        if args.ledger:
            removed = records_hash([r for r in train if group_of(r.id) == person])
            ledger.record(args.ledger, head.audit_record(record, removed, model_hash, args.save))
    if args.save:
        head.save(args.save)
    start = time.perf_counter()
    exact = fit(head.X, head.y, args.lam, head.b)  # retraining without the people, the same noise vector
    retrain_once_s = time.perf_counter() - start
    result = {
        "run": str(run), "split": args.split, "people_removed": len(people), "records_removed": len(train) - len(ids),
        "features": {"dim": X.shape[1], "train": len(train), "held_out": len(held), "positive_share":
                     float((y > 0).double().mean()), "extract_s": feature_s},
        "certificate": {"epsilon": args.epsilon, "delta": args.delta, "sigma": args.sigma, "budget": head.budget},
        "before": before,
        "after": {"held_out": accuracy(head.w, Xh, yh), "remaining_train": accuracy(head.w, head.X, head.y)},
        "retrained": {"held_out": accuracy(exact, Xh, yh), "remaining_train": accuracy(exact, head.X, head.y)},
        "relative_distance_to_retrained": float((head.w - exact).norm() / exact.norm()),
        "requests": len(head.history), "newton_steps": len(newton_s), "retrainings": head.retrainings,
        "budget_spent_now": head.spent, "largest_residual_bound": max(h["residual_bound"] for h in head.history),
        "newton_step_s": sum(newton_s) / max(1, len(newton_s)), "retrain_s": retrain_once_s, "first_fit_s": fit_s,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
