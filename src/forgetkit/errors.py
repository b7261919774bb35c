"""User-facing errors: one clear line, no traceback.

The CLI catches :class:`ForgetkitError` and prints ``error: <message>`` with a non-zero exit.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import re


class ForgetkitError(Exception):
    """An error caused by the user's input or environment (bad file, bad config, missing model)."""

    exit_code = 2


class DataError(ForgetkitError):
    """A data file that cannot be read or a record that does not validate.

    The message names the file, the position (line for line-based formats, record index
    otherwise) and the field, e.g. ``forget.jsonl: line 3: field 'answer': missing``.
    """

    def __init__(
        self,
        path: object,
        problem: str,
        *,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.record = record
        self.field = field
        self.problem = problem
        parts = [self.path]
        if line is not None:
            parts.append(f"line {line}")
        elif record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field '{field}'")
        parts.append(problem)
        super().__init__(": ".join(parts))


class ConfigError(ForgetkitError):
    """A config file or ``key=value`` override that is unknown or of the wrong type."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class SettingError(ConfigError):
    """A setting whose value is out of range: names the setting by its dotted key (``train.lr``)."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"setting '{setting}': {problem}")


def require(condition: bool, setting: str, problem: str) -> None:
    """Raise :class:`SettingError` for ``setting`` unless ``condition`` holds."""
    if not condition:
        raise SettingError(setting, problem)


def require_positive(obj: object, *names: str, allow_zero: bool = False) -> None:
    """Each named attribute of ``obj`` (a config dataclass) is > 0 (or ≥ 0); None is allowed."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise SettingError(name, f"must be {'≥ 0' if allow_zero else 'positive'}, got {value}")


# The causes an environment, not forgetkit, is to blame for: errno → what the user is told.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "no such file or directory (it vanished while the command ran)",
    errno.ESTALE: "stale file handle",
    errno.EIO: "input/output error",
}
VANISHED = (errno.ENOENT, errno.ESTALE)
# forgetkit.io's temporary sibling of an output being written: /.NAME.PID.RANDOM.tmp/NAME
_TEMPORARY = re.compile(r"/\.([^/]+)\.\d+\.[^/]+\.tmp/\1(?=/|$)")
# The same causes as libraries word them when they wrap the OS error (safetensors' Rust writer, SQLite).
ENVIRONMENT_MESSAGES = (
    ("no space left on device", errno.ENOSPC), (f"os error {errno.ENOSPC}", errno.ENOSPC),
    ("database or disk is full", errno.ENOSPC), ("disk quota exceeded", errno.EDQUOT),
    (f"os error {errno.EDQUOT}", errno.EDQUOT), ("read-only file system", errno.EROFS),
    (f"os error {errno.EROFS}", errno.EROFS), ("attempt to write a readonly database", errno.EROFS),
)

def environment_fault(exc: BaseException, where: object = None) -> ForgetkitError | None:
    """The user's error an environmental fault is (a full disk, a quota, a read-only file system, a path that
    vanished mid-run), as a one-line :class:`ForgetkitError` naming the path and the cause; None when ``exc``
    (and what it was raised from) is not one. ``where`` names the output when the error does not name a path."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        cause, path = None, None
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            # a missing path is the environment's fault only when it names the path (it vanished mid-run)
            if exc.errno not in VANISHED or exc.filename:
                cause, path = ENVIRONMENT_ERRNOS[exc.errno], exc.filename
        else:
            text = str(exc).lower()
            cause = next((ENVIRONMENT_ERRNOS[n].split(" (")[0] for m, n in ENVIRONMENT_MESSAGES if m in text), None)
        if cause:
            path = _TEMPORARY.sub(r"/\1", str(path)) if path else None  # the output, not its temporary sibling
            return ForgetkitError(f"{path or where or 'the output'}: {cause}; nothing half-written was kept: fix it "
                                  "(free space, make it writable) and rerun the same command to resume")
        exc = exc.__cause__ or exc.__context__
    return None
