"""The one registry of unlearners: every name ``forgetkit unlearn --method``, the bench, the ledger and
``forgetkit methods`` know.

An entry says what an unlearner is called, the dataclass of its parameters (``params.*`` in a config,
checked like any config), how it runs and the guarantee it gives. Each algorithm's module registers
itself once (as peft's ``register_peft_method`` does): gradient methods through ``methods.base.register``,
closed-form editors through ``editors.base.register``, sharded exact unlearning in ``exact/command.py``,
input-based unlearners through ``incontext.base.register``.
The registry imports none of them; whoever needs every name imports the algorithm packages
(``forgetkit.unlearn`` does), and each package imports all its modules (:func:`register_package`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from dataclasses import dataclass

from forgetkit.config import build
from forgetkit.errors import ConfigError

# How an unlearner runs: ``forgetkit.unlearn`` maps each kind to its runner.
GRADIENT = "gradient"  # a loss through the one training loop (methods/)
EDITOR = "editor"  # a closed-form change of a LoRA adapter (editors/)
SHARDED = "sharded"  # retrain the shards that held the records (exact/)
INPUT = "input"  # no weight changes: a context placed before every question (incontext/)
KINDS = (GRADIENT, EDITOR, SHARDED, INPUT)

# The guarantee an unlearner gives (the ledger records it with each request).
EMPIRICAL = "empirical audit"  # approximate; checked by evaluation only
EXACT = "exact"  # retrained without the records: by construction as if never trained on them
CERTIFIED = "certified"  # an (ε, δ) certificate travels with the request
GUARANTEES = (EXACT, CERTIFIED, EMPIRICAL)


@dataclass(frozen=True)
class Unlearner:
    name: str
    params: type  # the dataclass of its parameters
    kind: str  # one of KINDS
    guarantee: str  # one of GUARANTEES: what it gives when it succeeds
    summary: str  # one line for ``forgetkit methods``

    def build(self, params: dict | None = None):
        """The parameters ``params`` as the entry's dataclass (unknown keys, wrong types: ConfigError)."""
        return build(self.params, dict(params or {}), f"method.{self.name}")


UNLEARNERS: dict[str, Unlearner] = {}


def register_unlearner(name: str, params: type, kind: str, guarantee: str = EMPIRICAL, summary: str = "") -> None:
    if not name or name in UNLEARNERS:
        raise ValueError(f"unlearner '{name}' needs a unique name")
    if kind not in KINDS or guarantee not in GUARANTEES:
        raise ValueError(f"unlearner '{name}': kind {kind!r} or guarantee {guarantee!r} unknown")
    UNLEARNERS[name] = Unlearner(name, params, kind, guarantee, summary)


def register_package(package: str, path: Iterable[str], infrastructure: Iterable[str]) -> None:
    """Import every module of the algorithm package ``package`` (its ``__path__``) but its ``infrastructure``
    (base classes, runners, shared losses): each imported module registers its unlearners, so adding one is
    its file and its recipe, with no import list to edit."""
    skip = set(infrastructure)
    for module in pkgutil.iter_modules(path):
        if module.name not in skip:
            importlib.import_module(f"{package}.{module.name}")


def unlearner(name: str, kind: str | None = None) -> Unlearner:
    """The registered unlearner ``name`` (of ``kind``, when given); a one-line error naming the known ones."""
    known = sorted(n for n, u in UNLEARNERS.items() if kind is None or u.kind == kind)
    if name not in known:
        what = {None: "method", GRADIENT: "method", EDITOR: "editor"}.get(kind, f"{kind} unlearner")
        raise ConfigError(f"unknown {what} '{name}' (known: {', '.join(known)})")
    return UNLEARNERS[name]
