"""Counterfactual twins: a never-seen reference built from the forget set itself (``--calibration auto``).

A deployer honouring a deletion request rarely has records the model never saw. A twin is one forget
question with the answer of another subject's question of the same kind, the other subject's name replaced
by this one's: "When was Ada Lee born?" answered with the birth date of someone else. The pairing is one the
model never trained on, in the forget set's own words and format.

The assumption (stated in the docs, checked where it can be): to a model that never saw a subject, that
subject's true answer and a donor's answer to the same kind of question are equally likely. It holds for
private or fictitious people whose attributes are exchangeable; it fails for a famous subject (pretraining
knows the true answer) and for answers that follow from the question (an e-mail address spelled from the
name, a sum). For a LoRA target the adapter-disabled base is a model that never saw the fine-tune's records,
and the gradient runner checks the assumption on it before any step (``methods.command``).

How it works: the subject is the longest run of capitalised words a record's question and answer share
(none: the record has no detectable subject). A question's kind is its template, the question with the
subject taken out; donors are the records of other subjects (from ``pool``) whose template is most similar
(TF-IDF cosine, ``min_similarity`` at least; an identical template scores 1), whose answer, renamed,
differs from the record's own. Each forget record gets up to ``per_record`` twins from distinct donors,
ties broken by a seeded draw. Twins identical to a forget or retain record are left out.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forgetkit.data.records import QARecord
from forgetkit.errors import ForgetkitError, require, require_positive

POOLS = ("retain", "forget", "both")
KINDS = ("renamed", "swapped")
_CAPITALISED = re.compile(r"[A-Z][\w'’.\-]*")


@dataclass(frozen=True)
class TwinSettings:
    kind: str = "renamed"  # renamed: a new fictitious subject; swapped: the forget record's own subject
    pool: str = "retain"  # whose answers the twins take: the retain records', the forget records', or both
    per_record: int = 2  # twins per forget record (distinct donors)
    min_similarity: float = 0.5  # the least TF-IDF cosine between two question templates for a donor
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.kind in KINDS, "kind", f"must be one of {', '.join(KINDS)}, got '{self.kind}'")
        require(self.pool in POOLS, "pool", f"must be one of {', '.join(POOLS)}, got '{self.pool}'")
        require_positive(self, "per_record")
        require(0 <= self.min_similarity <= 1, "min_similarity", f"must be in [0, 1], got {self.min_similarity}")


def subject_of(record: QARecord) -> str | None:
    """The longest run of capitalised words that the question and the answer both contain (a lone capitalised
    word opening the question does not count: it is the question word); None when they share none."""
    words = [(m.group(), m.start(), m.end()) for m in _CAPITALISED.finditer(record.question)]
    runs, run = [], []
    for word in words:
        if run and record.question[run[-1][2]:word[1]].strip():  # something else lies between: a new run
            runs.append(run)
            run = []
        run.append(word)
    if run:
        runs.append(run)
    best = None
    for run in runs:
        for i in range(len(run)):
            for j in range(len(run), i, -1):
                if i == 0 and j == 1 and run[0][1] == 0:
                    continue
                text = record.question[run[i][1]:run[j - 1][2]].rstrip("?.!,;:")
                if text and re.search(rf"(?<!\w){re.escape(text)}(?!\w)", record.answer):
                    if best is None or (j - i, len(text)) > best[0]:
                        best = ((j - i, len(text)), text)
                    break
    return best[1] if best else None


def template_of(record: QARecord, subject: str | None) -> str:
    """The question's kind: the question, lower-cased, with its subject taken out."""
    question = record.question.replace(subject, " ") if subject else record.question
    return " ".join(question.lower().split())


class NameMaker:
    """Fictitious names in the style of the subjects': each word drawn from a character chain fitted on the
    subjects' words (two characters of context; one, when two give nothing new, as with a handful of names), as
    long as the word it stands for (±1), and found in none of the texts given."""

    def __init__(self, subjects: list[str], texts: list[str], seed: int) -> None:
        self.rng = random.Random(seed)
        self.known = {w.lower() for t in texts for w in re.findall(r"[\w'’\-]+", t)}
        self.chains: dict[int, dict[str, list[str]]] = {2: {}, 1: {}}
        for word in sorted({w.lower() for s in subjects for w in re.findall(r"[^\W\d_]+", s)}):
            padded = "^^" + word + "$"
            for order, chain in self.chains.items():
                for i in range(2, len(padded)):
                    chain.setdefault(padded[i - order:i], []).append(padded[i])

    def word(self, like: str) -> str:
        for order in (2, 1):
            chain = self.chains[order]
            for _ in range(1000):
                out = "^^"
                while not out.endswith("$") and len(out) < len(like) + 6:
                    out += self.rng.choice(chain.get(out[-order:], ["$"]))
                word = out.strip("^$")
                if word and abs(len(word) - len(like)) <= 1 and word not in self.known:
                    self.known.add(word)
                    return word.capitalize()
        raise ForgetkitError("--calibration auto: could not make a fictitious name unlike every name in the data; "
                             "give --calibration FILE")

    def name(self, subject: str) -> str:
        return re.sub(r"[^\W\d_]+", lambda m: self.word(m.group()), subject)


def _renamed(answer: str, donor_subject: str | None, subject: str | None) -> str:
    if donor_subject and subject:
        return answer.replace(donor_subject, subject)
    return answer


def _donor_answers(record: QARecord, subject: str | None, donors: list[QARecord], donor_subjects: list[str | None],
                   similarity, trained: set, rng: random.Random, settings: TwinSettings) -> list[str]:
    """Up to ``per_record`` distinct donor answers for ``record``, renamed to its subject, most similar
    template first."""
    candidates = []
    for j, donor in enumerate(donors):
        if donor.id == record.id or similarity[j] < settings.min_similarity:
            continue
        if subject is not None and donor_subjects[j] == subject:
            continue  # the same subject: no counterfactual
        answer = _renamed(donor.answer, donor_subjects[j], subject)
        if answer.strip().lower() == record.answer.strip().lower() or (record.question, answer) in trained:
            continue
        candidates.append((-round(float(similarity[j]), 6), rng.random(), answer))
    answers: list[str] = []
    for _, _, answer in sorted(candidates):
        if answer not in answers:
            answers.append(answer)
        if len(answers) == settings.per_record:
            break
    return answers


def counterfactual_twins(forget: list[QARecord], retain: list[QARecord] | None,
                         settings: TwinSettings = TwinSettings()) -> list[QARecord]:
    """The twins of ``forget`` (see the module's docstring), in forget order; a ``ForgetkitError`` when the
    pool is empty or no forget record has a donor (answers with nothing to swap)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    donors = {"retain": list(retain or []), "forget": list(forget), "both": list(forget) + list(retain or [])}[
        settings.pool]
    if not donors:
        raise ForgetkitError("--calibration auto: the twins take their answers from the retain set, which is empty; "
                             "give --retain FILE, set criterion.twins.pool=forget, or give --calibration FILE")
    subjects = [subject_of(r) for r in forget]
    donor_subjects = [subject_of(r) for r in donors]
    templates = [template_of(r, s) for r, s in zip(forget, subjects, strict=True)]
    donor_templates = [template_of(r, s) for r, s in zip(donors, donor_subjects, strict=True)]
    vectoriser = TfidfVectorizer(ngram_range=(1, 2)).fit(templates + donor_templates)
    similarity = (vectoriser.transform(templates) @ vectoriser.transform(donor_templates).T).toarray()
    trained = {(r.question, r.answer) for r in list(forget) + list(retain or [])}
    rng = random.Random(settings.seed)
    everyone = list(forget) + list(retain or [])
    names = NameMaker([s for s in map(subject_of, everyone) if s], [r.question + " " + r.answer for r in everyone],
                      settings.seed)
    new_names: dict[tuple[str, int], str] = {}
    twins = []
    for i, record in enumerate(forget):
        answers = _donor_answers(record, subjects[i], donors, donor_subjects, similarity[i], trained, rng, settings)
        if settings.kind == "renamed" and subjects[i] is not None:
            for k in range(settings.per_record):
                if (subjects[i], k) not in new_names:
                    new_names[subjects[i], k] = names.name(subjects[i])
                name = new_names[subjects[i], k]
                answer = answers[k] if k < len(answers) else record.answer  # no donor: the values stay
                twins.append(QARecord(record.question.replace(subjects[i], name),
                                      _renamed(answer, subjects[i], name), f"twin{k + 1}-{record.id}"))
            continue
        twins.extend(QARecord(record.question, answer, f"twin{k + 1}-{record.id}") for k, answer in enumerate(answers))
    if not twins:
        raise ForgetkitError(f"--calibration auto: none of the {len(forget)} forget record(s) has a question of "
                             f"the same kind with another answer in the {settings.pool} set to swap in; give "
                             "--calibration FILE (examples like the forget set's that the model never trained on)")
    return twins
