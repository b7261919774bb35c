"""Closed-form editors of a LoRA adapter (no training loop), registered by name beside the methods:
``llmeraser`` (influence update: removal, query modification, response correction) and ``fast_ntk``
(NTK-linearised removal, small sizes only). ``forgetkit unlearn --method NAME`` runs them."""

from forgetkit.editors import fast_ntk, llmeraser  # noqa: F401  (each module registers its editor)
from forgetkit.editors.base import EDITORS, REQUESTS, EditData, Editor, build_editor

__all__ = ["EDITORS", "REQUESTS", "EditData", "Editor", "build_editor"]
