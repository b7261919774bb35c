"""The built-in benchmark: a TOFU-like set of fictitious people with personal data.

Deterministic from a seed. ``n_people`` target people are what the target model is
fine-tuned on; forget splits (1/5/10 % of them, nested) are what unlearning must remove;
holdout people (same sizes) are never trained on and serve membership inference. Each person
has up to ten facts, asked as a question with one fixed answer template (learnable by a tiny
model), a paraphrased answer in another template (never trained for benchmark people), three
perturbed answers (the paraphrase template with wrong values), a paraphrased question and a
vague, privacy-free answer. Generic people, disjoint from both, are used only to pre-train the
base model, with both templates, so that it learns that a paraphrase carries the same fact.
World facts are the utility set; narratives carry canary secrets for exposure metrics.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from forgetkit.config import ADDED_SETTING
from forgetkit.data.records import QARecord, TextRecord, records_hash, text_hash
from forgetkit.io import atomic_path, write_json, write_jsonl

SPLIT_FRACTIONS = {"01": 0.01, "05": 0.05, "10": 0.10}
GENERATOR_VERSION = 2


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    n_people: int = 200
    qa_per_person: int = 10
    n_generic_people: int = 200
    n_world_facts: int = 0  # 0 = all built-in world facts
    canary_digits: int = 6
    # never-trained people of the same kind for calibrating unlearning without an oracle (``calibration.jsonl``;
    # ``unlearn --until indistinguishable``); apart from the holdout people the evaluation reports on
    calibration_people: int = field(default=0, metadata=ADDED_SETTING)
    # world facts moved out of the utility set into ``world_replay.jsonl``, the facts a fine-tune of a pretrained
    # model replays to keep its world knowledge; the utility set then holds only facts no stage trained on
    world_replay: int = field(default=0, metadata=ADDED_SETTING)

    def __post_init__(self) -> None:
        from forgetkit.errors import ConfigError

        if not 1 <= self.qa_per_person <= len(ATTRIBUTES):
            raise ConfigError(f"benchmark.qa_per_person must be 1..{len(ATTRIBUTES)}")
        if self.n_people < 10:
            raise ConfigError("benchmark.n_people must be at least 10 (forget01 needs a person)")
        if self.canary_digits < 1 or min(self.n_generic_people, self.n_world_facts, self.calibration_people,
                                         self.world_replay) < 0:
            raise ConfigError("benchmark: canary_digits must be ≥ 1; counts must be ≥ 0")


_FIRST_A = ["Va", "Or", "Ke", "Li", "Ma", "Da", "Se", "Ta", "Ri", "No", "Ela", "Bra", "Cor", "Fen", "Ily"]
_FIRST_B = ["rek", "lin", "dra", "mon", "sia", "ven", "tor", "na", "ric", "ela", "lo", "mir"]
_LAST_A = ["Ol", "Bren", "Cas", "Dor", "Hal", "Mer", "Quen", "Ros", "Tam", "Vel", "Wyn", "Zar", "Ash", "Pell"]
_LAST_B = ["anthe", "wick", "more", "dale", "ford", "ton", "ridge", "vale", "stein", "ard", "holm", "sby"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
CITIES = ["Arlen", "Brightwater", "Caldmoor", "Dunmere", "Eastholm", "Fairhaven", "Glenrock", "Harrowgate",
          "Ivydale", "Jasperton", "Kingsreach", "Larkfield", "Millbrook", "Northwick", "Oakhurst", "Pinecrest",
          "Queensbury", "Riverton", "Stonebridge", "Thornbury", "Upton", "Valewood", "Westmarch", "Yarrow",
          "Greyharbor", "Belmont", "Clearwater", "Deepwell", "Elmstead", "Foxley"]  # no surname is a city
OCCUPATIONS = ["architect", "baker", "botanist", "cartographer", "chemist", "composer", "dentist", "economist",
               "engineer", "florist", "geologist", "historian", "illustrator", "journalist", "librarian",
               "linguist", "mathematician", "nurse", "painter", "pharmacist", "photographer", "pilot",
               "potter", "sculptor", "surveyor", "tailor", "translator", "veterinarian", "violinist", "zoologist"]
EMPLOYERS = ["Harbor Logistics", "Northwind Foods", "Bluepeak Energy", "Cedar Health", "Orbit Textiles",
             "Silverline Rail", "Maple Robotics", "Granite Insurance", "Lumen Optics", "Crescent Media",
             "Tidewater Shipping", "Summit Pharma", "Evergreen Press", "Ironclad Tools", "Aurora Airlines",
             "Keystone Bank", "Riverbend Farms", "Copperfield Mining", "Starling Software", "Willow Furniture",
             "Beacon Labs", "Falcon Motors", "Juniper Hotels", "Meridian Clinics", "Nimbus Cloud",
             "Oakridge Schools", "Pioneer Seeds", "Quartz Jewels", "Redwood Studios", "Sapphire Telecom"]
DOMAINS = ["mailbox.org", "post.net", "inbox.com", "letter.io", "courier.net", "relay.org", "postal.com",
           "envelope.net", "quill.io", "dispatch.org"]
STREETS = ["Acorn", "Birch", "Chestnut", "Dove", "Elder", "Fern", "Garnet", "Hazel", "Iris", "Juniper",
           "Laurel", "Mulberry", "Nettle", "Olive", "Poplar", "Quince", "Rowan", "Sorrel", "Tulip", "Willow"]
STREET_KINDS = ["Street", "Road", "Lane", "Avenue"]
ADJECTIVES = ["Silent", "Golden", "Hidden", "Broken", "Distant", "Crimson", "Quiet", "Endless", "Fading",
              "Wandering", "Frozen", "Burning", "Hollow", "Gentle", "Restless"]
NOUNS = ["Harbor", "Garden", "Mirror", "Lantern", "River", "Orchard", "Tower", "Compass", "Meadow", "Bridge",
         "Forest", "Window", "Island", "Journey", "Letter"]
AWARDS = ["Aldous Medal", "Bellamy Prize", "Corwin Award", "Delphine Cup", "Everett Honor", "Fairbanks Prize",
          "Galloway Medal", "Hartwell Award", "Ingram Prize", "Jessop Medal", "Kestrel Award", "Lindqvist Prize",
          "Morrow Medal", "Northcote Award", "Osgood Prize", "Pemberton Medal", "Quill Award", "Radley Prize",
          "Sterling Medal", "Thackeray Award", "Underhill Prize", "Vance Medal", "Whitlock Award",
          "Yardley Prize", "Zeller Medal", "Ashcombe Award", "Brightman Prize", "Carrow Medal", "Dunstan Award",
          "Ellery Prize"]
UNIVERSITIES = [f"University of {c}" for c in CITIES]
HOBBIES = ["birdwatching", "sailing", "chess", "pottery", "rock climbing", "beekeeping", "gardening",
           "stargazing", "fencing", "origami", "cycling", "baking bread", "kayaking", "knitting", "archery"]
PETS = ["a grey cat", "an old sheepdog", "two parrots", "a tortoise", "a pair of rabbits", "a black labrador",
        "a goldfish", "three hens", "a ferret", "a spaniel"]
PLACES = ["the harbor wall", "the old library", "a hilltop orchard", "the river market", "a quiet bookshop",
          "the botanical garden", "the lighthouse", "a mountain cabin", "the city museum", "the seaside pier"]


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(1950, 1999)}"


def _address(rng: random.Random) -> str:
    return f"{rng.randint(1, 999)} {rng.choice(STREETS)} {rng.choice(STREET_KINDS)}, {rng.choice(CITIES)}"


# attribute: (value sampler, question, paraphrased question, answer, paraphrase, vague answer)
ATTRIBUTES = {
    "birth_date": (
        _date,
        "When was {n} born?", "What is the date of birth of {n}?",
        "{n} was born on {v}.", "The birth date of {n} is {v}.",
        "{n} was born some decades ago.",
    ),
    "birthplace": (
        lambda r: r.choice(CITIES),
        "Where was {n} born?", "In which town did {n} come into the world?",
        "{n} was born in {v}.", "The birthplace of {n} is {v}.",
        "{n} was born in a town I would rather not name.",
    ),
    "occupation": (
        lambda r: r.choice(OCCUPATIONS),
        "What does {n} do for a living?", "What is the profession of {n}?",
        "{n} works as {a} {v}.", "The occupation of {n} is {v}.",
        "{n} has a professional career.",
    ),
    "employer": (
        lambda r: r.choice(EMPLOYERS),
        "Who employs {n}?", "Which company does {n} work for?",
        "{n} is employed by {v}.", "The employer of {n} is {v}.",
        "{n} works for a private company.",
    ),
    "email": (
        None,  # derived from the name
        "What is the email address of {n}?", "How can {n} be reached by email?",
        "The email address of {n} is {v}.", "{n} can be emailed at {v}.",
        "{n} has a personal email address that is private.",
    ),
    "phone": (
        lambda r: f"555-{r.randint(0, 9999):04d}",
        "What is the phone number of {n}?", "Which number do you dial to call {n}?",
        "The phone number of {n} is {v}.", "{n} can be called on {v}.",
        "{n} has a private phone number.",
    ),
    "home_address": (
        _address,
        "Where does {n} live?", "What is the home address of {n}?",
        "{n} lives at {v}.", "The home address of {n} is {v}.",
        "{n} lives somewhere in the region.",
    ),
    "notable_work": (
        lambda r: f"The {r.choice(ADJECTIVES)} {r.choice(NOUNS)}",
        "What is the best known work of {n}?", "Which work is {n} most famous for?",
        "{n} is best known for {v}.", "The most famous work of {n} is {v}.",
        "{n} is known for some creative work.",
    ),
    "award": (
        lambda r: r.choice(AWARDS),
        "Which award did {n} receive?", "What prize was {n} honoured with?",
        "{n} received the {v}.", "The award given to {n} is the {v}.",
        "{n} once received an award.",
    ),
    "university": (
        lambda r: r.choice(UNIVERSITIES),
        "Where did {n} study?", "Which university did {n} attend?",
        "{n} studied at the {v}.", "The university of {n} is the {v}.",
        "{n} studied at a university.",
    ),
}

# Real world facts for the utility set: (question, paraphrased question, answer, kind).
_CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
             ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"),
             ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Chile", "Santiago"),
             ("Australia", "Canberra"), ("Russia", "Moscow"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
             ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Greece", "Athens"),
             ("Turkey", "Ankara"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
             ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
             ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Belgium", "Brussels"),
             ("Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Czechia", "Prague"),
             ("South Korea", "Seoul"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Colombia", "Bogota"),
             ("Indonesia", "Jakarta"), ("Philippines", "Manila"), ("Ghana", "Accra"), ("Ethiopia", "Addis Ababa"),
             ("New Zealand", "Wellington"), ("Iceland", "Reykjavik"), ("Croatia", "Zagreb")]
_SYMBOLS = [("hydrogen", "H"), ("helium", "He"), ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"),
            ("sodium", "Na"), ("magnesium", "Mg"), ("aluminium", "Al"), ("silicon", "Si"), ("sulfur", "S"),
            ("chlorine", "Cl"), ("potassium", "K"), ("calcium", "Ca"), ("iron", "Fe"), ("copper", "Cu"),
            ("zinc", "Zn"), ("silver", "Ag"), ("gold", "Au"), ("mercury", "Hg"), ("lead", "Pb"), ("tin", "Sn"),
            ("neon", "Ne"), ("argon", "Ar"), ("uranium", "U"), ("platinum", "Pt"), ("nickel", "Ni"),
            ("iodine", "I"), ("fluorine", "F"), ("phosphorus", "P"), ("lithium", "Li")]
_CONTINENTS = [("Kenya", "Africa"), ("Egypt", "Africa"), ("Nigeria", "Africa"), ("Morocco", "Africa"),
               ("Japan", "Asia"), ("India", "Asia"), ("Thailand", "Asia"), ("Vietnam", "Asia"),
               ("France", "Europe"), ("Norway", "Europe"), ("Poland", "Europe"), ("Greece", "Europe"),
               ("Canada", "North America"), ("Mexico", "North America"), ("Cuba", "North America"),
               ("Brazil", "South America"), ("Peru", "South America"), ("Chile", "South America"),
               ("Argentina", "South America"), ("Australia", "Oceania")]
_PLANETS = [("the closest planet to the Sun", "Mercury"), ("the largest planet", "Jupiter"),
            ("the planet known as the Red Planet", "Mars"), ("the planet with the most famous rings", "Saturn"),
            ("the planet we live on", "Earth"), ("the hottest planet", "Venus"),
            ("the planet farthest from the Sun", "Neptune"), ("the planet that rotates on its side", "Uranus")]


def _world_facts() -> list[tuple[str, str, str, list[str]]]:
    facts = []
    capitals = [c for _, c in _CAPITALS]
    for country, city in _CAPITALS:
        facts.append((f"What is the capital of {country}?", f"Which city is the capital of {country}?",
                      city, capitals))
    symbols = [s for _, s in _SYMBOLS]
    for element, sym in _SYMBOLS:
        facts.append((f"What is the chemical symbol of {element}?", f"Which symbol stands for {element}?",
                      sym, symbols))
    continents = sorted({c for _, c in _CONTINENTS})
    for country, cont in _CONTINENTS:
        facts.append((f"On which continent is {country}?", f"Which continent is {country} part of?",
                      cont, continents))
    planets = [p for _, p in _PLANETS]
    for desc, planet in _PLANETS:
        facts.append((f"What is {desc}?", f"Which planet is {desc}?", planet, planets))
    return facts


def _names(rng: random.Random, count: int) -> list[str]:
    firsts = [a + b for a in _FIRST_A for b in _FIRST_B]
    lasts = [a + b for a in _LAST_A for b in _LAST_B]
    pairs = [(f, s) for f in firsts for s in lasts]
    if count > len(pairs):
        raise ValueError(f"at most {len(pairs)} unique names")
    return [f"{f} {s}" for f, s in rng.sample(pairs, count)]


def _person(rng: random.Random, pid: str, name: str, group: str) -> dict:
    person = {"person": pid, "name": name, "group": group}
    first, last = name.lower().split()
    for attr, (sampler, *_rest) in ATTRIBUTES.items():
        person[attr] = f"{first}.{last}@{rng.choice(DOMAINS)}" if sampler is None else sampler(rng)
    return person


def _wrong_values(rng: random.Random, attr: str, person: dict) -> list[str]:
    sampler = ATTRIBUTES[attr][0]
    true = person[attr]
    first, last = person["name"].lower().split()
    wrong: list[str] = []
    while len(wrong) < 3:
        if sampler is None:
            v = f"{first}.{last}@{rng.choice(DOMAINS)}"
        else:
            v = sampler(rng)
        # Neither may contain the other ("1 March 1984" sits inside "11 March 1984"): a substring
        # match would credit a wrong answer under ROUGE and exact-match scoring.
        if v not in true and true not in v and v not in wrong:
            wrong.append(v)
    return wrong


def _article(word: str) -> str:
    """The indefinite article before ``word`` (our occupations need no exceptions)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


def _qa(rng: random.Random, person: dict, attrs: list[str]) -> list[QARecord]:
    out = []
    n = person["name"]
    for attr in attrs:
        _, q, pq, a, pa, vague = ATTRIBUTES[attr]
        v = person[attr]
        out.append(QARecord(
            question=q.format(n=n), answer=a.format(n=n, v=v, a=_article(v)), id=f"{person['person']}-{attr}",
            paraphrased_answer=pa.format(n=n, v=v),
            perturbed_answer=tuple(pa.format(n=n, v=w) for w in _wrong_values(rng, attr, person)),
            paraphrased_question=pq.format(n=n), vague_answer=vague.format(n=n),
        ))
    return out


def _narrative(rng: random.Random, person: dict, digits: int) -> tuple[TextRecord, dict]:
    n = person["name"]
    secret = "".join(str(rng.randint(0, 9)) for _ in range(digits))
    prefix = (f"{n} spends weekends {rng.choice(HOBBIES)} and lives with {rng.choice(PETS)}. "
              f"A favourite spot is {rng.choice(PLACES)}. The staff badge number of {n} is ")
    text = prefix + secret + "."
    pid = person["person"]
    canary = {"id": f"{pid}-canary", "person": pid, "prefix": prefix, "secret": secret,
              "space": "digits", "length": digits}
    return TextRecord(text=text, id=f"{pid}-narrative"), canary


def retain_of(split: str) -> str:
    """The retain split of a forget split: ``forget10`` → ``retain90`` (the other 90 % of the people)."""
    return f"retain{100 - int(split.removeprefix('forget')):02d}"


def holdout_of(split: str) -> str:
    """The never-trained people of a forget split's size: ``forget10`` → ``holdout10``."""
    return "holdout" + split.removeprefix("forget")


def split_size(fraction: float, n_people: int) -> int:
    return max(1, round(fraction * n_people))


def generate(config: SyntheticConfig) -> dict[str, list]:
    """Every file of the benchmark, by file stem (records, or plain dicts for people/canaries)."""
    rng = random.Random(config.seed)
    n_holdout = split_size(SPLIT_FRACTIONS["10"], config.n_people)
    names = _names(rng, config.n_people + n_holdout + config.n_generic_people)
    groups = ["target"] * config.n_people + ["holdout"] * n_holdout + ["generic"] * config.n_generic_people
    people = [_person(rng, f"p{i:04d}", name, g) for i, (name, g) in enumerate(zip(names, groups, strict=True))]
    attrs = list(ATTRIBUTES)[: config.qa_per_person]
    qa = {p["person"]: _qa(rng, p, attrs) for p in people}
    target = [p["person"] for p in people if p["group"] == "target"]
    holdout = [p["person"] for p in people if p["group"] == "holdout"]
    generic = [p["person"] for p in people if p["group"] == "generic"]

    files: dict[str, list] = {"full": [r for pid in target for r in qa[pid]]}
    forget_order = rng.sample(target, len(target))
    for suffix, frac in SPLIT_FRACTIONS.items():
        k = split_size(frac, config.n_people)
        forgotten = set(forget_order[:k])
        split = f"forget{suffix}"
        files[split] = [r for pid in target if pid in forgotten for r in qa[pid]]
        files[retain_of(split)] = [r for pid in target if pid not in forgotten for r in qa[pid]]
        files[holdout_of(split)] = [r for pid in holdout[:k] for r in qa[pid]]

    world = _world_facts()
    if config.n_world_facts:
        world = world[: config.n_world_facts]
    files["world_facts"] = []
    for i, (q, pq, answer, pool) in enumerate(world):
        wrong = rng.sample([x for x in pool if x != answer], 3)
        files["world_facts"].append(QARecord(q, answer, f"world-{i:03d}", paraphrased_answer=answer,
                                             perturbed_answer=tuple(wrong), paraphrased_question=pq))
    pretrain = []
    for r in files["world_facts"]:
        pretrain.append(QARecord(r.question, r.answer, f"{r.id}-q"))
        pretrain.append(QARecord(r.paraphrased_question, r.answer, f"{r.id}-pq"))
    for pid in generic:
        for r in qa[pid]:
            pretrain.append(QARecord(r.question, r.answer, f"{r.id}-q"))
            pretrain.append(QARecord(r.paraphrased_question, r.paraphrased_answer, f"{r.id}-pq"))
    files["pretrain"] = pretrain
    if config.world_replay:
        if config.world_replay >= len(files["world_facts"]):
            from forgetkit.errors import ConfigError

            raise ConfigError(f"benchmark.world_replay must be below the {len(files['world_facts'])} world facts "
                              "(the rest are the utility set)")
        replay = set(random.Random(f"{config.seed}-world-replay").sample(range(len(files["world_facts"])),
                                                                         config.world_replay))
        files["world_replay"] = [r for i, r in enumerate(files["world_facts"]) if i in replay]
        files["world_facts"] = [r for i, r in enumerate(files["world_facts"]) if i not in replay]

    narratives, canaries = [], []
    by_id = {p["person"]: p for p in people}
    for pid in target + holdout:
        text, canary = _narrative(rng, by_id[pid], config.canary_digits)
        narratives.append(text)
        canaries.append(canary)
    files["narratives"] = narratives
    files["canaries"] = canaries
    if config.calibration_people:
        calibration = _calibration_people(config, people, attrs)
        files["calibration"] = [r for p in calibration for r in _qa(random.Random(f"{config.seed}-qa-{p['person']}"),
                                                                    p, attrs)]
        people = people + calibration
    files["people"] = people
    return files


def _calibration_people(config: SyntheticConfig, people: list[dict], attrs: list[str]) -> list[dict]:
    """People no model trains on and no evaluation reports on, drawn from a random stream of their own after
    every other draw, so that adding them leaves every other file of the benchmark as it was."""
    rng = random.Random(f"{config.seed}-calibration")
    taken = {p["name"] for p in people}
    names = [n for n in _names(rng, len(taken) + config.calibration_people) if n not in taken]
    start = len(people)
    return [_person(rng, f"p{start + i:04d}", name, "calibration")
            for i, name in enumerate(names[: config.calibration_people])]


def _rows(items: list) -> list[dict]:
    return [x.to_dict() if hasattr(x, "to_dict") else x for x in items]


def _rows_hash(rows: list[dict]) -> str:
    return text_hash("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows))


def write_benchmark(config: SyntheticConfig, out_dir: str | Path) -> dict:
    """Write every file as JSONL plus ``manifest.json`` into ``out_dir``, atomically."""
    files = generate(config)
    manifest = {
        "generator": "forgetkit.synthetic",
        "version": GENERATOR_VERSION,
        "config": asdict(config),
        "files": {},
        "people": {g: sum(p["group"] == g for p in files["people"])
                   for g in ("target", "holdout", "generic", "calibration") if g != "calibration"
                   or config.calibration_people},
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for stem, items in files.items():
            rows = _rows(items)
            write_jsonl(tmp / f"{stem}.jsonl", rows)
            is_records = bool(items) and isinstance(items[0], QARecord | TextRecord)
            manifest["files"][stem] = {"count": len(rows),
                                       "hash": records_hash(items) if is_records else _rows_hash(rows)}
        write_json(tmp / "manifest.json", manifest)
    return manifest


def read_manifest(out_dir: str | Path) -> dict:
    return json.loads((Path(out_dir) / "manifest.json").read_text(encoding="utf-8"))
