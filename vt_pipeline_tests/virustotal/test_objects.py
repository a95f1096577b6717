"""The pure readers of VT objects: hostile shapes are read as absent, and named as malformed."""

import contextlib
import math
from typing import Any

import pytest

from vt_pipeline.virustotal import objects as n
from vt_pipeline_tests.factories import file_notification, url_notification
from vt_pipeline_tests.livehunt.hostile import hostile_notifications

HOSTILE = hostile_notifications()


@pytest.mark.parametrize("label", list(HOSTILE))
def test_every_hostile_shape_is_malformed_and_no_reader_raises(label: str) -> None:
    item = HOSTILE[label]
    assert n.malformed_reason(item) is not None
    # every reader the filters and the mapping use answers without raising
    n.attributes(item)
    n.context(item)
    n.rule_name(item)
    n.hunting_snippet(item)
    n.hunting_sources(item)
    n.notification_tags(item)
    n.file_hashes(item)
    n.analysis_stats(item)
    n.malicious_count(item)
    n.parse_timestamp(n.attributes(item).get("first_submission_date"))
    with contextlib.suppress(n.InvalidNotification):
        n.observable(item)


def test_the_reason_says_where_and_what() -> None:
    assert (
        n.malformed_reason(HOSTILE["size 2**64"])
        == ".attributes.size is an integer outside 64 bits"
    )
    assert "malicious is inf" in str(n.malformed_reason(HOSTILE["malicious Infinity"]))
    assert "hunting_info is a list" in str(n.malformed_reason(HOSTILE["hunting_info a list"]))
    assert "attributes is a list" in str(n.malformed_reason(HOSTILE["domain attributes a list"]))
    surrogate = str(n.malformed_reason(HOSTILE["lone surrogate in a name"]))
    assert "lone surrogate" in surrogate and surrogate.encode("utf-8")


@pytest.mark.parametrize(
    "item", [file_notification(), url_notification(), file_notification(size=2**63 - 1)]
)
def test_vt_shaped_items_are_not_malformed(item: dict[str, Any]) -> None:
    assert n.malformed_reason(item) is None


@pytest.mark.parametrize("item", [None, [], "text", 3])
def test_non_objects_are_malformed(item: Any) -> None:
    assert n.malformed_reason(item) is not None
    assert n.attributes(item) == {} and n.context(item) == {}  # type: ignore[arg-type]


def test_readers_tolerate_wrong_types() -> None:
    item = file_notification(context={"sources": {"id": "x"}, "tags": "abc", "hunting_info": 3})
    assert n.hunting_sources(item) == []
    assert n.notification_tags(item) == []  # a string is not a list of tags
    assert n.rule_name(item) is None and n.hunting_snippet(item) is None
    stats = {"malicious": math.inf, "harmless": math.nan, "undetected": 2**70, "suspicious": True}
    item = file_notification(attributes={"last_analysis_stats": {**stats, "timeout": 1}})
    assert n.analysis_stats(item) == {"timeout": 1}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_700_000_000, 1_700_000_000),
        (1_700_000_000.7, 1_700_000_000),
        ("1700000000", 1_700_000_000),
        ("2023-11-14T22:13:20Z", 1_700_000_000),
        (10**30, None),
        ("9" * 400, None),
        (math.inf, None),
        (math.nan, None),
        (-(10**20), None),
        (True, None),
    ],
)
def test_parse_timestamp_refuses_dates_no_calendar_spells(value: Any, expected: int | None) -> None:
    assert n.parse_timestamp(value) == expected


def test_safe_text_is_one_valid_utf8_line() -> None:
    text = n.safe_text("a\udc80b\nc" + "x" * 500)
    assert text.encode("utf-8") and "\n" not in text and len(text) == 200
    assert text.startswith("a\\udc80b?c")


def test_a_url_that_utf8_cannot_carry_is_not_valid() -> None:
    assert not n.is_valid_url("http://example.com/\udc80")
    assert n.is_valid_url("http://example.com/é")
