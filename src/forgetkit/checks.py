"""Checks of what a command is given, made before it does any work.

Each refusal is a :class:`~forgetkit.errors.ForgetkitError`: one line naming the path (and the field
when there is one), exit code 2, and nothing written. Commands check their model and adapter
directories (present, a config that parses, an architecture transformers knows, safetensors weights
whose headers open, a tokenizer), their output paths (not an existing file, not inside an input,
writable) and their input files before loading anything heavy.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from forgetkit.errors import DataError, ForgetkitError, first_line
from forgetkit.io import dir_hash, set_aside

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
ADAPTER_CONFIG = "adapter_config.json"


def existing_dir(path: str | os.PathLike, what: str) -> Path:
    """``path`` as an existing directory, or a one-line error naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise ForgetkitError(f"{path}: {what} directory not found (models load from local directories only)")
    if not path.is_dir():
        raise ForgetkitError(f"{path}: {what} is not a directory")
    return path


def json_value(path: Path) -> object:
    """The JSON value a file holds, or a one-line error naming the file and line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"malformed JSON: {exc.msg}", line=exc.lineno) from None
    except UnicodeDecodeError:
        raise DataError(path, "invalid UTF-8") from None
    except OSError as exc:
        raise DataError(path, f"cannot be read ({exc.strerror})") from None


def json_object(path: Path) -> dict:
    """A JSON file holding one object, or a one-line error naming the file and line."""
    doc = json_value(path)
    if not isinstance(doc, dict):
        raise DataError(path, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def cached_object(path: Path) -> dict | None:
    """The JSON object a cache file holds (a bench cell's ``result.json``, a run's ``summary.json`` …); None when
    there is none, or when it is damaged (not UTF-8, not JSON, not an object): it is then set aside
    (:func:`forgetkit.io.set_aside`), for the caller to recompute."""
    if not path.is_file():
        return None
    try:
        return json_object(path)
    except DataError as exc:
        set_aside(path, exc.problem)
        return None


def damage(directory: Path, json_files: Iterable[str] = (), weights: str | None = None,
           recorded: str | None = None, record: str = "record") -> str | None:
    """Why a cached directory (a prepared stage, a shard, an evaluation) is damaged, or None when it is intact:
    each of ``json_files`` holds a JSON object, the safetensors headers of the ``weights`` files (a pattern) open,
    and those weights match the fingerprint ``recorded`` for them (when there is one; ``record`` names the file
    that recorded it). The caller sets a damaged directory aside (:func:`forgetkit.io.set_aside`)."""
    try:
        for name in json_files:
            json_object(directory / name)
        for path in sorted(directory.glob(weights)) if weights else ():
            safetensors_shapes(path)
    except DataError as exc:
        return f"{Path(exc.path).relative_to(directory)}: {exc.problem}"
    if weights and recorded is not None and recorded != dir_hash(directory, weights):
        return f"its weights do not match the fingerprint in its {record}"
    return None


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors file's header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: list(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own SafetensorError (or OSError) for a damaged file
        reason = first_line(exc) or type(exc).__name__
        raise DataError(path, f"truncated or corrupt safetensors file ({reason})") from None


def weight_files(path: Path, what: str) -> list[Path]:
    """The safetensors weight files of a model or adapter directory, each header opened."""
    files = sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json_object(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise DataError(index, "missing or not an object", field="weight_map")
        for shard in sorted(set(weight_map.values())):
            if not (path / str(shard)).is_file():
                raise DataError(index, f"names the shard '{shard}', which is not in the directory", field="weight_map")
    if not files:
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise ForgetkitError(f"{path}: the {what} weights are pickled ({pickled[0]}); forgetkit never unpickles "
                                 "weights: convert them to safetensors")
        raise ForgetkitError(f"{path}: no weights in the {what} directory (*.safetensors)")
    for f in files:
        safetensors_shapes(f)
    return files


def model_dir(path: str | os.PathLike, what: str = "model") -> Path:
    """A local Hugging Face causal-LM directory that will load: config, architecture, weights, tokenizer."""
    path = existing_dir(path, what)
    config = path / "config.json"
    if not config.is_file():
        raise ForgetkitError(f"{path}: not a Hugging Face {what} directory (no config.json)")
    model_type = json_object(config).get("model_type")
    if not model_type:
        raise DataError(config, "missing", field="model_type")
    from transformers import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise DataError(config, f"unknown architecture {model_type!r} (not one this transformers reads)",
                        field="model_type")
    weight_files(path, what)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ForgetkitError(f"{path}: no tokenizer in the {what} directory (tokenizer.json or tokenizer_config.json)")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (path / name).is_file():
            json_object(path / name)
    return path


def adapter_dir(path: str | os.PathLike) -> Path:
    """A peft adapter directory with a readable config and safetensors weights."""
    path = existing_dir(path, "adapter")
    if not (path / ADAPTER_CONFIG).is_file():
        raise ForgetkitError(f"{path}: not a peft adapter directory (no {ADAPTER_CONFIG})")
    json_object(path / ADAPTER_CONFIG)
    weight_files(path, "adapter")
    return path


def input_file(path: str | os.PathLike, what: str) -> Path:
    """An existing file (a directory is refused)."""
    path = Path(path)
    if not path.exists():
        raise ForgetkitError(f"{path}: {what} file not found")
    if path.is_dir():
        raise ForgetkitError(f"{path}: {what} is a directory, not a file")
    return path


def output_path(out: str | os.PathLike, what: str = "--out", inputs: Iterable[object] = (),
                kind: str = "directory", containers: Iterable[object] = ()) -> Path:
    """``out`` as a place a command may write a ``kind`` (``directory`` or ``file``) into: not an existing
    thing of the other kind, not inside one of ``inputs`` (files or directories read by the command), not
    one of ``containers`` itself (directories that may hold outputs, such as a prepared run), and on a
    location that can be written to. Nothing is created."""
    out = Path(out)
    if kind == "directory" and out.exists() and not out.is_dir():
        raise ForgetkitError(f"{out}: {what} is an existing file; give a directory")
    if kind == "file" and out.is_dir():
        raise ForgetkitError(f"{out}: {what} is a directory; give a file path")
    resolved = out.resolve()
    for container in containers:
        if container is not None and resolved == Path(str(container)).resolve():
            raise ForgetkitError(f"{out}: {what} is the input {container} itself; write into a new directory")
    for source in inputs:
        if source is None:
            continue
        src = Path(str(source)).resolve()
        if resolved == src or src in resolved.parents:
            raise ForgetkitError(f"{out}: {what} is inside the input {source}; write it elsewhere")
    ancestor = resolved if kind == "directory" else resolved.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ForgetkitError(f"{out}: {what} cannot be created: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".forgetkit-write-check-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ForgetkitError(f"{out}: {what} is not writable ({exc.strerror} in {ancestor})") from None
    return out

