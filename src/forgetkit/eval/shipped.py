"""The evaluation's shipped data files (``forgetkit/eval/data``: WEAT word sets, toxicity prompts and lexicon)
and the one reader of a JSON data file that a user's file of the same layout may replace."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from forgetkit.errors import DataError


def shipped_text(name: str) -> str:
    """The text of the shipped data file ``name``."""
    return resources.files("forgetkit.eval").joinpath(f"data/{name}").read_text(encoding="utf-8")


def read_json_part(path: str | Path | None, shipped: str, key: str, what: str) -> tuple[object, str | Path]:
    """``key`` of the JSON object in ``path`` (None: the shipped file ``shipped``) and where it came from (for
    the caller's errors); a file that does not read, parse or hold ``key`` is a one-line error naming ``what``."""
    where = path or f"forgetkit/eval/data/{shipped}"
    try:
        text = Path(path).read_text() if path else shipped_text(shipped)
        return json.loads(text)[key], where
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(where, f"not a {what} file ({type(e).__name__}: {e})") from None
