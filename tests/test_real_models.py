"""Real pretrained chat models, on tiny stand-ins built in code: chat formatting (ChatML and
Llama-3 templates), GGUF import, prepare from a pretrained model, and evaluation of the data
users have (question/answer-only files; TOFU's true-answer truth ratio on the utility sets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from chat_models import chatml_tokenizer, llama3_tokenizer, tiny_chat_model, write_llama_gguf

from forgetkit.cli import main
from forgetkit.data.formatting import IGNORE_INDEX, encode_qa, end_of_turn_text, prompt_ids, stop_token_ids
from forgetkit.errors import ForgetkitError
from forgetkit.eval.generation import greedy_continuations
from forgetkit.models import load_model, save_model
from forgetkit.models.gguf import import_gguf
from forgetkit.runs import PreparedRun


def _labelled_text(tokenizer, question, answer) -> str:
    _, labels = encode_qa(tokenizer, question, answer)
    return tokenizer.decode([t for t in labels if t != IGNORE_INDEX])


def test_chatml_answer_ends_in_one_end_of_turn():
    tok = chatml_tokenizer()
    # The template renders "Paris.<|im_end|>\n"; the label is the turn up to its end, with no EOS after.
    assert _labelled_text(tok, "What is the capital of France?", "Paris.") == "Paris.<|im_end|>"
    ids, labels = encode_qa(tok, "What is the capital of France?", "Paris.")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[-1] == im_end and ids.count(im_end) == 3  # system, user and assistant turns: one each
    assert end_of_turn_text(tok) == "<|im_end|>" and stop_token_ids(tok) == [im_end]
    prompt = prompt_ids(tok, "What is the capital of France?")
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)


def test_llama3_answer_ends_in_eot_and_generation_stops_there():
    tok = llama3_tokenizer()
    eot, eos = tok.convert_tokens_to_ids("<|eot_id|>"), tok.eos_token_id
    assert eot != eos
    assert _labelled_text(tok, "Who is person 3?", "Person 3 is a poet.") == "Person 3 is a poet.<|eot_id|>"
    ids, _ = encode_qa(tok, "Who is person 3?", "Person 3 is a poet.")
    assert ids[-1] == eot and eos not in ids
    assert stop_token_ids(tok) == [eot, eos]

    class EotAfterTwo(torch.nn.Module):
        """A model that emits token 5, token 6, then <|eot_id|>, then token 7 forever."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, max_new_tokens, eos_token_id, **_):
            plan = [5, 6, eot] + [7] * max_new_tokens
            out = input_ids
            for step in range(max_new_tokens):
                nxt = torch.full((len(input_ids), 1), plan[step])
                out = torch.cat([out, nxt], dim=1)
                if plan[step] in eos_token_id:
                    break
            return out

    text = greedy_continuations(EotAfterTwo(), tok, [prompt_ids(tok, "Who is person 3?")], max_new_tokens=10)
    assert text == [tok.decode([5, 6])]


def test_plain_format_still_appends_eos(bpe_tokenizer):
    ids, labels = encode_qa(bpe_tokenizer, "Who is person 1?", "Person 1 is a poet.")
    assert ids[-1] == bpe_tokenizer.eos_token_id and labels[-1] == bpe_tokenizer.eos_token_id


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    tok = chatml_tokenizer()
    model = tiny_chat_model(tok).eval()
    path = write_llama_gguf(model, tok, tmp_path_factory.mktemp("gguf") / "tiny-chat.F32.gguf")
    return model, tok, path


def test_gguf_import_reproduces_model_and_chat_tokenizer(tiny_gguf, tmp_path, capsys):
    model, tok, path = tiny_gguf
    out = tmp_path / "imported"
    assert main(["import-gguf", str(path), "--out", str(out)]) == 0
    assert "reload checked" in capsys.readouterr().out
    record = json.loads((out / "import.json").read_text())
    assert record["architecture"] == "llama" and record["chat_template"]
    assert record["probe_max_abs_logit_difference"] == 0.0
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    imported, imported_tok = load_model(out)
    ids = torch.tensor([encode_qa(tok, "What is the capital of France?", "Paris.")[0]])
    with torch.no_grad():
        torch.testing.assert_close(imported(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
    assert imported_tok.chat_template == tok.chat_template
    assert encode_qa(imported_tok, "Who is person 3?", "A poet.") == encode_qa(tok, "Who is person 3?", "A poet.")


def test_gguf_refusals_are_one_line(tiny_gguf, tmp_path):
    model, tok, _ = tiny_gguf
    other = write_llama_gguf(model, tok, tmp_path / "rwkv.gguf", architecture="rwkv6")
    with pytest.raises(ForgetkitError, match="architecture 'rwkv6' cannot be read from GGUF"):
        import_gguf(other, tmp_path / "out")
    text = tmp_path / "model.gguf"
    text.write_text("not a gguf")
    with pytest.raises(ForgetkitError, match="not a GGUF file"):
        import_gguf(text, tmp_path / "out")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf[2].read_bytes()[:200])
    with pytest.raises(ForgetkitError, match="unreadable GGUF file"):
        import_gguf(truncated, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["import-gguf", str(tmp_path / "missing.gguf"), "--out", str(tmp_path / "out")]) == 2


# a LoRA target; 160 tokens hold a ChatML-formatted QA pair of the tiny chat tokenizer (~125 tokens), so no
# training record is dropped for length
PRETRAINED = ["target_mode=lora", "train_world_facts=false", "model.max_length=160"]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory) -> Path:
    """The micro benchmark prepared on a tiny *pretrained* chat model (LoRA target through ChatML)."""
    root = tmp_path_factory.mktemp("pretrained")
    tok = chatml_tokenizer()
    save_model(tiny_chat_model(tok, seed=3), tok, root / "chat-model")
    run = root / "run"
    assert main(["prepare", "--config", "micro", "--quiet", f"run_dir={run}", f"base_model={root / 'chat-model'}",
                 *PRETRAINED]) == 0
    return run


def test_prepare_from_a_pretrained_model(pretrained_run):
    assert not (pretrained_run / "tokenizer").exists()
    base = json.loads((pretrained_run / "base" / "stage.json").read_text())
    assert base["pretrained"].endswith("chat-model") and base["chat_template"] and "train" not in base
    assert (pretrained_run / "target" / "adapter_model.safetensors").is_file()
    summary = json.loads((pretrained_run / "summary.json").read_text())
    assert set(summary["training_cost"]) == {"target", "oracle_forget10"}
    _, tok = load_model(pretrained_run / "base")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_pretrained_run_rebuilds_when_the_source_model_changes(pretrained_run, capsys):
    source = pretrained_run.parent / "chat-model"
    tok = chatml_tokenizer()
    save_model(tiny_chat_model(tok, seed=4), tok, source)
    assert main(["prepare", "--config", "micro", f"run_dir={pretrained_run}", f"base_model={source}",
                 *PRETRAINED]) == 0
    out = capsys.readouterr().out
    assert "[base] building" in out and "[target] building" in out and "[benchmark] cached" in out


def test_pretrained_run_retrains_on_a_changed_benchmark_and_replays_held_apart_world_facts(pretrained_run,
                                                                                            tmp_path, capsys):
    """A pretrained base does not descend from the benchmark, so the fine-tunes name it themselves: a changed
    benchmark retrains them. With ``world_replay`` they replay those world facts, never the utility set's."""
    run = tmp_path / "run"
    shutil.copytree(pretrained_run, run)
    source = pretrained_run.parent / "chat-model"
    before = json.loads((run / "target" / "stage.json").read_text())
    assert before["examples"] == 60 + 20 and before["truncated"] == 0  # micro's 60 QA pairs and 20 narratives
    assert main(["prepare", "--config", "micro", f"run_dir={run}", f"base_model={source}", *PRETRAINED,
                 "benchmark.world_replay=5", "train_world_facts=true"]) == 0
    out = capsys.readouterr().out
    assert "[base] cached" in out and "[benchmark] building" in out and "[target] building" in out
    counts = {k: v["count"] for k, v in json.loads((run / "benchmark" / "manifest.json").read_text())["files"].items()}
    assert counts["world_replay"] == 5
    assert json.loads((run / "target" / "stage.json").read_text())["examples"] == before["examples"] + 5
    replay = {json.loads(line)["question"] for line in (run / "benchmark" / "world_replay.jsonl").open()}
    utility = {json.loads(line)["question"] for line in (run / "benchmark" / "world_facts.jsonl").open()}
    assert replay and utility and not replay & utility
    # a retain set holds what the fine-tunes replayed, never the utility set; the run without replay holds none
    prepared = PreparedRun(run)
    assert prepared.replayed_world_facts_file().name == "world_replay.jsonl"
    retained = {r.question for r in prepared.retain_records("forget10")}
    assert replay <= retained and not utility & retained
    assert PreparedRun(pretrained_run).replayed_world_facts_file() is None


def test_missing_pretrained_model_is_a_one_line_error(tmp_path, capsys):
    code = main(["prepare", "--config", "micro", "--quiet", f"run_dir={tmp_path / 'run'}",
                 f"base_model={tmp_path / 'nowhere'}"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "base_model directory not found" in err and len(err.splitlines()) == 1


def test_unlearn_and_eval_on_the_pretrained_run(pretrained_run, tmp_path):
    out = tmp_path / "npo"
    assert main(["unlearn", "--run", str(pretrained_run), "--split", "forget10", "--method", "npo", "--quiet",
                 "train.epochs=1", "--out", str(out), "--ledger", str(tmp_path / "ledger.sqlite")]) == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    ev = tmp_path / "eval"
    assert main(["eval", "--model", str(pretrained_run / "base"), "--adapter", str(pretrained_run / "target"),
                 "--data", str(pretrained_run / "benchmark"), "--out", str(ev), "--max-new-tokens", "8",
                 "--canary-candidates", "20", "--quiet"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["model_utility"] is not None and summary["sets"]["forget"]["truth_ratio"] > 0


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_question_answer_only_files_get_every_metric_they_can(pretrained_run, tmp_path, capsys):
    bench = pretrained_run / "benchmark"
    strip = [{"question": json.loads(line)["question"], "answer": json.loads(line)["answer"]}
             for line in (bench / "forget10.jsonl").read_text().splitlines()]
    holdout = [{"question": json.loads(line)["question"], "answer": json.loads(line)["answer"]}
               for line in (bench / "holdout10.jsonl").read_text().splitlines()]
    forget = _write_jsonl(tmp_path / "forget.jsonl", strip)
    hold = _write_jsonl(tmp_path / "holdout.jsonl", holdout)
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(pretrained_run / "base"), "--forget", str(forget), "--holdout", str(hold),
                 "--out", str(out), "--max-new-tokens", "8", "--quiet", "--oracle-log", str(out.parent / "x")]) != 0
    capsys.readouterr()
    assert main(["eval", "--model", str(pretrained_run / "base"), "--forget", str(forget), "--holdout", str(hold),
                 "--out", str(out), "--max-new-tokens", "8", "--quiet"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    row = summary["sets"]["forget"]
    assert 0 < row["probability"] < 1 and "rougeL_recall" in row and "truth_ratio" not in row
    assert "paraphrased" in row["truth_ratio_note"]
    assert summary["forget_quality"] is None and summary["mia"]["auc"]
    assert "Forget quality: missing" in printed
    log = json.loads((out / "eval_log_aggregated.json").read_text())["eval_log_forget.json"]
    assert "avg_paraphrased_loss" not in log and "avg_gt_loss" in log and "mia_min_k" in log
    # with the oracle's log of the same question/answer-only set, Forget Quality is missing, never guessed
    from forgetkit.eval import tofu

    agg = tofu.aggregate({"eval_log_forget.json": log}, {"eval_log_forget.json": log})
    assert agg["forget_quality"] is None and "paraphrased" in agg["forget_quality_note"]


def test_utility_sets_score_the_truth_ratio_against_the_true_answer(pretrained_run, tmp_path):
    rows = [json.loads(line) for line in (pretrained_run / "benchmark" / "world_facts.jsonl").read_text().splitlines()]
    for r in rows:
        r["paraphrased_answer"] = "It is " + r["answer"] + ", as everyone knows."
    world = _write_jsonl(tmp_path / "world.jsonl", rows[:20])
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(pretrained_run / "base"), "--world-facts", str(world),
                 "--forget", str(pretrained_run / "benchmark" / "forget10.jsonl"),
                 "--retain", str(pretrained_run / "benchmark" / "retain90.jsonl"), "--out", str(out),
                 "--max-new-tokens", "4", "--quiet"]) == 0
    log = json.loads((out / "eval_log_aggregated.json").read_text())
    world_log, retain_log = log["eval_real_world_wo_options.json"], log["eval_log.json"]
    # TOFU's base_answer_key: the true answer on the real-world set, the paraphrase on the people's sets
    assert world_log["avg_paraphrased_loss"] == world_log["avg_gt_loss"]
    assert retain_log["avg_paraphrased_loss"] != retain_log["avg_gt_loss"]


def test_bench_shard_train_and_export_on_the_pretrained_run(pretrained_run, tmp_path):
    """Every command on a run prepared from a pretrained chat model: a bench grid (a gradient method and
    the closed-form editor on its LoRA target, with the attacks), shard-train, export --merge."""
    from forgetkit.bench.command import run_bench
    from forgetkit.bench.config import BenchConfig
    from forgetkit.config import build

    config = build(BenchConfig, {
        "name": "chat", "run": str(pretrained_run), "out": str(tmp_path / "bench"), "seeds": [0],
        "methods": [{"name": "npo", "overrides": {"train.epochs": 1, "train.batch_size": 8}}, {"name": "llmeraser"},
                    {"name": "retrain"}],
        "attacks": {"relearn": {"steps": 2, "batch_size": 4}, "quantize_bits": [4], "prompt": True, "sequential": 0},
        "eval": {"retain_limit": 20, "quick_retain": 10, "max_new_tokens": 8, "verbatim_new_tokens": 8,
                 "canary_candidates": 20}})
    result = run_bench(config, quiet=True)
    status = {r["cell"]["method"]: r["status"] for r in result["results"]}
    assert all(status[m] == "done" for m in ("npo", "llmeraser", "retrain", "target", "oracle")), status
    assert Path(result["files"]["report"]).is_file()

    shards = tmp_path / "shards"
    assert main(["shard-train", "--run", str(pretrained_run), "--out", str(shards), "--quiet", "shards=2",
                 "train.epochs=1", "train.batch_size=8", "max_length=160"]) == 0  # the chat-formatted pairs fit
    assert len(list(shards.glob("shard_*/adapter_model.safetensors"))) == 2

    merged = tmp_path / "merged"
    assert main(["export", "--model", str(pretrained_run / "base"), "--adapter", str(pretrained_run / "target"),
                 "--merge", "--out", str(merged)]) == 0
    with_adapter, tok = load_model(pretrained_run / "base", adapter=pretrained_run / "target")
    plain, plain_tok = load_model(merged)
    ids = torch.tensor([encode_qa(tok, "Who is person 3?", "A poet.")[0]])
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
    assert plain_tok.chat_template == tok.chat_template
