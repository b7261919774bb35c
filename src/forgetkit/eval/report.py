"""How ``forgetkit eval`` prints an evaluation summary."""

from __future__ import annotations


def format_summary(summary: dict) -> str:
    """The table ``forgetkit eval`` prints."""
    lines = [f"{'set':<14}{'n':>6}{'prob':>8}{'rougeL':>8}{'truth':>8}{'ES':>8}{'EM':>8}"]
    for role, row in summary["sets"].items():
        tr, prob = row.get("truth_ratio"), row.get("probability")
        lines.append(f"{role:<14}{row['examples']:>6}{(f'{prob:.3f}' if prob is not None else '-'):>8}"
                     f"{row['rougeL_recall']:>8.3f}"
                     f"{(f'{tr:.3f}' if tr is not None else '-'):>8}{row['extraction_strength']:>8.3f}"
                     f"{row['exact_memorisation']:>8.3f}")
    lines.append("(truth: mean(min(R,1/R)) on forget, mean(max(0,1-R)) elsewhere; ES extraction strength; "
                 "EM exact memorisation)")
    fq = summary.get("forget_quality")
    match = f" (the oracle's forget set {summary['forget_set_match']})" if summary.get("forget_set_match") else ""
    lines.append(f"Forget quality: {fq:.4g}{match}" if fq is not None
                 else f"Forget quality: {summary.get('forget_quality_note', 'missing')}")
    mu = summary.get("model_utility")
    parts = ", ".join(summary.get("model_utility_components", {}))
    lines.append(f"Model utility: {mu:.4f} (harmonic mean of {parts})" if mu is not None
                 else f"Model utility: {summary.get('model_utility_note', 'missing (no utility set)')}")
    m = summary.get("mia", {})
    if "auc" in m:
        aucs = "  ".join(f"{k}={v:.3f}" for k, v in m["auc"].items())
        lines.append(f"MIA AUC forget vs holdout ({m['n_forget']} vs {m['n_holdout']}): {aucs}")
        lines.append("  (1.0 = forget still looks trained on, 0.5 = indistinguishable from never-trained holdout)")
        eps = m["empirical_epsilon"]
        lines.append(f"Empirical epsilon lower bound ({m['best_attack']}, 95% Clopper-Pearson): {eps['epsilon']:.3f}")
        pl = m.get("privleak")
        lines.append(f"PrivLeak: {pl:+.1f}%" if pl is not None else f"PrivLeak: {m.get('privleak_note')}")
    memo = summary.get("memorisation", {})
    if "verbatim_rougeL_f1" in memo:
        lines.append(f"Verbatim memorisation (ROUGE-L F1 of continuations): {memo['verbatim_rougeL_f1']:.3f}")
    if "canary_exposure_forget" in memo:
        base = memo.get("canary_exposure_holdout")
        extra = f" (never-trained canaries: {base:.2f})" if base is not None else ""
        lines.append(f"Canary exposure, forget people: {memo['canary_exposure_forget']:.2f} of "
                     f"{memo['canary_space_bits']:.1f} bits{extra}")
    if "utility" in summary:
        lines.append(f"Held-out perplexity: {summary['utility']['heldout_perplexity']:.2f}")
    c = summary.get("cost")
    if c:
        lines.append(f"Cost: {c['wall_time_s']:.1f}s, {c['tokens_per_s']:.0f} tokens/s "
                     f"({c['sequences_scored']} sequences scored, {c['prompts_generated']} generations)")
    return "\n".join(lines)
