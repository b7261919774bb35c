"""The lm-evaluation-harness bridge on a tiny local multiple-choice task, fully offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from forgetkit.errors import ConfigError
from forgetkit.eval.lm_eval_bridge import run_lm_eval
from forgetkit.models import build_tiny_model

TASKS_DIR = Path(__file__).parent / "fixtures" / "lm_eval_tasks"
TASK = "forgetkit_tiny_mc"


@pytest.fixture(scope="module")
def include_path(tmp_path_factory) -> Path:
    """A copy of the fixture task whose data file path is absolute (lm_eval resolves it against the cwd)."""
    out = tmp_path_factory.mktemp("lm_eval_tasks")
    config = yaml.safe_load((TASKS_DIR / f"{TASK}.yaml").read_text())
    config["dataset_kwargs"]["data_files"]["test"] = str(TASKS_DIR / "tiny_mc.jsonl")
    config["dataset_kwargs"]["cache_dir"] = str(out / "datasets_cache")
    (out / f"{TASK}.yaml").write_text(yaml.safe_dump(config))
    return out


def load_docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / "tiny_mc.jsonl").read_text().splitlines()]


# The model is taught the right answer to the first six questions and a wrong one to the last
# two, so its accuracy is known by construction: 6/8.
TAUGHT = [doc["answer"] if i < 6 else (doc["answer"] + 1) % 4 for i, doc in enumerate(load_docs())]


@pytest.fixture(scope="module")
def model(bpe_tokenizer):
    """A micro Llama that has memorised the TAUGHT answers (100 full-batch AdamW steps)."""
    model = build_tiny_model(bpe_tokenizer, "llama", "micro", seed=0)
    texts = [f"Question: {doc['question']}\nAnswer: {doc['choices'][t]}"
             for doc, t in zip(load_docs(), TAUGHT, strict=True)]
    batch = bpe_tokenizer(texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # One thread: on a shared, busy CPU, torch's default thread pool makes these tiny steps ~40x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(100):
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@torch.no_grad()
def continuation_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """Summed log-probability of ``continuation`` after ``context``, teacher-forced."""
    context_ids = tokenizer(context)["input_ids"]
    continuation_ids = tokenizer(continuation)["input_ids"]
    # lm_eval tokenises context + continuation together and splits at the context's length;
    # with a byte-level BPE that splits before spaces, that is the same as tokenising apart.
    assert tokenizer(context + continuation)["input_ids"] == context_ids + continuation_ids
    ids = torch.tensor([context_ids + continuation_ids])
    logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
    targets = ids[0, len(context_ids) :]
    return logprobs[len(context_ids) - 1 :].gather(1, targets[:, None]).sum().item()


def test_returns_accuracy_of_the_evaluated_documents(model, bpe_tokenizer, include_path):
    results = run_lm_eval(model, bpe_tokenizer, [TASK], include_path=include_path, limit=5)

    metrics = results[TASK]
    assert set(metrics) >= {"acc,none", "acc_norm,none", "acc_stderr,none", "sample_len"}
    assert "alias" not in metrics
    assert metrics["sample_len"] == 5
    assert metrics["acc,none"] == 1.0  # the first five documents, all taught their right answer
    json.dumps(results)


def test_accuracy_matches_direct_loglikelihood_scoring(model, bpe_tokenizer, include_path):
    docs = load_docs()
    correct = correct_norm = 0
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        scores = torch.tensor(
            [continuation_logprob(model, bpe_tokenizer, context, " " + choice) for choice in doc["choices"]]
        )
        lengths = torch.tensor([float(len(choice)) for choice in doc["choices"]])
        correct += int(scores.argmax()) == doc["answer"]
        correct_norm += int((scores / lengths).argmax()) == doc["answer"]

    assert correct == 6  # the known answer, by construction of TAUGHT

    metrics = run_lm_eval(model, bpe_tokenizer, [TASK], include_path=include_path)[TASK]

    assert metrics["sample_len"] == len(docs) == 8
    assert metrics["acc,none"] == pytest.approx(correct / len(docs))
    assert metrics["acc_norm,none"] == pytest.approx(correct_norm / len(docs))


def test_unknown_task_is_a_config_error(model, bpe_tokenizer, include_path):
    with pytest.raises(ConfigError, match=f"'no_such_task'.*{re.escape(str(include_path))}") as excinfo:
        run_lm_eval(model, bpe_tokenizer, ["no_such_task"], include_path=include_path)
    assert "\n" not in str(excinfo.value)
