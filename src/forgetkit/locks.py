"""One writer per output: an exclusive lock on every directory or file a command writes.

``output_lock(path)`` holds an OS lock (``flock``) on a hidden sibling, ``.<name>.lock``, for as long as the
command writes ``path``. A second writer of the same path (another process, or the same process through
another call) is refused at once, before any work, in one line naming the holder's pid and start time.
The kernel releases the lock of a process that dies, whatever killed it, so a lock file left by a dead
holder is stale by construction: the next writer takes it over and says so. The lock sits beside the output,
not inside it, because outputs are built in a temporary sibling and renamed into place.

Under ``accelerate launch`` only the main process (``RANK`` 0) locks: the other ranks write into the same
output as part of the same job.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from forgetkit.errors import ForgetkitError


def lock_file(path: str | os.PathLike) -> Path:
    """Where the lock of output ``path`` lives: a hidden sibling ``.<name>.lock``."""
    path = Path(path).resolve()
    return path.parent / f".{path.name}.lock"


def _main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _holder(fd: int) -> dict:
    """What a lock file says of its holder (pid, start time, command); empty when it says nothing readable."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        data = json.loads(os.read(fd, 4096).decode("utf-8") or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _open_locked(lock: Path, path: Path, what: str) -> int:
    """A descriptor of ``lock`` holding its exclusive lock; a one-line refusal when another writer holds it.
    Retries when the file it locked was removed by a holder that just released it (then it locks nothing)."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise ForgetkitError(
                f"{path}: {what} is being written by another forgetkit process (pid {holder.get('pid', '?')}, "
                f"started {holder.get('started', '?')}: {holder.get('command', '?')}); wait for it to finish or "
                "write elsewhere") from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def output_lock(path: str | os.PathLike, what: str = "the output") -> Iterator[None]:
    """Hold the exclusive writer's lock of ``path`` (a directory or file to be written) for the block.

    Refuses (:class:`ForgetkitError`, nothing written) when another writer holds it; takes over, with a one-line
    notice, a lock whose holder died. The lock file is removed when the block ends."""
    if not _main_process():
        yield
        return
    path = Path(path)
    lock = lock_file(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_locked(lock, path, what)
    try:
        stale = _holder(fd)
        if stale.get("pid") not in (None, os.getpid()):
            print(f"notice: {path}: took over the lock of pid {stale['pid']} (started {stale.get('started', '?')}), "
                  "which is no longer running", file=sys.stderr)
        me = {"pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300]}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode("utf-8"))
        yield
    finally:
        try:
            os.unlink(lock)
        except FileNotFoundError:
            pass
        os.close(fd)
