"""Markdown of the enrichment Notes: VirusTotal's analysis stats, per-engine verdicts, categories.

Every value that comes from VirusTotal (engine names and results, vendors, categories, names) is
untrusted text shown in OpenCTI's markdown renderer. `escape_cell` makes any of it inert: one
line, no HTML, no markdown syntax, no control or bidi characters, bounded length, so a hostile
engine result can neither break a table nor inject links or HTML. Upstream concatenated the raw
values. Pure: strings in, string out.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable, Mapping, Sequence

# Longest cell (characters, before escaping): a verdict or a vendor name, not an essay.
CELL_LIMIT = 300
# Longest subject (URL, file name) quoted in a note's header.
SUBJECT_LIMIT = 2048
MISSING = "N/A"

# Control characters (C0, DEL, C1), zero-width and bidirectional formatting characters, lone
# surrogates.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff"
    "\ud800-\udfff]"  # lone surrogates: not writable as UTF-8
)
# Whitespace of any kind (newlines, tabs, Unicode line separators) collapses to one space.
_SPACES = re.compile(r"[\s\u2028\u2029\x85]+")
# Characters with an inline meaning in (GitHub-flavoured) markdown, table pipes included.
_MARKDOWN = re.compile(r"([\\`*_\[\]|~!$])")

# (column title, `last_analysis_stats` key); None: the total of the other columns.
FILE_STATS_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("Total", None),
    ("Malicious", "malicious"),
    ("Suspicious", "suspicious"),
    ("Undetected", "undetected"),
    ("Harmless", "harmless"),
    ("Timeout", "timeout"),
    ("Confirmed timeout", "confirmed-timeout"),
    ("Failure", "failure"),
    ("Unsupported", "type-unsupported"),
)
NETWORK_STATS_COLUMNS: tuple[tuple[str, str | None], ...] = FILE_STATS_COLUMNS[:6]
FILE_ENGINE_COLUMNS = ("Engine name", "Engine version", "Method", "Category", "Result")
NETWORK_ENGINE_COLUMNS = ("Engine name", "Method", "Category", "Result")


def escape_cell(value: str | None, limit: int = CELL_LIMIT) -> str:
    """One inert markdown line of untrusted text; None or blank gives `N/A`."""
    if value is None:
        return MISSING
    text = _SPACES.sub(" ", _INVISIBLE.sub("", value)).strip()
    if not text:
        return MISSING
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return _MARKDOWN.sub(r"\\\1", html.escape(text, quote=False))


def table(headers: Sequence[str], rows: Iterable[Sequence[str | None]]) -> str:
    """A markdown table; every cell, headers included, goes through `escape_cell`."""
    lines = [
        "| " + " | ".join(escape_cell(header) for header in headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in rows:
        cells = [*row, *([None] * (len(headers) - len(row)))][: len(headers)]
        lines.append("| " + " | ".join(escape_cell(cell) for cell in cells) + " |")
    return "\n".join(lines)


def stats_table(stats: Mapping[str, int], columns: Sequence[tuple[str, str | None]]) -> str:
    """One-row table of analysis counts; Total sums the counted columns."""
    counts = {key: stats.get(key, 0) for _, key in columns if key is not None}
    row = [str(sum(counts.values())) if key is None else str(counts[key]) for _, key in columns]
    return table([title for title, _ in columns], [row])


def report(
    title: str,
    header_lines: Sequence[str],
    sections: Sequence[tuple[str, str]],
) -> str:
    """A note: `# title`, header lines (already escaped), then `## section` blocks."""
    parts = [f"# {escape_cell(title)}", "\n\n".join(header_lines)]
    parts += [f"## {escape_cell(name)}\n\n{body}" for name, body in sections if body]
    return "\n\n".join(part for part in parts if part) + "\n"
