"""Atomic file output: nothing half-written is ever left where a reader would find it.

Every file forgetkit writes goes to a temporary sibling first and is renamed into place. The
temporary sibling's name holds the writing process's id: a process killed before its rename
(``kill -9``) leaves one behind, and the next write of the same path removes it once that
process is gone.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block succeeds.

    Works for files and directories (whatever the block creates at the temporary path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_orphans(path: Path) -> None:
    """Remove the temporary siblings of ``path`` left by writers that died before their rename."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def set_aside(path: str | os.PathLike, reason: str, log=None) -> Path:
    """Move a damaged cache entry (a file or directory that does not parse) out of the way, never deleting it:
    it is renamed to ``<name>.damaged`` (``<name>.damaged.1``, ``.2`` … when that is taken) and reported once on
    stderr (or through ``log``). The caller then recomputes it. Returns the new path."""
    path = Path(path)
    target = path.with_name(path.name + ".damaged")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.damaged.{n}")
    os.replace(path, target)
    message = f"warning: {path}: {reason}; set aside as {target.name} and recomputed"
    if log is None:
        import sys

        print(message, file=sys.stderr)
    else:
        log(message)
    return target


def _set_aside(relative: Path) -> bool:
    """Whether a path lies in (or is) something :func:`set_aside` moved away."""
    return any(part.endswith(".damaged") or ".damaged." in part for part in relative.parts)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write one JSON object per line, atomically."""
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def fingerprint(chunks: Iterable[bytes]) -> str:
    """forgetkit's one fingerprint: SHA-256 over ``chunks`` in order, as 16 hex characters. Config hashes,
    record and set hashes, model, adapter and shard directories and tensors are all hashed with it."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()[:16]


def dir_hash(path: Path, pattern: str | None = None) -> str:
    """The fingerprint of a model or adapter directory: the names and bytes of its weight and config files
    (``*.safetensors``, ``*.json`` at its top), or of the files under it that match ``pattern``; what
    :func:`set_aside` moved away (``*.damaged``, ``*.damaged.N``) is not part of it."""
    path = Path(path)
    if pattern is None:
        files = [f for f in sorted(path.iterdir()) if f.suffix in (".safetensors", ".json") and f.is_file()]
    else:
        files = sorted(f for f in path.glob(pattern) if f.is_file())
    files = [f for f in files if not _set_aside(f.relative_to(path))]
    return fingerprint(part for f in files for part in (f.relative_to(path).as_posix().encode(), f.read_bytes()))
