"""Exact unlearning with sharded adapters (SISA / LMEraser for LoRA): deleting data retrains only its shard.

The fine-tuning data is split into shards by group (``group_by``: a person, the id's prefix, so that
all of a person's records stay in one shard; each record alone; or a k-means cluster of the question
embeddings, for data without people); each shard trains its own LoRA adapter on the frozen base,
from a seed that depends only on the shard's index. A deletion request removes the records, and
retrains from scratch, with the same seed, only the shards that held them: each adapter is then
exactly what training without the deleted records gives (``test_exact`` checks it bit for bit), and
the other shards are untouched. Serving (:class:`ShardedModel`) routes a prompt to the shard of the
nearest group prototype (the base model's mean input embedding over a group's question tokens,
centred), or averages every shard's next-token distribution; a deletion recomputes the prototypes
from the remaining questions, since they were computed from the deleted text.

``shards.json`` in the output directory holds the assignment (group → shard), each record's group by
content hash, each shard's record count and content hash, its adapter's hash and training cost, and
the prototypes: no text.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from forgetkit.adapters.lora import LoraSettings, attach_lora
from forgetkit.checks import ADAPTER_CONFIG, damage, json_object
from forgetkit.config import plain_config
from forgetkit.data.formatting import pad_id, prompt_ids, tokenize_qa
from forgetkit.data.records import QARecord, group_of, records_hash
from forgetkit.errors import ConfigError, ForgetkitError, require_positive
from forgetkit.io import dir_hash, set_aside, write_json
from forgetkit.train import TrainConfig, fine_tune

MANIFEST = "shards.json"
SHARD_INFO = "shard.json"  # written last in a shard's directory: the shard is finished
ADAPTER_WEIGHTS = "*.safetensors"  # a shard adapter's weights, fingerprinted in its shard.json (adapter_hash)
SERVING = ("route", "average")
GROUPINGS = ("person", "record", "cluster")


@dataclass
class ShardConfig:
    shards: int = 4
    lora: LoraSettings = field(default_factory=lambda: LoraSettings(r=32, alpha=64))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=15, batch_size=32, lr=5e-3,
                                                                   scheduler="cosine", warmup_ratio=0.03))
    max_length: int = 64
    seed: int = 0
    group_by: str = "person"  # person (id prefix before '-'), record, or cluster (k-means of question embeddings)
    clusters: int = 0  # group_by=cluster: the number of clusters (0: four per shard)

    def __post_init__(self) -> None:
        if self.group_by not in GROUPINGS:
            raise ConfigError(f"group_by must be one of {', '.join(GROUPINGS)}, got '{self.group_by}'")
        require_positive(self, "shards", "max_length")
        require_positive(self, "clusters", allow_zero=True)


def assign(groups: list[str], shards: int) -> dict[str, int]:
    """Group → shard: groups in the order of their hash, dealt round-robin (balanced, independent of input order)."""
    if shards < 1:
        raise ForgetkitError("shards must be at least 1")
    ordered = sorted(set(groups), key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    return {g: i % shards for i, g in enumerate(ordered)}


def train_shard(base_dir: Path, records: list[QARecord], shared: list[QARecord], config: ShardConfig, index: int,
                out: Path, quiet: bool = True) -> dict:
    """Train shard ``index``'s adapter from scratch on ``records`` (+ ``shared``, data every shard sees and no
    request deletes, e.g. public facts) into ``out``; the same inputs always give the same adapter."""
    from forgetkit.models import load_model, save_model

    model, tokenizer = load_model(base_dir)
    torch.manual_seed(config.seed + index)
    model = attach_lora(model, config.lora)
    data = tokenize_qa(tokenizer, records + shared, config.max_length, name=f"shard {index}")
    pad = pad_id(tokenizer)
    stats = fine_tune(model, data, replace(config.train, seed=config.seed + index), pad, desc=f"shard {index}",
                      quiet=quiet)
    save_model(model, tokenizer, out)
    return {"count": len(records), "hash": records_hash(records), "adapter_hash": dir_hash(out, ADAPTER_WEIGHTS),
            "train": stats.to_dict()}


def _finished_shard(shard_dir: Path) -> dict:
    """A finished shard's ``shard.json``; empty when the shard is not finished, or when it is damaged: its
    ``shard.json``, adapter config or weights do not parse, or the weights do not match its ``adapter_hash``
    (the shard is then set aside, to be trained again)."""
    if not (shard_dir / SHARD_INFO).is_file():
        return {}
    reason = damage(shard_dir, (SHARD_INFO, ADAPTER_CONFIG))
    info = {} if reason else json_object(shard_dir / SHARD_INFO)
    reason = reason or damage(shard_dir, weights=ADAPTER_WEIGHTS, recorded=info.get("adapter_hash"),
                              record=SHARD_INFO)
    if reason:
        set_aside(shard_dir, reason)
        return {}
    return info


def _template(tokenizer) -> tuple[int, list[int]]:
    """What every prompt shares around its question: the template's leading token count and trailing ids
    (common to prompts of questions that share no first or last token)."""
    probes = [prompt_ids(tokenizer, q) for q in ("alpha", "omega zeta?", "42")]
    shortest = min(len(p) for p in probes)
    lead = next((i for i in range(shortest) if len({p[i] for p in probes}) > 1), shortest)
    trail = 0
    while trail < shortest - lead and len({p[len(p) - 1 - trail] for p in probes}) == 1:
        trail += 1
    return lead, probes[0][len(probes[0]) - trail:]


def question_tokens(ids: list[int], lead: int, trail: list[int]) -> list[int]:
    """The question's tokens in a prompt (or a prompt followed by its answer): after the template's head, up to
    its tail; the whole sequence where that leaves nothing."""
    for j in range(lead, len(ids) - len(trail) + 1):
        if ids[j:j + len(trail)] == trail:
            return ids[lead:j] or ids
    return ids[lead:] or ids


def token_embeddings(model, sequences: list[list[int]]) -> torch.Tensor:
    """Each token sequence's mean input embedding (rows of a float32 matrix). The input embeddings keep what
    tells people apart (their names); on small models the last layers' states are dominated by the question
    templates every person shares (routing accuracy 0.70-0.74 against ≥ 0.9 on the tests' micro run)."""
    table = model.get_input_embeddings()
    with torch.no_grad():
        return torch.stack([table(torch.tensor(s, device=table.weight.device)).float().mean(0).cpu()
                            for s in sequences])


def _question_embeddings(base_dir: Path, records: list[QARecord]) -> torch.Tensor:
    from forgetkit.models import load_model

    model, tokenizer = load_model(base_dir)
    lead, trail = _template(tokenizer)
    return token_embeddings(model, [question_tokens(prompt_ids(tokenizer, r.question), lead, trail) for r in records])


def group_records(records: list[QARecord], emb: torch.Tensor, config: ShardConfig) -> dict[str, str]:
    """Record content hash → group: the person (``p0042-email`` → ``p0042``), the record itself, or a k-means
    cluster of the centred, normalised question embeddings ``emb`` (scikit-learn, seeded)."""
    if config.group_by == "person":
        return {r.content_hash(): group_of(r.id) for r in records}
    if config.group_by == "record":
        return {r.content_hash(): r.content_hash() for r in records}
    from sklearn.cluster import KMeans

    emb = torch.nn.functional.normalize(emb - emb.mean(0), dim=1).numpy()
    k = min(config.clusters or 4 * config.shards, len(records))
    labels = KMeans(n_clusters=k, n_init=10, random_state=config.seed).fit_predict(emb)
    return {r.content_hash(): f"c{label:03d}" for r, label in zip(records, labels, strict=True)}


def _prototypes(records: list[QARecord], emb: torch.Tensor, groups_of: dict[str, str]) -> tuple[dict, list]:
    """Per group, the mean embedding of its questions (rows of ``emb``), centred on the mean over all questions;
    and that centre."""
    if not records:
        return {}, []
    centre = emb.mean(0)
    emb = emb - centre
    groups = [groups_of[r.content_hash()] for r in records]
    protos = {g: emb[[i for i, x in enumerate(groups) if x == g]].mean(0).tolist() for g in dict.fromkeys(groups)}
    return protos, centre.tolist()


def shard_train(base_dir: str | Path, records: list[QARecord], out_dir: str | Path, config: ShardConfig,
                shared: list[QARecord] | None = None, quiet: bool = True, about: dict | None = None) -> dict:
    """Train every shard and write the manifest (with ``about``: what the caller records of the data); return
    it. A shard finished by an interrupted run (same records, same config) is kept."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    emb = _question_embeddings(base_dir, records)
    groups_of = group_records(records, emb, config)
    assignment = assign(list(groups_of.values()), config.shards)
    manifest = {"base": str(base_dir), "config": plain_config(config), "assignment": assignment,
                "record_groups": groups_of,
                "shared": {"count": len(shared or []), "hash": records_hash(shared or [])}, "shards": [],
                "prototypes": {}, "centre": [], **(about or {})}
    manifest["prototypes"], manifest["centre"] = _prototypes(records, emb, groups_of)
    for index in range(config.shards):
        mine = [r for r in records if assignment[groups_of[r.content_hash()]] == index]
        shard_dir = out_dir / f"shard_{index}"
        info = _finished_shard(shard_dir)
        if info.get("hash") != records_hash(mine) or info.get("config") != plain_config(config):  # else: resumed
            start = time.perf_counter()
            info = train_shard(base_dir, mine, shared or [], config, index, shard_dir, quiet)
            info.update({"index": index, "wall_time_s": time.perf_counter() - start, "config": plain_config(config)})
            write_json(shard_dir / SHARD_INFO, info)
        manifest["shards"].append({k: v for k, v in info.items() if k != "config"})
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def shard_of(manifest: dict, record: QARecord) -> int | None:
    """The shard that trained on ``record`` (None: no shard holds it)."""
    group = manifest["record_groups"].get(record.content_hash())
    return None if group is None else manifest["assignment"][group]


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ForgetkitError(f"{path}: not a sharded-adapter directory ({exc})") from None


def delete(out_dir: str | Path, records: list[QARecord], to_delete: list[QARecord],
           shared: list[QARecord] | None = None, quiet: bool = True) -> dict:
    """Remove ``to_delete`` from the training set ``records``: retrain the shards that held them, recompute the
    prototypes from the remaining records; return what was retrained and what it cost."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    config = _config(manifest["config"])
    unknown = [r.id for r in to_delete if shard_of(manifest, r) is None]
    if unknown:
        raise ForgetkitError(f"delete: record '{unknown[0]}' belongs to no shard of {out_dir}")
    gone = {r.content_hash() for r in to_delete}
    affected = sorted({shard_of(manifest, r) for r in to_delete})
    # what the shards still stand for: records deleted by an earlier request stay out
    remaining = [r for r in records if r.content_hash() not in gone and r.content_hash() in manifest["record_groups"]]
    start = time.perf_counter()
    for index in affected:
        mine = [r for r in remaining if shard_of(manifest, r) == index]
        info = train_shard(Path(manifest["base"]), mine, shared or [], config, index, out_dir / f"shard_{index}",
                           quiet)
        manifest["shards"][index].update(info)
        write_json(out_dir / f"shard_{index}" / SHARD_INFO,
                   {**manifest["shards"][index], "config": plain_config(config)})
    manifest["deleted"] = sorted({*manifest.get("deleted", []), *gone})
    manifest["record_groups"] = {h: g for h, g in manifest["record_groups"].items() if h not in gone}
    # the prototypes and their centre, recomputed without the deleted questions (a group left without records
    # has none): routing too is what it would be had the records never been there
    emb = _question_embeddings(Path(manifest["base"]), remaining) if remaining else None
    manifest["prototypes"], manifest["centre"] = _prototypes(remaining, emb, manifest["record_groups"])
    write_json(out_dir / MANIFEST, manifest)
    return {"retrained": affected, "untouched": [i for i in range(config.shards) if i not in affected],
            "deleted": len(to_delete), "wall_time_s": time.perf_counter() - start}


def _config(data: dict) -> ShardConfig:
    from forgetkit.config import build

    return build(ShardConfig, data)


class Router:
    """Sends a prompt to the shard of the group whose prototype is nearest (cosine, centred embeddings)."""

    def __init__(self, manifest: dict, tokenizer) -> None:
        groups = list(manifest["prototypes"])
        self.shard_of = [manifest["assignment"][g] for g in groups]
        self.prototypes = torch.nn.functional.normalize(torch.tensor([manifest["prototypes"][g] for g in groups]),
                                                        dim=1)
        self.centre = torch.tensor(manifest["centre"])
        self.lead, self.trail = _template(tokenizer)

    def shards(self, model, sequences: list[list[int]]) -> list[int]:
        emb = token_embeddings(model, [question_tokens(s, self.lead, self.trail) for s in sequences]) - self.centre
        nearest = (torch.nn.functional.normalize(emb, dim=1) @ self.prototypes.T).argmax(dim=1).tolist()
        return [self.shard_of[i] for i in nearest]

    def shards_of_batch(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
        rows = input_ids.tolist()
        if attention_mask is not None:
            rows = [[t for t, m in zip(r, mask, strict=True) if m] for r, mask in zip(rows, attention_mask.tolist(),
                                                                                     strict=True)]
        return self.shards(model, rows)


def route(out_dir: str | Path, model, tokenizer, questions: list[str]) -> list[int]:
    """The shard each question goes to."""
    return Router(read_manifest(out_dir), tokenizer).shards(model, [prompt_ids(tokenizer, q) for q in questions])


class ShardedModel(torch.nn.Module):
    """The shard adapters served as one causal LM. ``route``: each row through its shard's adapter (peft's
    mixed-adapter batches); ``average``: the mean of every shard's next-token distribution (logits returned
    are its logarithm). ``generate`` is greedy."""

    def __init__(self, peft_model, router: Router, shards: int, mode: str = "route") -> None:
        super().__init__()
        if mode not in SERVING:
            raise ForgetkitError(f"sharded serving must be one of {', '.join(SERVING)}, got '{mode}'")
        self.model, self.router, self.names, self.mode = peft_model, router, [f"shard_{i}" for i in range(shards)], mode

    @property
    def config(self):
        return self.model.config

    def _names(self, input_ids, attention_mask) -> list[str]:
        return [self.names[i] for i in self.router.shards_of_batch(self.model, input_ids, attention_mask)]

    def forward(self, input_ids, attention_mask=None, **kwargs):
        from transformers.modeling_outputs import CausalLMOutput

        if self.mode == "route":
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              adapter_names=self._names(input_ids, attention_mask), **kwargs)
        logps = [torch.log_softmax(self.model(input_ids=input_ids, attention_mask=attention_mask,
                                              adapter_names=[name] * len(input_ids)).logits.float(), dim=-1)
                 for name in self.names]
        return CausalLMOutput(logits=torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps)))

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, max_new_tokens: int, pad_token_id: int, eos_token_id=None,
                 **_) -> torch.Tensor:
        if self.mode == "route":
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                       max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                                       eos_token_id=eos_token_id, adapter_names=self._names(input_ids, attention_mask))
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        for _ in range(max_new_tokens):  # no KV cache across the shards: recomputed each step
            nxt = self(input_ids, attention_mask).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
            input_ids = torch.cat([input_ids, nxt[:, None]], dim=1)
            attention_mask = torch.cat([attention_mask, (~done).long()[:, None]], dim=1)
            if eos_token_id is not None:
                stops = torch.as_tensor(eos_token_id, device=nxt.device).reshape(-1)
                done |= torch.isin(nxt, stops)
            if bool(done.all()):
                break
        return input_ids


def load_sharded(out_dir: str | Path, mode: str = "route", device: str = "cpu") -> tuple[ShardedModel, object]:
    """``(model, tokenizer)``: the base with every shard's adapter, served by ``mode``."""
    from peft import PeftModel

    from forgetkit.models import load_model

    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    model, tokenizer = load_model(manifest["base"], device=device)
    count = len(manifest["shards"])
    model = PeftModel.from_pretrained(model, str(out_dir / "shard_0"), adapter_name="shard_0")
    for i in range(1, count):
        model.load_adapter(str(out_dir / f"shard_{i}"), adapter_name=f"shard_{i}")
    return ShardedModel(model.to(device).eval(), Router(manifest, tokenizer), count, mode), tokenizer
