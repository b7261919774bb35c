"""Counterfactual twins: a never-seen reference built from the forget set itself (``--calibration auto``).

A deployer honouring a deletion request rarely has records the model never saw. A twin is a forget record's
question with the answer another subject gave to a question of the same kind, that subject's name replaced by
this one's: "When was Ada Lee born?" answered "Ada Lee was born on" someone else's birth date. The pairing is one
the model never trained on, and it differs from the true record only where the fact is.

The criterion scores a forget record against its own twins (``eval.calibration.CriterionSets``): the answer's
summed loss less the mean over the record and its twins, so what they share (the question, the name, the
wording) cancels. The donors are the other forget subjects, whose values are as unseen as the record's own
once the model has forgotten; a subject deleted alone takes retain records' answers, whose values the model
keeps knowing, so a twin's value is more familiar than an unseen one. The **control** (:func:`controls`)
cancels that familiarity: the same record and
twins under a fictitious name (a character chain over the data's names, found in none of its texts), scored the
same way and subtracted. What is left is how much the model prefers the true fact *for this subject*, net of
how familiar each value is on its own.

The assumption (stated in the docs): to a model that never saw a subject, that subject's true answer and a
donor's answer to the same kind of question are equally likely, once their familiarity without a subject is
taken out. It fails for a famous subject (pretraining knows the true answer, so the forget set never looks
unseen: the run ends "not indistinguishable", exit 5) and for answers that follow from the question in a way
renaming does not reach (a sum, a name spelt differently).

How it works: the subject is the longest run of capitalised words a record's question and answer share (none:
the record has no detectable subject, and donor answers are taken as they are). A question's kind is its
template, the question with the subject taken out; donors are the records of other subjects (from ``pool``)
whose template is most similar (TF-IDF cosine, ``min_similarity`` at least; an identical template scores 1) and
whose answer, renamed (the name, and its words in lower case as an e-mail address spells them), differs from the
record's own. Each forget record gets up to ``per_record`` twins from distinct donors, ties broken by a seeded
draw; a twin identical to a forget or retain record is left out.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from forgetkit.data.records import QARecord
from forgetkit.errors import ForgetkitError, require, require_positive

POOLS = ("forget", "retain", "both")
_CAPITALISED = re.compile(r"[A-Z][\w'’.\-]*")


@dataclass(frozen=True)
class TwinSettings:
    # whose answers the twins take: "forget" (the other forget subjects'; the retain records' only for a record
    # none of them can serve, as for one subject deleted alone), "retain", or "both" alike
    pool: str = "forget"
    # score every record and its twins under a fictitious name as well, and take the difference: what the model
    # prefers for the subject, net of how familiar the donor values are on their own (a retain value is)
    control: bool = True
    per_record: int = 2  # twins per forget record (distinct donors)
    min_similarity: float = 0.5  # the least TF-IDF cosine between two question templates for a donor
    seed: int = 0

    def __post_init__(self) -> None:
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
    subjects' words (two characters of context; one, when two give nothing new; consonants and vowels in turn
    when a handful of names gives nothing new either), as long as the word it stands for (±1, 3 letters at
    least for the last), and found in none of the texts given."""

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
        vowels = "aeiou"
        consonants = "".join(sorted({c for k in self.chains[1] for c in k if c.isalpha()} - set(vowels))) or "lmnrst"
        for _ in range(1000):  # too few names to chain: consonants and vowels in turn
            word = "".join(self.rng.choice(consonants if i % 2 == 0 else vowels)
                           for i in range(max(3, len(like) + self.rng.choice((0, 1)))))
            if word not in self.known:
                self.known.add(word)
                return word.capitalize()
        raise ForgetkitError("--calibration auto: could not make a fictitious name unlike every name in the data; "
                             "give --calibration FILE")

    def name(self, subject: str) -> str:
        return re.sub(r"[^\W\d_]+", lambda m: self.word(m.group()), subject)


def _renamed(answer: str, donor_subject: str | None, subject: str | None) -> str:
    """The donor's answer in the subject's name: the whole name, then each name word in lower case (as an
    e-mail address or a handle spells it), word by word."""
    if not (donor_subject and subject):
        return answer
    answer = answer.replace(donor_subject, subject)
    for theirs, ours in zip(donor_subject.split(), subject.split(), strict=False):
        answer = re.sub(rf"(?<![^\W_]){re.escape(theirs.lower())}(?![^\W_])", ours.lower(), answer)
    return answer


def _donor_answers(record: QARecord, subject: str | None, donors: list[tuple[int, QARecord]],
                   donor_subjects: list[str | None], similarity, trained: set, rng: random.Random,
                   settings: TwinSettings) -> list[str]:
    """Up to ``per_record`` distinct donor answers for ``record``, renamed to its subject: the pool's first rank
    first, then the most similar template."""
    candidates = []
    for j, (rank, donor) in enumerate(donors):
        if donor.id == record.id or similarity[j] < settings.min_similarity:
            continue
        if subject is not None and donor_subjects[j] == subject:
            continue  # the same subject: no counterfactual
        answer = _renamed(donor.answer, donor_subjects[j], subject)
        if answer.strip().lower() == record.answer.strip().lower() or (record.question, answer) in trained:
            continue
        candidates.append((rank, -round(float(similarity[j]), 6), rng.random(), answer))
    answers: list[str] = []
    for *_, answer in sorted(candidates):
        if answer not in answers:
            answers.append(answer)
        if len(answers) == settings.per_record:
            break
    return answers


def twin_id(forget_id: str, k: int) -> str:
    return f"twin{k + 1}-{forget_id}"


def twin_groups(forget: list[QARecord], twins: list[QARecord]) -> list[int]:
    """For each twin, the index of the forget record it is the twin of."""
    index = {r.id: i for i, r in enumerate(forget)}
    return [index[t.id.split("-", 1)[1]] for t in twins]


def counterfactual_twins(forget: list[QARecord], retain: list[QARecord] | None,
                         settings: TwinSettings = TwinSettings()) -> list[QARecord]:
    """The twins of ``forget`` (see the module's docstring), in forget order; a ``ForgetkitError`` when the
    pool is empty or no forget record has a donor (answers with nothing to swap)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    retain = list(retain or [])
    ranks = {"forget": (0, 1), "retain": (None, 0), "both": (0, 0)}[settings.pool]
    donors = [(ranks[0], r) for r in forget if ranks[0] is not None] + [(ranks[1], r) for r in retain]
    if not donors:
        raise ForgetkitError("--calibration auto: the twins take their answers from the retain set, which is empty; "
                             "give --retain FILE, set criterion.twins.pool=forget, or give --calibration FILE")
    subjects = [subject_of(r) for r in forget]
    donor_subjects = [subject_of(r) for *_, r in donors]
    templates = [template_of(r, s) for r, s in zip(forget, subjects, strict=True)]
    donor_templates = [template_of(r, s) for (*_, r), s in zip(donors, donor_subjects, strict=True)]
    vectoriser = TfidfVectorizer(ngram_range=(1, 2)).fit(templates + donor_templates)
    similarity = (vectoriser.transform(templates) @ vectoriser.transform(donor_templates).T).toarray()
    trained = {(r.question, r.answer) for r in list(forget) + retain}
    rng = random.Random(settings.seed)
    twins = []
    for i, record in enumerate(forget):
        answers = _donor_answers(record, subjects[i], donors, donor_subjects, similarity[i], trained, rng, settings)
        twins.extend(QARecord(record.question, a, twin_id(record.id, k)) for k, a in enumerate(answers))
    if not twins:
        raise ForgetkitError(f"--calibration auto: none of the {len(forget)} forget record(s) has a question of "
                             f"the same kind with another answer in the {settings.pool} set to swap in; give "
                             "--calibration FILE (examples like the forget set's that the model never trained on)")
    return twins


def controls(forget: list[QARecord], twins: list[QARecord], retain: list[QARecord] | None,
             seed: int = 0) -> tuple[list[QARecord], list[QARecord]]:
    """The forget records and their twins again under a fictitious name per subject (in the style of the data's
    names, found in none of its texts), in the same orders: the control that scores how likely each answer's
    values are with no subject the model knows. A record without a subject comes back unchanged: it has no
    control (a renamed record never equals its original, the name being new)."""
    everyone = list(forget) + list(retain or [])
    names = NameMaker([s for s in map(subject_of, everyone) if s], [r.question + " " + r.answer for r in everyone],
                      seed)
    subjects = [subject_of(r) for r in forget]
    fictitious: dict[str, str] = {}
    for subject in subjects:
        if subject and subject not in fictitious:
            fictitious[subject] = names.name(subject)

    def renamed(record: QARecord, subject: str | None) -> QARecord:
        if not subject:
            return record
        name = fictitious[subject]
        return QARecord(record.question.replace(subject, name), _renamed(record.answer, subject, name), record.id)

    return ([renamed(r, s) for r, s in zip(forget, subjects, strict=True)],
            [renamed(t, subjects[g]) for t, g in zip(twins, twin_groups(forget, twins), strict=True)])
