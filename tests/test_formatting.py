"""Prompt formatting and answer-only labels, checked on hand-computed token ids."""

from __future__ import annotations

import logging

from forgetkit.data.formatting import IGNORE_INDEX, collate, encode_qa, format_prompt, tokenize_qa
from forgetkit.data.records import QARecord

CHAT_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}Question: {{ m['content'] }}{% else %}"
    " Answer: {{ m['content'] }} <eos>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %} Answer:{% endif %}"
)


def test_plain_template_labels_only_answer_and_eos(word_tokenizer):
    ids, labels = encode_qa(word_tokenizer, "Who is Ada ?", "She is a poet .")
    # Question: Who is Ada ? Answer: | She is a poet . <eos>
    assert ids == [2, 4, 5, 6, 7, 3, 8, 5, 9, 10, 11, 0]
    assert labels == [IGNORE_INDEX] * 6 + [8, 5, 9, 10, 11, 0]


def test_plain_prompt_text(word_tokenizer):
    assert format_prompt(word_tokenizer, "Who is Ada ?") == "Question: Who is Ada ?\nAnswer:"


def test_chat_template_is_used_when_present(word_tokenizer):
    word_tokenizer.chat_template = CHAT_TEMPLATE
    assert format_prompt(word_tokenizer, "Who is Ada ?") == "Question: Who is Ada ? Answer:"
    ids, labels = encode_qa(word_tokenizer, "Who is Ada ?", "She is a poet .")
    # the template's own end-of-turn <eos> is the last label; no second EOS is added
    assert ids == [2, 4, 5, 6, 7, 3, 8, 5, 9, 10, 11, 0]
    assert labels == [IGNORE_INDEX] * 6 + [8, 5, 9, 10, 11, 0]


def test_truncation_is_counted_and_reported(word_tokenizer, caplog):
    records = [
        QARecord("Who is Ada ?", "She is a poet .", "a"),
        QARecord("Who is Ada ? Who is Ada ?", "She is a poet .", "b"),
    ]
    with caplog.at_level(logging.WARNING, logger="forgetkit"):
        out = tokenize_qa(word_tokenizer, records, max_length=10, name="forget")
    # record a: 12 tokens -> truncated to 10 (answer kept in part); record b: prompt is 11 tokens -> dropped
    assert out.n_truncated == 2 and out.n_dropped == 1 and len(out) == 1
    assert out.examples[0]["labels"] == [IGNORE_INDEX] * 6 + [8, 5, 9, 10]
    assert "forget: 2 record(s)" in caplog.text and "1 dropped" in caplog.text


def test_collate_pads_and_masks_padding(word_tokenizer):
    short = {"input_ids": [2, 4], "labels": [IGNORE_INDEX, 4]}
    long = {"input_ids": [2, 4, 5], "labels": [IGNORE_INDEX, 4, 5]}
    right = collate([short, long], pad_token_id=1)
    assert right["input_ids"].tolist() == [[2, 4, 1], [2, 4, 5]]
    assert right["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert right["labels"].tolist() == [[IGNORE_INDEX, 4, IGNORE_INDEX], [IGNORE_INDEX, 4, 5]]
    left = collate([short, long], pad_token_id=1, padding_side="left")
    assert left["input_ids"].tolist()[0] == [1, 2, 4]
    assert left["labels"].tolist()[0] == [IGNORE_INDEX, IGNORE_INDEX, 4]


def test_paraphrased_answer_field(word_tokenizer):
    rec = QARecord("Who is Ada ?", "She is a poet .", "a", paraphrased_answer="Ada is a poet .")
    out = tokenize_qa(word_tokenizer, [rec], max_length=32, answer_field="paraphrased_answer")
    assert out.examples[0]["labels"][6:] == [6, 5, 9, 10, 11, 0]
