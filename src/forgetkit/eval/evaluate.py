"""``forgetkit eval``: every metric of a model on a forget set and its companions, in one pass.

Which sets: the forget set (QA), and where given, a retain sample, a holdout set (same
distribution, never trained: the non-members of membership inference), world facts and real
authors (utility sets with one true and several false answers), forget texts (verbatim
memorisation), held-out texts (perplexity) and canaries (exposure): an :class:`EvalData`
(:mod:`forgetkit.eval.sets`, which finds them all in a built-in benchmark directory).

How: every text variant of every example (answer, paraphrased answer, each perturbed answer,
the answer after a paraphrased question, canary candidates, held-out texts) is tokenised into
one list and scored by one length-sorted, batched teacher-forced pass
(:mod:`forgetkit.eval.token_stats`); generations are batched with left padding and the KV
cache. Under ``accelerate launch`` both are sharded across processes and gathered in order.

Output: a per-example log in TOFU's layout (:mod:`forgetkit.eval.tofu`; examples keyed by record
id, with a content hash; question and answer text only with ``include_text``) and a summary.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from forgetkit.cost import refuse_beyond_memory
from forgetkit.data.formatting import IGNORE_INDEX, encode_qa, pad_id, prompt_ids
from forgetkit.data.records import records_hash
from forgetkit.errors import ForgetkitError
from forgetkit.eval import memorisation as mem
from forgetkit.eval import mia, tofu
from forgetkit.eval.generation import greedy_continuations
from forgetkit.eval.sets import EvalData
from forgetkit.eval.settings import EvalSettings
from forgetkit.eval.token_stats import TokenStats, score_examples
from forgetkit.models.logits import context_length
from forgetkit.models.memory import hidden_state_bytes

log = logging.getLogger("forgetkit")
MIA_ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference", "gradnorm")


class _Shards:
    """Runs a list-in, list-out function on this process's share of the items and gathers all.

    Under ``accelerate launch`` each process takes a contiguous slice, so the gathered list is in
    input order; in a single process it is a plain call.
    """

    def __init__(self, accelerator) -> None:
        self.accelerator = accelerator

    @property
    def distributed(self) -> bool:
        return self.accelerator is not None and self.accelerator.num_processes > 1

    def map(self, fn: Callable[[list], list], items: Sequence) -> list:
        if not self.distributed:
            return fn(list(items))
        from accelerate.utils import gather_object

        per = math.ceil(len(items) / self.accelerator.num_processes)
        start = self.accelerator.process_index * per
        mine = list(items[start : start + per])
        return gather_object(fn(mine) if mine else [])


class _Sequences:
    """Every text variant to score, registered under a key, tokenised once."""

    def __init__(self, tokenizer, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.keys: list[tuple] = []
        self.examples: list[dict] = []
        self.truncated = 0

    def add_qa(self, key: tuple, question: str, answer: str) -> None:
        ids, labels = encode_qa(self.tokenizer, question, answer)
        self._add(key, ids, labels)

    def add_text(self, key: tuple, text: str) -> None:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"] + [self.tokenizer.eos_token_id]
        self._add(key, ids, list(ids))

    def _add(self, key: tuple, ids: list[int], labels: list[int]) -> None:
        if len(ids) > self.max_length:
            self.truncated += 1
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            if all(lab == IGNORE_INDEX for lab in labels[1:]):
                raise ForgetkitError(f"{key[0]} example '{key[1]}': no answer token left within the model's "
                                     f"context of {self.max_length} tokens")
        self.keys.append(key)
        self.examples.append({"input_ids": ids, "labels": labels})


def _trainable_or_adapter_params(model) -> list[torch.nn.Parameter]:
    """GradNorm's parameters: the LoRA adapter's when there is one, otherwise all."""
    named = list(model.named_parameters())
    lora = [p for n, p in named if "lora_" in n]
    return lora or [p for _, p in named]


def _gradnorms(model, examples: list[dict], pad_token_id: int) -> list[float]:
    """Per-example (batch size 1) gradient norms of the mean answer NLL."""
    from forgetkit.data.formatting import collate

    params = _trainable_or_adapter_params(model)
    saved = [p.requires_grad for p in params]
    frozen = [p for p in model.parameters() if all(p is not q for q in params)]
    frozen_saved = [p.requires_grad for p in frozen]
    for p in params:
        p.requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    device = next(model.parameters()).device
    out = []
    try:
        for ex in examples:
            batch = {k: v.to(device) for k, v in collate([ex], pad_token_id).items()}
            loss = model(**batch).loss
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            out.append(float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None))))
    finally:
        for p, flag in zip(params, saved, strict=True):
            p.requires_grad_(flag)
        for p, flag in zip(frozen, frozen_saved, strict=True):
            p.requires_grad_(flag)
    return out


def check_oracle_log(data: EvalData, oracle_log: dict, where: str | None = None) -> None:
    """Refuse (one-line :class:`ForgetkitError`) an oracle log whose forget set is not ``data``'s forget records,
    in any order (:func:`forgetkit.eval.tofu.match_forget_sets`); ``where`` names the records (default: their
    source)."""
    tofu.oracle_forget_set(tofu.record_names(data.forget), oracle_log,
                           where or data.sources.get("forget", "the forget records"),
                           tofu.log_name(oracle_log, "oracle log"))


def _check_batch_memory(model, setting: str, size: int, lengths: list[int], processes: int) -> None:
    """Refuse a batch size whose batch's hidden states alone (one layer's, which a forward pass without gradients
    holds at least) exceed the machine's memory: a process's share of rows, of the longest of ``lengths``."""
    if lengths:
        rows = min(size, math.ceil(len(lengths) / processes))
        refuse_beyond_memory(setting, size, hidden_state_bytes(model, rows, max(lengths)),
                             f"the hidden states of {rows} rows of up to {max(lengths)} tokens")


def evaluate(
    model,
    tokenizer,
    data: EvalData,
    settings: EvalSettings | None = None,
    reference_model=None,
    oracle_log: dict | None = None,
    accelerator=None,
    quiet: bool = False,
) -> tuple[dict, dict]:
    """Evaluate ``model`` on ``data``: returns ``(per-example log, summary)``.

    ``reference_model`` (same tokenizer) enables the Reference attack; ``oracle_log`` (the
    retrain oracle's log on the same forget set) enables Forget Quality and PrivLeak.
    """
    settings = settings or EvalSettings()
    data.check_disjoint()
    if oracle_log is not None:
        check_oracle_log(data, oracle_log)
    run = _Run(model, tokenizer, settings, accelerator, quiet)
    start = time.perf_counter()
    sets = data.qa_sets()
    if "retain" in sets:
        sets["retain"] = sets["retain"][: settings.retain_limit]
    seqs, candidates, canary_sets = _sequences(run, sets, data)
    _check_batch_memory(model, "eval.batch_size", settings.batch_size, [len(e["input_ids"]) for e in seqs.examples],
                        run.processes)
    with tqdm(total=len(seqs.examples), desc="score", disable=not run.show, unit="seq") as bar:
        stats_list = run.shards.map(lambda ex: score_examples(model, ex, run.pad, settings.batch_size, bar),
                                    seqs.examples)
    stats: dict[tuple, TokenStats] = dict(zip(seqs.keys, stats_list, strict=True))
    generations, continuations, prompts = _generations(run, sets, data)
    gradnorm, reference = _extra_passes(run, reference_model, sets, seqs)
    rouge = tofu.RougeRecall()
    eval_log = {tofu.SET_FILES[role]: _set_log(role, records, stats, generations, gradnorm, reference, rouge,
                                               tokenizer, settings)
                for role, records in sets.items()}
    summary = _summarise(data, sets, eval_log, stats, candidates, canary_sets, continuations, generations, rouge,
                         oracle_log, settings)
    wall = time.perf_counter() - start
    tokens_scored = sum(s.n_tokens for s in stats_list)
    generated_tokens = sum(len(tokenizer(g, add_special_tokens=False)["input_ids"]) for g in generations.values())
    summary["cost"] = {
        "wall_time_s": round(wall, 3),
        "tokens_scored": tokens_scored,
        "sequences_scored": len(seqs.examples),
        "tokens_generated": generated_tokens,
        "prompts_generated": prompts,
        "tokens_per_s": round((tokens_scored + generated_tokens) / wall, 1),
        "processes": run.processes,
    }
    summary.update(_optional_measures(run, data))
    summary["settings"] = asdict(settings)
    return eval_log, summary


@dataclass
class _Run:
    """What every part of one :func:`evaluate` call shares: the model, tokenizer and settings, the processes'
    shards, whether bars show, the model's context and the padding id."""

    model: object
    tokenizer: object
    settings: EvalSettings
    accelerator: object
    quiet: bool

    def __post_init__(self) -> None:
        self.shards = _Shards(self.accelerator)
        self.processes = self.accelerator.num_processes if self.accelerator is not None else 1
        self.show = not self.quiet and (self.accelerator is None or self.accelerator.is_main_process)
        self.context = context_length(self.model)
        self.pad = pad_id(self.tokenizer)


def _sequences(run: _Run, sets: dict[str, list], data: EvalData) -> tuple[_Sequences, dict, dict]:
    """Every text the evaluation scores, once: each QA set's answer, base answer, perturbed answers (and the
    forget set's paraphrased questions), the held-out texts, and each canary with its candidate secrets; with
    the candidates and the canary sets."""
    seqs = _Sequences(run.tokenizer, run.context)
    for role, records in sets.items():
        for r in records:
            seqs.add_qa((role, r.id, "gt"), r.question, r.answer)
            base = r.answer if tofu.TRUTH_RATIO_BASE[role] == "answer" else r.paraphrased_answer
            if base:  # the truth ratio's numerator (TOFU's base_answer_key); none in a question/answer-only file
                seqs.add_qa((role, r.id, "para"), r.question, base)
            for j, wrong in enumerate(r.perturbed_answer):
                seqs.add_qa((role, r.id, "pert", j), r.question, wrong)
            if role == "forget" and r.paraphrased_question:
                seqs.add_qa((role, r.id, "pq"), r.paraphrased_question, r.answer)
    for t in data.heldout_text or []:
        seqs.add_text(("heldout_text", t.id), t.text)
    canary_sets = {"forget": data.canaries or [], "holdout": data.holdout_canaries or []}
    candidates: dict[str, list[str]] = {}
    for canaries in canary_sets.values():
        for c in canaries:
            seqs.add_text(("canary", c["id"], "true"), c["prefix"] + c["secret"] + ".")
            candidates[c["id"]] = mem.digit_candidates(c["secret"], run.settings.canary_candidates, run.settings.seed)
            for j, cand in enumerate(candidates[c["id"]]):
                seqs.add_text(("canary", c["id"], "cand", j), c["prefix"] + cand + ".")
    if seqs.truncated:
        log.warning("%d sequence(s) longer than the model's context (%d) were truncated", seqs.truncated, run.context)
    return seqs, candidates, canary_sets


def _generations(run: _Run, sets: dict[str, list], data: EvalData) -> tuple[dict, dict, int]:
    """Greedy answers to every question (and to the forget set's paraphrased questions), and continuations of
    the first half of each forget text: the generations by key, each forget text's (prompt ids, true rest), and
    the number of prompts."""
    tokenizer, settings = run.tokenizer, run.settings
    prompts: list[list[int]] = []
    prompt_keys: list[tuple] = []
    for role, records in sets.items():
        for r in records:
            prompts.append(prompt_ids(tokenizer, r.question))
            prompt_keys.append((role, r.id, "gt"))
            if role == "forget" and r.paraphrased_question:
                prompts.append(prompt_ids(tokenizer, r.paraphrased_question))
                prompt_keys.append((role, r.id, "pq"))
    qa_prompts = len(prompts)
    continuations: dict[str, tuple[list[int], str]] = {}
    for t in data.forget_text or []:
        ids = tokenizer(t.text, add_special_tokens=True)["input_ids"]
        cut = max(1, len(ids) // 2)
        continuations[t.id] = (ids[:cut], tokenizer.decode(ids[cut:], skip_special_tokens=True))
        prompts.append(ids[:cut])
        prompt_keys.append(("forget_text", t.id))
    longest = max((len(p) for p in prompts), default=0)
    room = max(1, run.context - longest)
    new_tokens = min(settings.max_new_tokens, settings.verbatim_new_tokens, room)  # the fewest any prompt gets
    _check_batch_memory(run.model, "eval.generation_batch_size", settings.generation_batch_size,
                        [len(p) + new_tokens for p in prompts], run.processes)
    with tqdm(total=len(prompts), desc="generate", disable=not run.show, unit="prompt") as bar:
        qa_gen = run.shards.map(lambda ps: greedy_continuations(
            run.model, tokenizer, ps, min(settings.max_new_tokens, room), settings.generation_batch_size, bar),
            prompts[:qa_prompts])
        text_gen = run.shards.map(lambda ps: greedy_continuations(
            run.model, tokenizer, ps, min(settings.verbatim_new_tokens, room), settings.generation_batch_size, bar),
            prompts[qa_prompts:])
    generations = dict(zip(prompt_keys, [g.strip() for g in qa_gen] + text_gen, strict=True))
    return generations, continuations, len(prompts)


def _extra_passes(run: _Run, reference_model, sets: dict[str, list], seqs: _Sequences) -> tuple[dict, dict]:
    """The membership attacks' extra passes over the forget and holdout answers: per-example gradient norms
    (``gradnorm``), and the reference model's token statistics (when one is given)."""
    mia_sets = {role: sets[role] for role in ("forget", "holdout") if role in sets}
    keys = [(role, r.id, "gt") for role, recs in mia_sets.items() for r in recs]
    index = {k: i for i, k in enumerate(seqs.keys)}
    examples = [seqs.examples[index[k]] for k in keys]
    gradnorm: dict[tuple, float] = {}
    if run.settings.gradnorm and mia_sets:
        gradnorm = dict(zip(keys, run.shards.map(lambda ex: _gradnorms(run.model, ex, run.pad), examples),
                            strict=True))
    reference: dict[tuple, TokenStats] = {}
    if reference_model is not None and mia_sets:
        ref_stats = run.shards.map(lambda ex: score_examples(reference_model, ex, run.pad, run.settings.batch_size),
                                   examples)
        reference = dict(zip(keys, ref_stats, strict=True))
    return gradnorm, reference


def _optional_measures(run: _Run, data: EvalData) -> dict:
    """The summary's optional parts, as ``settings`` asks: randomized smoothing, WEAT bias, toxicity."""
    model, tokenizer, settings = run.model, run.tokenizer, run.settings
    extra: dict = {}
    if settings.smoothing:
        from forgetkit.eval.smoothing import smoothed_emission

        with tqdm(total=len(data.forget or []), desc="smoothing", disable=not run.show, unit="question") as bar:
            extra["smoothing"] = smoothed_emission(model, tokenizer, data.forget or [], settings.smoothing,
                                                   settings.smoothing_samples, batch_size=settings.batch_size,
                                                   seed=settings.seed, progress=bar)
    if settings.weat:
        from forgetkit.eval.bias import read_weat_tests, weat_scores

        extra["bias"] = {"weat": weat_scores(model, tokenizer, read_weat_tests(settings.weat))}
    if settings.toxicity:
        from forgetkit.eval.toxicity import scorer_of, toxicity

        scorer, label = scorer_of(settings.toxicity, next(model.parameters()).device)
        extra["toxicity"] = toxicity(model, tokenizer, scorer, label, max_new_tokens=min(settings.max_new_tokens, 32),
                                     batch_size=settings.generation_batch_size)
    return extra


def _mean_nll(stats: Sequence[TokenStats]) -> list[float]:
    return [s.avg_nll for s in stats]


def _set_log(role, records, stats, generations, gradnorm, reference, rouge, tokenizer, settings) -> dict:
    """One eval set's per-example log, TOFU's keys first, keyed by record id."""
    out: dict[str, dict] = {}

    def put(metric: str, rid: str, value) -> None:
        out.setdefault(metric, {})[rid] = value

    for r in records:
        gt, para = stats[(role, r.id, "gt")], stats.get((role, r.id, "para"))
        pert = [stats[(role, r.id, "pert", j)] for j in range(len(r.perturbed_answer))]
        put("avg_gt_loss", r.id, gt.avg_nll)
        put("gt_loss", r.id, gt.nll)
        put("num_token_gt", r.id, gt.n_tokens)
        if para is not None:
            put("avg_paraphrased_loss", r.id, para.avg_nll)
            put("paraphrased_loss", r.id, para.nll)
            put("num_token_paraphrased", r.id, para.n_tokens)
        if pert:
            put("average_perturb_loss", r.id, _mean_nll(pert))
            put("perturb_loss", r.id, [s.nll for s in pert])
            put("num_token_perturb", r.id, [s.n_tokens for s in pert])
            if para is not None:
                put("truth_ratio", r.id, tofu.truth_ratio(para.avg_nll, _mean_nll(pert)))
        generation = generations[(role, r.id, "gt")]
        for metric, value in rouge(generation, r.answer).items():
            put(metric, r.id, value)
        if settings.include_text:
            put("generated_text", r.id, [r.question, generation, r.answer])
        put("example_hash", r.id, r.content_hash())
        put("extraction_strength", r.id, mem.extraction_strength(gt.correct))
        put("exact_memorisation", r.id, mem.exact_memorisation(gt.correct))
        put("mia_loss", r.id, mia.loss_score(gt))
        put("mia_zlib", r.id, mia.zlib_score(gt, r.answer))
        put("mia_min_k", r.id, mia.min_k_score(gt, settings.min_k))
        put("mia_min_k_plus_plus", r.id, mia.min_k_plus_plus_score(gt, settings.min_k))
        if (role, r.id, "gt") in reference:
            put("mia_reference", r.id, mia.reference_score(gt, reference[(role, r.id, "gt")]))
        if (role, r.id, "gt") in gradnorm:
            put("mia_gradnorm", r.id, gradnorm[(role, r.id, "gt")])
        if (role, r.id, "pq") in stats:
            put("avg_gt_loss_paraphrased_question", r.id, stats[(role, r.id, "pq")].avg_nll)
            pq_gen = generations[(role, r.id, "pq")]
            put("rougeL_recall_paraphrased_question", r.id, rouge(pq_gen, r.answer)["rougeL_recall"])
            if settings.include_text:
                put("generated_text_paraphrased_question", r.id, [r.paraphrased_question, pq_gen, r.answer])
    return out


def _mean(values) -> float:
    return float(np.mean(list(values)))


def _summarise(data, sets, eval_log, stats, candidates, canary_sets, continuations, generations, rouge,
               oracle_log, settings) -> dict:
    summary: dict = {"sets": {}, "orientation": mia.ORIENTATION}
    for role, records in sets.items():
        set_log = eval_log[tofu.SET_FILES[role]]
        row = {"examples": len(records), "hash": records_hash(records), "source": data.sources.get(role, role)}
        row.update(tofu.set_summary(set_log, role, tofu.SET_FILES[role]))
        if "missing" in row:
            row["truth_ratio_note"] = row.pop("missing")
        else:
            row["truth_ratio_form"] = tofu.truth_ratio_form(role)
        row["rouge1_recall"] = _mean(set_log["rouge1_recall"].values())
        row["extraction_strength"] = _mean(set_log["extraction_strength"].values())
        row["exact_memorisation"] = _mean(set_log["exact_memorisation"].values())
        if "avg_gt_loss_paraphrased_question" in set_log:
            row["paraphrased_question"] = {
                "probability": float(np.mean(tofu.probability(
                    list(set_log["avg_gt_loss_paraphrased_question"].values())))),
                "rougeL_recall": _mean(set_log["rougeL_recall_paraphrased_question"].values()),
            }
        summary["sets"][role] = row

    agg = (tofu.aggregate(eval_log, oracle_log, "this evaluation", tofu.log_name(oracle_log or {}, "oracle log"))
           if "forget" in sets else {})
    summary["forget_quality"] = agg.get("forget_quality")
    summary["forget_quality_ks_statistic"] = agg.get("ks_statistic")
    for key in ("forget_quality_note", "forget_set_match"):
        if agg.get(key):
            summary[key] = agg[key]
    summary["model_utility"] = agg.get("model_utility")
    if agg.get("model_utility_note"):
        summary["model_utility_note"] = agg["model_utility_note"]
    summary["model_utility_components"] = agg.get("model_utility_components", {})
    summary["mia"] = _mia_summary(eval_log, oracle_log)
    summary["memorisation"] = _memorisation_summary(stats, candidates, canary_sets, continuations, generations,
                                                    rouge)
    heldout = [stats[k] for k in stats if k[0] == "heldout_text"]
    if heldout:
        nll = sum(s.nll for s in heldout) / sum(s.n_tokens for s in heldout)
        summary["utility"] = {"heldout_perplexity": math.exp(nll), "heldout_texts": len(heldout),
                              "source": data.sources.get("heldout_text", "held-out text")}
    return summary


def _mia_summary(eval_log: dict, oracle_log: dict | None) -> dict:
    forget_key, holdout_key = tofu.SET_FILES["forget"], tofu.SET_FILES["holdout"]
    if forget_key not in eval_log or holdout_key not in eval_log:
        return {"note": "missing: needs a forget and a holdout set"}
    f_log, h_log = eval_log[forget_key], eval_log[holdout_key]
    aucs = {}
    for attack in MIA_ATTACKS:
        metric = f"mia_{attack}"
        if metric in f_log and metric in h_log:
            aucs[attack] = mia.auc(list(f_log[metric].values()), list(h_log[metric].values()))
    out: dict = {"orientation": mia.ORIENTATION, "auc": aucs, "n_forget": len(f_log["avg_gt_loss"]),
                 "n_holdout": len(h_log["avg_gt_loss"])}
    best = max(aucs, key=lambda a: abs(aucs[a] - 0.5))
    out["best_attack"] = best
    out["empirical_epsilon"] = mia.empirical_epsilon(list(f_log[f"mia_{best}"].values()),
                                                     list(h_log[f"mia_{best}"].values()))
    muse = mia.muse_auc(list(f_log["mia_min_k"].values()), list(h_log["mia_min_k"].values()))
    out["muse_min_k_auc"] = muse
    out["privleak"] = None
    if oracle_log is None:
        out["privleak_note"] = "missing: no oracle log given"
    elif forget_key in oracle_log and holdout_key in oracle_log and "mia_min_k" in oracle_log[forget_key]:
        oracle_auc = mia.muse_auc(list(oracle_log[forget_key]["mia_min_k"].values()),
                                  list(oracle_log[holdout_key]["mia_min_k"].values()))
        out["oracle_muse_min_k_auc"] = oracle_auc
        out["privleak"] = mia.privleak(muse, oracle_auc)
    else:
        out["privleak_note"] = "missing: the oracle log has no Min-K% scores on forget and holdout sets"
    return out


def _memorisation_summary(stats, candidates, canary_sets, continuations, generations, rouge) -> dict:
    out: dict = {}
    if continuations:
        f1 = [rouge.rouge_l_f1(generations[("forget_text", tid)], truth) for tid, (_, truth) in continuations.items()]
        out["verbatim_rougeL_f1"] = _mean(f1)
        out["verbatim_texts"] = len(f1)
    for group, canaries in canary_sets.items():
        if not canaries:
            continue
        values = []
        for c in canaries:
            true = -stats[("canary", c["id"], "true")].nll
            cands = [-stats[("canary", c["id"], "cand", j)].nll for j in range(len(candidates[c["id"]]))]
            values.append(mem.exposure(true, cands, 10 ** len(c["secret"])))
        out[f"canary_exposure_{group}"] = _mean(values)
        out[f"canaries_{group}"] = len(values)
    if any(canary_sets.values()):
        some = next(c for cs in canary_sets.values() for c in cs)
        out["canary_space_bits"] = math.log2(10 ** len(some["secret"]))
        out["canary_candidates"] = len(candidates[some["id"]])
    return out
