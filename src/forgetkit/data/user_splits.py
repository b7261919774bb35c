"""A user's own QA dataset as a prepared run's split files, so that every later command reads it as it reads the
built-in benchmark (``forgetNN``, ``retainNN``, ``holdoutNN``, ``full``, ``calibration``, the utility sets).

Two layouts, told apart by what ``data.path`` is:

- **grouped**: one set of records, in any format :func:`forgetkit.data.readers.read_records` takes, whose
  records carry a grouping field (the author, person or subject their facts are about: ``data.group``). Groups
  are shuffled with ``data.seed`` and dealt out: ``data.calibration_groups`` never-trained groups for
  ``--until indistinguishable``; a holdout pool of never-trained groups as large as the largest forget split,
  which the evaluation reports on; and the trained groups, of which each ``forgetNN`` takes NN % (at least one
  group, nested: forget01 within forget05 within forget10) and whose rest is ``retainNN``.
- **TOFU's released layout**: a directory of split files (``forgetNN``, ``retainNN``, ``full``, ``holdoutNN``,
  ``forgetNN_perturbed``, ``retain_perturbed``, ``world_facts[_perturbed]``, ``real_authors[_perturbed]``,
  ``calibration``; any reader format). The user's splits are taken as they are. Without a grouping field a
  group is ``data.group_size`` consecutive records (TOFU: 20 questions per author), else each record.
  Without a ``calibration`` file the last ``data.calibration_groups`` groups of the largest holdout become the
  calibration set and leave every holdout split, so the stop and the evaluation never share a record.

Every record keeps its content and gets the id ``g<group>-<its id>`` (``g0003-full-61``), so its group is its
id's prefix (:func:`forgetkit.data.records.group_of`), as in the built-in benchmark; one record has one id
in every split. Group values (often people's names) are never written. Records that two disjoint splits
share, or a question they answer differently, are refused in one line naming the file, the record and the
field.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from forgetkit.data.readers import SUFFIXES, content_key, read_grouped, read_records
from forgetkit.data.records import FieldMap, QARecord, group_of, records_hash
from forgetkit.data.synthetic import holdout_of, retain_of, split_size
from forgetkit.errors import ConfigError, DataError
from forgetkit.io import dir_hash, fingerprint, write_json, write_jsonl

log = logging.getLogger("forgetkit")
GENERATOR = "forgetkit.user-data"
VERSION = 1  # bump when the split files this writes change for the same input
FORGET_NAME = re.compile(r"forget(\d{2})")
SPLIT_FILE = re.compile(r"(full|calibration|(?:forget|retain|holdout)\d{2}|forget\d{2}_perturbed|retain_perturbed|"
                        r"world_facts(?:_perturbed)?|real_authors(?:_perturbed)?)")
OPTIONAL_FIELDS = ("paraphrased_answer", "perturbed_answer", "paraphrased_question")


@dataclass
class DatasetSettings:
    """Where a user's QA dataset is and how to split it (``prepare --data PATH --group FIELD``)."""

    path: str = ""  # a data file or datasets directory (grouped), or a directory in TOFU's layout; empty: built-in
    group: str = ""  # the grouping field (author, person, subject); empty: group_size, else each record
    group_size: int = 0  # with no grouping field: this many consecutive records are one group (TOFU: 20)
    split: str = ""  # the split of a saved DatasetDict
    fields: list[str] = field(default_factory=list)  # the file's names for ours: ["question=prompt", ...]
    forget_splits: list[str] = field(default_factory=lambda: ["forget01", "forget05", "forget10"])
    calibration_groups: int = 2  # never-trained groups for --until, apart from the evaluation's holdout
    seed: int = 0

    def __post_init__(self) -> None:
        if self.group_size < 0 or self.calibration_groups < 0:
            raise ConfigError("data.group_size and data.calibration_groups must be ≥ 0")
        for name in self.forget_splits:
            match = FORGET_NAME.fullmatch(name)
            if not match or not 1 <= int(match.group(1)) <= 50:
                raise ConfigError(f"data.forget_splits: '{name}' is not forget01 … forget50")
        if not self.forget_splits:
            raise ConfigError("data.forget_splits: name at least one split (forget01 … forget50)")
        FieldMap.parse(self.fields)  # a malformed entry is refused before any work

    def key(self, source: str) -> dict:
        """What the split files depend on: the settings (not where the data lies) and the data's content
        (``source``: :attr:`UserSplits.source_hash`)."""
        return {**{k: v for k, v in asdict(self).items() if k != "path"}, "source": source, "version": VERSION}


@dataclass
class _Read:
    """One file's records, each one's group and its position (for one-line errors)."""

    path: Path
    records: list[QARecord]
    groups: list[str]
    positions: list[dict]
    scope: str  # "" when groups are a grouping field's values (shared by every file); else the file's own

    def error(self, index: int, problem: str, field: str = "question") -> DataError:
        return DataError(self.path, problem, **self.positions[index], field=field)


@dataclass
class UserSplits:
    """A user's dataset split: the split files by name, and what the manifest says about them."""

    layout: str = ""
    source_hash: str = ""  # the fingerprint of the data read (the stage key's and the manifest's)
    files: dict[str, list[QARecord]] = field(default_factory=dict)
    origin: dict[str, _Read] = field(default_factory=dict)  # the file each split came from (for errors)
    groups: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def notice(self, text: str) -> None:
        self.notices.append(text)
        log.warning("%s", text)


def source_hash(path: Path) -> str:
    """The fingerprint of a data file, or of every file under a data directory."""
    if path.is_dir():
        return dir_hash(path, "**/*")
    return fingerprint([path.read_bytes()])


def tofu_files(root: Path) -> dict[str, Path]:
    """The split files of a directory in TOFU's layout, by name; empty when it holds none. Two files for one
    split (``forget10.json`` and ``forget10.jsonl``) are refused."""
    found: dict[str, Path] = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix.lower() in SUFFIXES and SPLIT_FILE.fullmatch(path.stem):
            if path.stem in found:
                raise DataError(path, f"a second file for split '{path.stem}' (the first: {found[path.stem].name})")
            found[path.stem] = path
    return found


def split_user_data(settings: DatasetSettings) -> UserSplits:
    """Read and split ``settings.path``, checking every record, before anything is written."""
    source = Path(settings.path)
    if not source.exists():
        raise DataError(source, "file not found (data.path)")
    layout = "tofu" if source.is_dir() and tofu_files(source) else "grouped"
    splits = _tofu_splits(settings, source) if layout == "tofu" else _grouped_splits(settings, source)
    splits.layout, splits.source_hash = layout, source_hash(source)
    _refuse_crossings(splits)
    return splits


def write_user_benchmark(settings: DatasetSettings, out_dir: Path, splits: UserSplits | None = None) -> dict:
    """Write every split of ``settings.path`` (``splits``, when :func:`split_user_data` made them already) as
    JSON Lines, with ``manifest.json``, into ``out_dir`` (a directory the caller renames into place). Returns
    the manifest."""
    splits = splits or split_user_data(settings)
    source = Path(settings.path)
    manifest = {"generator": GENERATOR, "version": VERSION, "layout": splits.layout, "source": str(source),
                "source_hash": splits.source_hash, "settings": asdict(settings), "groups": splits.groups,
                "files": {}, "notices": splits.notices}
    for stem, records in splits.files.items():
        write_jsonl(out_dir / f"{stem}.jsonl", [r.to_dict() for r in records])
        manifest["files"][stem] = {"count": len(records), "hash": records_hash(records)}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def _read(settings: DatasetSettings, path: Path) -> _Read:
    """A file's records with their groups: the grouping field's values, else ``group_size`` chunks, else one
    group per record (group names local to the file; :func:`_number` makes them global)."""
    fields = FieldMap.parse(settings.fields)
    records, groups, positions = read_grouped(path, settings.group or None, fields, settings.split or None)
    if not settings.group:
        size = settings.group_size or 1
        groups = [str(i // size) for i in range(len(records))]
    return _Read(path, records, groups, positions, "" if settings.group else path.name)


def _number(reads: list[_Read], start: int = 0) -> dict[str, QARecord]:
    """Every record of ``reads`` by content, renamed ``g<group>-<id>`` with groups numbered in order of first
    appearance from ``start`` (a file's chunk groups are its own)."""
    numbers: dict[tuple, int] = {}
    out: dict[str, QARecord] = {}
    for read in reads:
        for record, group in zip(read.records, read.groups, strict=True):
            number = numbers.setdefault((read.scope, group), start + len(numbers))
            out.setdefault(content_key(record), replace(record, id=f"g{number:04d}-{record.id}"))
    return out


def _groups_needed(n_groups: int, largest: float, n_calibration: int) -> int:
    """The most trained groups ``n_groups`` allow, beside a holdout pool as large as the largest forget split
    and the calibration groups; 0 when too few for a forget split that leaves a retain set."""
    for trained in range(n_groups, 1, -1):
        held = split_size(largest, trained)
        if trained + held + n_calibration <= n_groups and held < trained:
            return trained
    return 0


def _percent(split: str) -> float:
    return int(split.removeprefix("forget")) / 100


def _grouped_splits(settings: DatasetSettings, path: Path) -> UserSplits:
    """Splits dealt out by group from one set of records."""
    read = _read(settings, path)
    order = list(dict.fromkeys(read.groups))
    if not settings.group and not settings.group_size:
        log.warning("%s: no grouping field (data.group) nor data.group_size: each record is its own group", path)
    largest = max(_percent(s) for s in settings.forget_splits)
    trained_n = _groups_needed(len(order), largest, settings.calibration_groups)
    if not trained_n:
        need = 3 + settings.calibration_groups
        raise DataError(path, f"{len(order)} group(s), too few for the splits: they need at least {need} (2 trained, "
                        f"so that a forget split leaves a retain set; 1 never trained, for the holdout; "
                        f"{settings.calibration_groups} for calibration)", field=settings.group or None)
    shuffled = random.Random(settings.seed).sample(order, len(order))
    # what the trained groups leave beyond the calibration is the holdout pool (at most a group more than the
    # largest holdout split needs, when the split sizes' rounding leaves one over)
    n_cal = settings.calibration_groups
    n_held = len(order) - n_cal - trained_n
    trained = shuffled[n_cal + n_held:]
    held = shuffled[n_cal:n_cal + n_held]
    number = {g: i for i, g in enumerate(order)}
    renamed = [replace(r, id=f"g{number[g]:04d}-{r.id}") for r, g in zip(read.records, read.groups, strict=True)]

    def of(groups: list[str]) -> list[QARecord]:
        chosen = set(groups)
        return [r for r, g in zip(renamed, read.groups, strict=True) if g in chosen]

    splits = UserSplits(groups={"trained": len(trained), "holdout": n_held, "calibration": n_cal})
    splits.files["full"] = of(trained)
    for split in sorted(settings.forget_splits):
        k = split_size(_percent(split), trained_n)
        splits.files[split], splits.files[retain_of(split)] = of(trained[:k]), of(trained[k:])
        splits.files[holdout_of(split)] = of(held[:k])
    if n_cal:
        splits.files["calibration"] = of(shuffled[:n_cal])
    splits.origin = dict.fromkeys(splits.files, read)
    return splits


def _tofu_splits(settings: DatasetSettings, root: Path) -> UserSplits:
    """The user's own split files (TOFU's layout), checked against each other and enriched with their
    paraphrased and perturbed answers."""
    found = tofu_files(root)
    reads = {stem: _read(settings, path) for stem, path in found.items()}
    forgets = sorted({m.group(0) for s in found if (m := FORGET_NAME.match(s))})
    if not forgets:
        raise DataError(root, "no forget split (forget01.json, forget10.json, …) in TOFU's layout")
    largest = forgets[-1]
    trained = _trained_sequence(reads, largest, root)
    held = sorted((s for s in reads if s.startswith("holdout")), reverse=True)
    canon = _number(trained)
    never = _number([reads[s] for s in held] + ([reads["calibration"]] if "calibration" in reads else []),
                    start=_group_count(canon))
    _enrich(canon, reads, forgets)
    splits = UserSplits()
    splits.files["full"] = list(canon.values())
    splits.origin["full"] = trained[0]
    for split in forgets:
        forget = reads.get(split) or reads[f"{split}_perturbed"]
        splits.files[split] = _members(forget, canon, "full")
        splits.origin[split] = forget
        retain = reads.get(retain_of(split))
        keys = {content_key(r) for r in splits.files[split]}
        splits.files[retain_of(split)] = (_members(retain, canon, "full") if retain is not None
                                          else [r for k, r in canon.items() if k not in keys])
        splits.origin[retain_of(split)] = retain or trained[0]
        _refuse_missing(splits, split, canon)
    if "retain_perturbed" in reads:
        _first_with_perturbed(splits, forgets)
    _holdouts(settings, splits, reads, held, never)
    for utility in ("world_facts", "real_authors"):
        chosen = reads.get(f"{utility}_perturbed") or reads.get(utility)
        if chosen is not None:
            splits.files[utility] = chosen.records
            splits.origin[utility] = chosen
    splits.groups["trained"] = _group_count(canon)
    return splits


def _trained_sequence(reads: dict[str, _Read], largest: str, root: Path) -> list[_Read]:
    """What the target trains on: ``full``, else the largest split's retain and forget files."""
    if "full" in reads:
        return [reads["full"]]
    retain = reads.get(retain_of(largest))
    forget = reads.get(largest) or reads.get(f"{largest}_perturbed")
    if retain is None:
        raise DataError(root, f"neither full nor {retain_of(largest)} in TOFU's layout: the target's training set "
                        "is unknown")
    return [retain, forget]


def _group_count(canon: dict[str, QARecord]) -> int:
    return len({group_of(r.id) for r in canon.values()})


def _members(read: _Read, canon: dict[str, QARecord], where: str) -> list[QARecord]:
    """``read``'s records as their canonical copies; a record not among them is refused."""
    out = []
    for i, record in enumerate(read.records):
        key = content_key(record)
        if key not in canon:
            raise read.error(i, f"not in {where}: a split's records must be records of {where}")
        out.append(canon[key])
    return out


def _enrich(canon: dict[str, QARecord], reads: dict[str, _Read], forgets: list[str]) -> None:
    """Give the canonical records the paraphrased and perturbed answers of the ``*_perturbed`` files (a record
    those files name that is not trained on is refused)."""
    for stem in [f"{s}_perturbed" for s in forgets] + ["retain_perturbed"]:
        read = reads.get(stem)
        if read is None:
            continue
        for i, record in enumerate(read.records):
            key = content_key(record)
            if key not in canon:
                raise read.error(i, "not in the trained records (full): a perturbed file enriches its split's records")
            extra = {f: getattr(record, f) for f in OPTIONAL_FIELDS if getattr(record, f)}
            canon[key] = replace(canon[key], **extra)


def _refuse_missing(splits: UserSplits, split: str, canon: dict[str, QARecord]) -> None:
    """The forget and retain files of ``split`` together hold every trained record (else the oracle differs
    from the target by more than the forget set)."""
    held = {content_key(r) for name in (split, retain_of(split)) for r in splits.files[name]}
    missing = [r for k, r in canon.items() if k not in held]
    if missing:
        read = splits.origin["full"]
        index = next(i for i, r in enumerate(read.records) if content_key(r) == content_key(missing[0]))
        raise read.error(index, f"{len(missing)} trained record(s) are in neither {split} nor {retain_of(split)} "
                         "(the oracle would miss more than the forget set)")


def _first_with_perturbed(splits: UserSplits, forgets: list[str]) -> None:
    """Each retain split lists its records with perturbed answers first, so that an evaluation of its first N
    (``retain_limit``) scores the truth ratio on them, as TOFU's ``retain_perturbed`` does."""
    for split in forgets:
        name = retain_of(split)
        records = splits.files[name]
        splits.files[name] = [r for r in records if r.perturbed_answer] + [r for r in records if not r.perturbed_answer]


def _holdouts(settings: DatasetSettings, splits: UserSplits, reads: dict[str, _Read], held: list[str],
              never: dict[str, QARecord]) -> None:
    """The holdout splits and the calibration set: the user's ``calibration`` file, else the last
    ``calibration_groups`` groups of the largest holdout, taken out of every holdout split."""
    carved: set[str] = set()
    if "calibration" in reads:
        splits.files["calibration"] = _members(reads["calibration"], never, "the never-trained records")
        splits.origin["calibration"] = reads["calibration"]
    elif held and settings.calibration_groups:
        pool = _members(reads[held[0]], never, held[0])
        groups = list(dict.fromkeys(group_of(r.id) for r in pool))
        if len(groups) <= settings.calibration_groups:
            raise reads[held[0]].error(0, f"{len(groups)} group(s), too few to keep {settings.calibration_groups} for "
                                       "calibration and one for the holdout (give a calibration file, or set "
                                       "data.calibration_groups lower)")
        carved = set(groups[-settings.calibration_groups:])
        splits.files["calibration"] = [r for r in pool if group_of(r.id) in carved]
        splits.origin["calibration"] = reads[held[0]]
        splits.notice(f"calibration: the last {len(carved)} group(s) of {held[0]} "
                      f"({len(splits.files['calibration'])} records), taken out of every holdout split")
    else:
        splits.notice("no calibration set (no calibration file and no holdout to take it from): --until "
                      "indistinguishable needs --calibration FILE")
    for stem in held:
        kept = [r for r in _members(reads[stem], never, stem) if group_of(r.id) not in carved]
        if not kept:
            raise reads[stem].error(0, "no record left once the calibration groups are taken out (give a "
                                    "calibration file, or set data.calibration_groups lower)")
        splits.files[stem], splits.origin[stem] = kept, reads[stem]
    splits.groups["holdout"] = len({group_of(r.id) for s in held for r in splits.files[s]})
    splits.groups["calibration"] = len({group_of(r.id) for r in splits.files.get("calibration", [])})


def _refuse_crossings(splits: UserSplits) -> None:
    """Refuse a record that two disjoint splits share (a duplicate), or a question they answer differently (a
    conflict): each forget split against its retain split, and the trained records against the never-trained
    ones (holdout, calibration) and those against each other."""
    files = splits.files
    pairs = [(s, retain_of(s)) for s in files if FORGET_NAME.fullmatch(s)]
    never = [s for s in files if s.startswith("holdout")] + (["calibration"] if "calibration" in files else [])
    pairs += [("full", s) for s in never]
    pairs += [(s, "calibration") for s in never if s != "calibration" and "calibration" in files]
    for first, second in pairs:
        _refuse_crossing(first, files[first], second, files[second], splits.origin[second])


def _refuse_crossing(first: str, a: list[QARecord], second: str, b: list[QARecord], origin: _Read) -> None:
    contents = {content_key(r) for r in a}
    questions = {_question_key(r) for r in a}
    for record in b:
        kind = ("duplicate" if content_key(record) in contents else
                "conflicting: the same question with another answer" if _question_key(record) in questions else "")
        if kind:
            index = _position(origin, record)
            problem = f"record '{record.id}' is in both {first} and {second} ({kind}); a record belongs to one only"
            if index is None:
                raise DataError(origin.path, problem, field="question")
            raise origin.error(index, problem)


def _question_key(record: QARecord) -> str:
    return " ".join(record.question.lower().split())


def _position(read: _Read, record: QARecord) -> int | None:
    key = content_key(record)
    return next((i for i, r in enumerate(read.records) if content_key(r) == key), None)


TOFU_FIELDS = ("question", "answer")  # a plain split file's fields; a *_perturbed file adds OPTIONAL_FIELDS


def write_tofu_layout(bench_dir: Path, out_dir: Path, retain_perturbed: int = 400) -> list[str]:
    """Write a built-in benchmark directory (``RUN/benchmark``) out in TOFU's released layout, as TOFU ships it
    (JSON Lines named ``.json``, no ids, no grouping field): the splits, ``forgetNN_perturbed``, the first
    ``retain_perturbed`` retain records with their perturbed answers, the world facts and the calibration
    people. What a user holding TOFU's files has, so that reading it back checks the user-data path against
    the built-in one. Returns the names of the files written."""
    written = []

    def write(stem: str, records: list[QARecord], names: tuple[str, ...]) -> None:
        rows = [{k: v for k, v in r.to_dict().items() if k in names} for r in records]
        write_jsonl(out_dir / f"{stem}.json", rows)
        written.append(f"{stem}.json")

    everything = TOFU_FIELDS + OPTIONAL_FIELDS
    for path in sorted(bench_dir.glob("*.jsonl")):
        stem = path.stem
        if SPLIT_FILE.fullmatch(stem) and stem not in ("world_facts", "calibration"):
            write(stem, read_records(path), TOFU_FIELDS)
            if FORGET_NAME.fullmatch(stem):
                write(f"{stem}_perturbed", read_records(path), everything)
    retains = sorted(bench_dir.glob("retain*.jsonl"))
    if retains:
        write("retain_perturbed", read_records(retains[0])[:retain_perturbed], everything)
    for stem, name in (("world_facts", "world_facts_perturbed"), ("calibration", "calibration")):
        if (bench_dir / f"{stem}.jsonl").is_file():
            write(name, read_records(bench_dir / f"{stem}.jsonl"), everything)
    return written
