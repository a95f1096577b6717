"""Finding one rule in a ruleset, rebuilding it, reading its metadata, failing cleanly."""

from __future__ import annotations

import plyara
import pytest

from vt_pipeline.stix import yara
from vt_pipeline.stix.yara import YaraParseError, find_rule
from vt_pipeline_tests import factories

RULESET = (
    'import "pe"\n'
    + factories.yara_rule("First", description='Says \\"hi\\" C:\\\\x', date="2024/02/03")
    + factories.yara_rule("Second", description=None, date=None, text="ELF")
)


def test_finds_the_named_rule_and_rebuilds_it_alone() -> None:
    rule = find_rule(RULESET, "Second")
    assert rule is not None
    assert rule.name == "Second"
    assert "rule Second" in rule.source
    assert "First" not in rule.source
    reparsed = plyara.Plyara().parse_string(rule.source)
    assert [r["rule_name"] for r in reparsed] == ["Second"]


def test_metadata_description_is_unescaped_and_date_parsed() -> None:
    rule = find_rule(RULESET, "First")
    assert rule is not None
    assert rule.description == 'Says "hi" C:\\x'
    assert rule.date == 1_706_918_400  # 2024-02-03T00:00:00Z
    second = find_rule(RULESET, "Second")
    assert second is not None
    assert second.description is None
    assert second.date is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-02-03", 1_706_918_400),
        ("2024.02.03", 1_706_918_400),
        ("2024-02-03T01:00:00Z", 1_706_922_000),
        ("2024-02-03T02:00:00+01:00", 1_706_922_000),
        ("03/02/2024", None),
        ("2024-13-45", None),
        ("yesterday", None),
        (20240203, None),
        (None, None),
    ],
)
def test_parse_rule_date(value: object, expected: int | None) -> None:
    assert yara.parse_rule_date(value) == expected


def test_absent_rule_is_none() -> None:
    assert find_rule(RULESET, "Third") is None


@pytest.mark.parametrize(
    "source",
    [
        "rule { broken",
        "rule X { strings: $a = { 4G } condition: $a }",
        'rule X { meta: a = "\\q" condition: true }',
        None,
        42,
    ],
)
def test_unparseable_source_raises_the_typed_error(source: object) -> None:
    with pytest.raises(YaraParseError):
        find_rule(source, "X")


def test_each_source_is_parsed_once_and_errors_are_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    original = plyara.Plyara.parse_string

    def counting(self: plyara.Plyara, text: str) -> list:
        calls.append(text)
        return original(self, text)

    monkeypatch.setattr(plyara.Plyara, "parse_string", counting)
    yara._parsed_ruleset.cache_clear()  # the cache is process-wide; start from empty
    assert find_rule(RULESET, "First") is not None
    assert find_rule(RULESET, "Second") is not None
    for _ in range(2):
        with pytest.raises(YaraParseError):
            find_rule("rule { broken", "X")
    assert calls == [RULESET, "rule { broken"]


def test_duplicate_rule_names_keep_the_first() -> None:
    source = factories.yara_rule("Dup", text="one") + factories.yara_rule("Dup", text="two")
    rule = find_rule(source, "Dup")
    assert rule is not None
    assert '"one"' in rule.source


def test_the_reused_parser_keeps_nothing_of_the_previous_source() -> None:
    """One parser serves every source: each result equals a fresh plyara parser's, whatever
    was parsed before (imports, comments, a failed parse)."""
    import plyara.utils

    sources = [
        'import "pe"\nrule with_import { condition: pe.number_of_sections > 2 }',
        '// a comment\nrule plain { strings: $a = "x" condition: $a }',
        "rule broken { condition: ",
        'rule tagged : t1 t2 { meta: date = "2024-01-31" condition: true }',
        'rule plain { strings: $a = "x" condition: $a }',
    ]
    for source in sources:
        try:
            expected = {
                raw["rule_name"]: plyara.utils.rebuild_yara_rule(raw)
                for raw in plyara.Plyara().parse_string(source)
            }
        except Exception:
            with pytest.raises(YaraParseError):
                yara.parse_ruleset(source)
            continue
        parsed = yara.parse_ruleset(source)
        assert {name: rule.source for name, rule in parsed.items()} == expected
