"""User-facing errors: one clear line, no traceback.

The CLI catches :class:`ForgetkitError` and prints ``error: <message>`` with a non-zero exit.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
