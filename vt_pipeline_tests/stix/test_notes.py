"""Markdown of the enrichment notes: every untrusted cell is inert and keeps its table intact."""

from __future__ import annotations

import random
import re

import pytest

from vt_pipeline.stix import notes

HOSTILE = [
    "evil | injected | cells",
    "line one\nline two\r\n| new row |",
    "`code` and ``` fences ```",
    "<script>alert(1)</script><img src=x onerror=alert(1)>",
    "[click](javascript:alert(1)) ![img](http://x/y.png)",
    "**bold** _it_ ~~strike~~ $math$",
    "back\\slash\\|pipe",
    "\u202egpj.exe\u200b\ufeff",
    "ctrl\x00\x07\x1b[31mred\x08\x7f\x85",
    "tab\tand\u2028separator\u2029end",
    "lone \ud800 surrogate \udfff",
]
# A pipe that separates cells: one not preceded by a backslash escape.
_SEPARATOR = re.compile(r"(?<!\\)\|")


def cells_of(row: str) -> list[str]:
    assert row.startswith("| ") and row.endswith(" |"), row
    return _SEPARATOR.split(row)[1:-1]


@pytest.mark.parametrize("value", HOSTILE)
def test_escape_cell_makes_hostile_text_inert(value: str) -> None:
    escaped = notes.escape_cell(value)
    assert "\n" not in escaped and "\r" not in escaped
    assert "<" not in escaped and ">" not in escaped
    assert not _SEPARATOR.search(escaped)
    assert not re.search(r"(?<!\\)[`*_\[\]~$!]", escaped)
    assert not re.search(
        r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2028\u2029\ufeff]", escaped
    )
    escaped.encode("utf-8")  # no lone surrogate left: the note can be sent


def test_escape_cell_keeps_readable_text() -> None:
    assert notes.escape_cell("Trojan.GenericKD.123") == "Trojan.GenericKD.123"
    assert notes.escape_cell("a|b") == "a\\|b"
    assert notes.escape_cell("<b>") == "&lt;b&gt;"
    assert notes.escape_cell("x & y") == "x &amp; y"
    assert notes.escape_cell("multi\nline\ttext") == "multi line text"
    assert notes.escape_cell(None) == notes.MISSING
    assert notes.escape_cell(" \n\t ") == notes.MISSING


def test_escape_cell_bounds_length() -> None:
    escaped = notes.escape_cell("A" * 100_000)
    assert escaped == "A" * notes.CELL_LIMIT + "…"
    assert notes.escape_cell("B" * 50, limit=10) == "B" * 10 + "…"


def test_table_rows_keep_their_columns_whatever_the_cells() -> None:
    rng = random.Random(3)
    rows = [[rng.choice(HOSTILE) + str(i) for i in range(5)] for _ in range(50)]
    rows.append(["only one"])  # short rows are padded with N/A
    rendered = notes.table(["Engine name", "Engine version", "Method", "Category", "Result"], rows)
    lines = rendered.split("\n")
    assert len(lines) == 2 + len(rows)
    assert lines[1] == "|---|---|---|---|---|"
    for line in [lines[0], *lines[2:]]:
        assert len(cells_of(line)) == 5
    assert cells_of(lines[-1])[1:] == [" N/A "] * 4


def test_stats_table_totals_the_counted_columns() -> None:
    stats = {"malicious": 3, "suspicious": 1, "undetected": 60, "harmless": 0, "timeout": 2}
    rendered = notes.stats_table(stats | {"unrelated": 100}, notes.NETWORK_STATS_COLUMNS)
    header, _, row = rendered.split("\n")
    assert [c.strip() for c in cells_of(header)] == [
        "Total",
        "Malicious",
        "Suspicious",
        "Undetected",
        "Harmless",
        "Timeout",
    ]
    assert [c.strip() for c in cells_of(row)] == ["66", "3", "1", "60", "0", "2"]
    file_header = notes.stats_table({}, notes.FILE_STATS_COLUMNS).split("\n")[0]
    assert [c.strip() for c in cells_of(file_header)][-3:] == [
        "Confirmed timeout",
        "Failure",
        "Unsupported",
    ]


def test_report_escapes_titles_and_skips_empty_sections() -> None:
    rendered = notes.report("Title <x>", ["header"], [("Kept", "body"), ("Empty", "")])
    assert rendered == "# Title &lt;x&gt;\n\nheader\n\n## Kept\n\nbody\n"
