"""Closed-form editors of a LoRA adapter (no training loop), registered by name beside the methods:
``llmeraser`` (influence update: removal, query modification, response correction) and ``fast_ntk``
(NTK-linearised removal, small sizes only). ``forgetkit unlearn --method NAME`` runs them."""

from forgetkit.editors.base import REQUESTS, EditData, Editor, build_editor
from forgetkit.registry import EDITOR, UNLEARNERS, register_package

register_package(__name__, __path__, ("base", "command"))  # every other module registers one editor

# The editors' classes by name: a view of the one registry (forgetkit.registry).
EDITORS = {name: u.params for name, u in UNLEARNERS.items() if u.kind == EDITOR}

__all__ = ["EDITORS", "REQUESTS", "EditData", "Editor", "build_editor"]
