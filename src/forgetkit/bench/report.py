"""The benchmark's HTML report: one self-contained file (inline CSS, plots embedded as base64 PNG, no scripts).

Nothing is fetched when it is opened, so it can be archived or mailed alone. Its tables are formatted by
`forgetkit.bench.leaderboard`, like leaderboard.md, so both show the same numbers.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

from forgetkit.bench.leaderboard import (
    ATTACK_COLUMNS,
    TEXT_COLUMNS,
    attack_rows,
    cell_value,
    format_number,
    table,
)
from forgetkit.bench.plots import CAPTIONS
from forgetkit.io import write_text

PRIVACY_NOTE = "forget data are identified by hash and count"

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; }
th { background: #f0f0f0; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
figure { margin: 1.5em 0; } img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.note { font-size: 0.9em; color: #444; }
"""


def _text(value: object) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _table(header: list[str], body: list[list[str]], text_columns: int) -> str:
    """An HTML table of strings (escaped here); columns from ``text_columns`` on are right-aligned numbers."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = []
    for cells in body:
        tds = "".join(
            f'<td class="num">{html.escape(c)}</td>' if i >= text_columns else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(cells)
        )
        lines.append(f"<tr>{tds}</tr>")
    return f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(lines) + (
        "\n</tbody></table></div>"
    )


def _meta_table(meta: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in meta.items())
    return f'<table class="meta">{rows}</table>'


def _figure(name: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    caption = html.escape(CAPTIONS.get(name, name))
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name, quote=True)} plot">'
            f"<figcaption>{caption}</figcaption></figure>")


def write_report(title: str, cells: list[dict], rows: list[dict], plots: dict[str, Path], out_path: Path,
                 meta: dict) -> Path:
    """Write the report to ``out_path`` atomically and return it.

    ``rows`` are the leaderboard rows of ``cells``; ``plots`` the PNGs of `forgetkit.bench.plots.write_plots`
    by name; ``meta`` the key/value facts shown first (config name, date, machine, grid size, cell counts).
    """
    attacks = attack_rows(cells)
    cell_body = [
        [c["cell"]["id"], c["status"], c.get("reason") or "", format_number(cell_value(c, "cost.wall_time_s"))]
        for c in cells
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        _meta_table(meta),
        "<h2>Leaderboard</h2>",
        '<p class="note">Mean ± sample standard deviation over seeds; – : missing.</p>',
        _table(*table(rows), text_columns=len(TEXT_COLUMNS)),
        "<h2>Attacks</h2>",
        '<p class="note">Forget probability after unlearning and under each attack, mean ± std over seeds.</p>',
        _table(*table(attacks, ATTACK_COLUMNS), text_columns=len(TEXT_COLUMNS))
        if attacks else '<p class="note">No attack results.</p>',
        "<h2>Plots</h2>",
        *(_figure(name, path) for name, path in plots.items()),
        "<h2>Cells</h2>",
        _table(["cell", "status", "reason", "time s"], cell_body, text_columns=3),
        f'<p class="note">Privacy: {html.escape(PRIVACY_NOTE)}; this report shows aggregate numbers only.</p>',
        "</body>",
        "</html>",
    ]
    out_path = Path(out_path)
    write_text(out_path, "\n".join(parts) + "\n")
    return out_path
