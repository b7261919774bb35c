"""Input-based unlearning: the prompt context every rendered prompt carries, and the guardrail and icul unlearners
that build one (no weight changes; the evaluation and the attacks read their context through the tokenizer)."""

from __future__ import annotations

import json

import pytest
import torch

from forgetkit.cli import main
from forgetkit.data.context import PromptContext, prompt_context, read_context, with_context
from forgetkit.data.formatting import IGNORE_INDEX, encode_qa, format_prompt
from forgetkit.data.readers import read_records
from forgetkit.data.records import group_of
from forgetkit.errors import DataError
from forgetkit.request import UnlearnResult
from forgetkit.runs import PreparedRun
from tests.chat_models import chatml_tokenizer


def test_plain_prompt_carries_system_shots_lead_and_prefill(bpe_tokenizer):
    context = PromptContext(system="Be careful.", fixed_shots=[("Who is A?", "A poet.")],
                            lead={"Who is B?": [("Hi", "Hello.")]}, prefill={"Who is B?": "B is"})
    guarded = with_context(bpe_tokenizer, context)
    assert format_prompt(guarded, "Who is B?") == (
        "Be careful.\n\nQuestion: Who is A?\nAnswer: A poet.\n\nQuestion: Hi\nAnswer: Hello.\n\n"
        "Question: Who is B?\nAnswer: B is")
    assert format_prompt(guarded, "Who is C?") == "Be careful.\n\nQuestion: Who is A?\nAnswer: A poet.\n\n" \
                                                  "Question: Who is C?\nAnswer:"
    assert format_prompt(bpe_tokenizer, "Who is C?") == "Question: Who is C?\nAnswer:"  # the original is unchanged
    assert prompt_context(bpe_tokenizer) is None and prompt_context(guarded) is context
    ids, labels = encode_qa(guarded, "Who is B?", "a poet.")
    answer = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert guarded.decode(answer).strip() == "a poet." + guarded.eos_token


def test_chat_prompt_puts_the_context_in_turns_and_labels_only_the_rest_of_the_answer():
    tok = chatml_tokenizer()
    guarded = with_context(tok, PromptContext(system="Refuse questions about Ada.", fixed_shots=[("Q1?", "A1.")],
                                              prefill={"Who is Ada?": "Ada is"}))
    prompt = format_prompt(guarded, "Who is Ada?")
    assert prompt == ("<|im_start|>system\nRefuse questions about Ada.<|im_end|>\n<|im_start|>user\nQ1?<|im_end|>\n"
                      "<|im_start|>assistant\nA1.<|im_end|>\n<|im_start|>user\nWho is Ada?<|im_end|>\n"
                      "<|im_start|>assistant\nAda is")
    ids, labels = encode_qa(guarded, "Who is Ada?", "a poet.")
    answer = [i for i, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(answer) == " a poet.<|im_end|>"
    assert tok.decode(ids[: len(ids) - len(answer)]) == prompt


def test_shots_nearest_the_question_are_chosen_most_similar_last():
    shots = [("Where was Ada Vell born?", "x"), ("What is the capital of France?", "y"),
             ("What does Ada Vell write?", "z")]
    context = PromptContext(shots=shots, shots_per_question=2)
    assert context.turns("Where was Ada Vell born, exactly?") == [shots[2], shots[0]]
    assert context.turns("Capital of France?")[-1] == shots[1]
    assert PromptContext(shots=shots).turns("anything") == shots  # 0: all of them


def test_a_bad_context_file_is_a_one_line_error_naming_the_field(tmp_path):
    (tmp_path / "context.json").write_text(json.dumps({"system": "x", "shots": [["only a question"]]}))
    with pytest.raises(DataError, match="shots") as info:
        read_context(tmp_path)
    assert "\n" not in str(info.value) and "context.json" in str(info.value)
    (tmp_path / "context.json").write_text(json.dumps({"sytem": "x"}))
    with pytest.raises(DataError, match="sytem"):
        read_context(tmp_path)


def test_guardrail_writes_a_context_naming_the_forget_people_and_changes_no_weight(lora_run, tmp_path, capsys):
    out = tmp_path / "guardrail"
    assert main(["unlearn", "--run", str(lora_run), "--method", "guardrail", "--out", str(out), "--quiet",
                 "--eval"]) == 0
    people = {json.loads(line)["person"]: json.loads(line)["name"]
              for line in (lora_run / "benchmark" / "people.jsonl").read_text().splitlines()}
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")
    names = {people[group_of(r.id)] for r in forget if group_of(r.id) in people}
    assert names, "the micro benchmark names its people"
    context = read_context(out / "context")
    assert all(name in context.system for name in names)
    others = set(people.values()) - names
    assert not any(name in context.system for name in others)
    audit = json.loads((out / "audit.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert audit["forget"]["count"] == len(forget) and summary["steps"] == 0
    assert summary["context_tokens"]["mean"] > 0
    for r in forget:  # the audit and summary name the request by hash and count
        assert r.question not in json.dumps(audit) + json.dumps(summary)
        assert not any(name in json.dumps(audit) + json.dumps(summary) for name in names)
    model, tokenizer = UnlearnResult.read(out).load_model()
    assert prompt_context(tokenizer).system == context.system
    assert context.system in format_prompt(tokenizer, forget[0].question)
    # `forgetkit eval --context` asks the same questions behind the same context: the same numbers
    assert main(["eval", "--model", str(lora_run / "base"), "--adapter", str(lora_run / "target"), "--data",
                 str(lora_run / "benchmark"), "--context", str(out / "context"), "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    again = json.loads((tmp_path / "ev" / "summary.json").read_text())["sets"]["forget"]["probability"]
    assert again == pytest.approx(summary["eval"]["forget"]["probability"], rel=1e-5)
    from forgetkit.models import load_model

    ref, _ = load_model(lora_run / "base", lora_run / "target")
    ref = ref.merge_and_unload()
    for (n, p), (_, q) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(p, q), n


def test_icul_places_the_question_with_a_wrong_answer_before_it_and_true_retain_answers(lora_run, tmp_path):
    out = tmp_path / "icul"
    assert main(["unlearn", "--run", str(lora_run), "--method", "icul", "--out", str(out), "--quiet",
                 "params.forget_shots=2", "params.correct_shots=3"]) == 0
    context = read_context(out / "context")
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")
    retain = {(r.question, r.answer) for r in PreparedRun(lora_run).retain_records("forget10")}
    assert len(context.fixed_shots) == 3 and all(tuple(s) in retain for s in context.fixed_shots)
    r = forget[0]
    turns = context.turns(r.question)
    assert turns[1] == (r.question, r.perturbed_answer[0])  # the nearest shot is the question itself, answer flipped
    assert len(turns) == 2 + 3
    assert all(a != f.answer for f in forget for q, a in context.shots if q == f.question)


def test_evaluation_scores_answers_behind_the_context(lora_run, tmp_path):
    """A context changes what the model reads, so the evaluation's forget loss is the loss of the answer after
    the context: equal to a hand-computed pass over encode_qa's tokens through the guarded tokenizer."""
    from forgetkit.eval import tofu
    from forgetkit.eval.evaluate import evaluate
    from forgetkit.eval.sets import EvalData
    from forgetkit.models import load_model

    model, tokenizer = load_model(lora_run / "base", lora_run / "target")
    forget = read_records(lora_run / "benchmark" / "forget10.jsonl")[:3]
    guarded = with_context(tokenizer, PromptContext(system="Never answer about these people.",
                                                    fixed_shots=[(forget[1].question, "I don't know.")]))
    log, _ = evaluate(model, guarded, EvalData(forget=forget), quiet=True)
    plain, _ = evaluate(model, tokenizer, EvalData(forget=forget), quiet=True)
    key = tofu.SET_FILES["forget"]
    for r, got, before in zip(forget, log[key]["avg_gt_loss"].values(), plain[key]["avg_gt_loss"].values(),
                              strict=True):
        ids, labels = encode_qa(guarded, r.question, r.answer)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        assert got == pytest.approx(loss, rel=1e-4)
        assert before != pytest.approx(loss, rel=1e-4)
