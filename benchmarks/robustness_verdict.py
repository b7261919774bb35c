"""Input-based against model-based unlearning under attack: one table from a bench directory's cells.

For every done cell (the target and oracle rows have no attacks) it prints forget ROUGE-L and forget probability
after unlearning and under each attack the cell ran (the four jailbreaks, the prompt attack, 4-bit quantization,
relearning's after), the worst attack's ROUGE-L and its rise over the unattacked value, and Model Utility. The
registry says which methods are input-based (kind ``input``: no weight changes); the last lines average the
worst-attack ROUGE-L of each kind. The completion jailbreak measures the answer after its given first third, so
its numbers compare across methods, not with the unattacked column.

Usage::

    python benchmarks/robustness_verdict.py runs/smollm2/bench/smollm2_robust
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from forgetkit import unlearn  # noqa: F401  (registers every unlearner)
from forgetkit.registry import INPUT, UNLEARNERS

ATTACKS = [("jailbreak_roleplay", "roleplay"), ("jailbreak_ignore_instructions", "ignore"),
           ("jailbreak_multi_turn", "multi-turn"), ("jailbreak_completion", "completion"), ("prompt", "prompt"),
           ("quantize_4", "4-bit"), ("relearn", "relearn")]


def _attacked(attacks: dict, name: str) -> dict | None:
    value = attacks.get(name)
    if name == "relearn" and value:
        return value.get("after")
    return value if isinstance(value, dict) and "forget_rouge_l" in value else None


def main(argv: list[str] | None = None) -> int:
    bench = Path((argv or sys.argv[1:])[0])
    rows, worst_by_kind = [], {"input-based": [], "model-based": []}
    for path in sorted(bench.glob("cells/*/result.json")):
        result = json.loads(path.read_text())
        cell, m, attacks = result["cell"], result.get("metrics") or {}, result.get("attacks") or {}
        if result.get("status") != "done" or not attacks:
            continue
        kind = "input-based" if UNLEARNERS.get(cell["method"]) and UNLEARNERS[cell["method"]].kind == INPUT \
            else "model-based"
        under = {label: _attacked(attacks, name) for name, label in ATTACKS}
        rouge = [v["forget_rouge_l"] for label, v in under.items() if v and label not in ("relearn",)]
        worst = max(rouge) if rouge else None
        worst_by_kind[kind].append(worst)
        rows.append((cell["variant"], kind, m, under, worst))
    labels = [label for _, label in ATTACKS]
    print("| method | kind | MU | forget ROUGE-L | " + " | ".join(f"{a} ROUGE-L" for a in labels)
          + " | worst ROUGE-L | rise | forget prob | " + " | ".join(f"{a} prob" for a in labels) + " |")
    print("|---|---|" + "---:|" * (4 + 2 * len(labels) + 1))

    def f(x) -> str:
        return "–" if x is None else f"{x:.3f}"

    for variant, kind, m, under, worst in rows:
        base = m.get("forget_rouge_l")
        rise = None if worst is None or base is None else worst - base
        print(f"| {variant} | {kind} | {f(m.get('model_utility'))} | {f(base)} | "
              + " | ".join(f((under[a] or {}).get("forget_rouge_l")) for a in labels)
              + f" | {f(worst)} | {f(rise)} | {f(m.get('forget_probability'))} | "
              + " | ".join(f((under[a] or {}).get("forget_probability")) for a in labels) + " |")
    for kind, values in worst_by_kind.items():
        values = [v for v in values if v is not None]
        if values:
            print(f"\n{kind}: worst-attack forget ROUGE-L, mean over {len(values)} methods: "
                  f"{statistics.mean(values):.3f} (min {min(values):.3f}, max {max(values):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
