"""The Livehunt filters: upstream's order and meaning, without upstream's bugs."""

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from vt_pipeline.livehunt.filters import drop_reason, filter_notifications
from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline_tests.factories import (
    DAY,
    NOTIFICATION_DATE,
    domain_notification,
    file_notification,
    ip_notification,
    url_notification,
)
from vt_pipeline_tests.livehunt.hostile import hostile_notifications

DEFAULT = LivehuntOptions()


def without(item: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The notification with attributes VirusTotal left out."""
    item["attributes"] = {k: v for k, v in item["attributes"].items() if k not in keys}
    return item


def test_a_typical_recent_detected_file_is_kept() -> None:
    assert drop_reason(file_notification(), DEFAULT) is None


@pytest.mark.parametrize(
    ("item", "options", "reason"),
    [
        (
            file_notification(type_extension="pdf"),
            LivehuntOptions(extensions=("exe", "dll")),
            "extension",
        ),
        (file_notification(malicious=0), DEFAULT, "positives"),
        (file_notification(malicious=4), LivehuntOptions(min_positives=5), "positives"),
        (file_notification(size=999), DEFAULT, "min_size"),
        (file_notification(size=52_428_801), DEFAULT, "max_size"),
        (file_notification(first_submission_date=NOTIFICATION_DATE - 3 * DAY), DEFAULT, "age"),
        # first failing filter wins, in upstream's order
        (
            file_notification(type_extension="pdf", malicious=0, size=10),
            LivehuntOptions(extensions=("exe",)),
            "extension",
        ),
        (file_notification(malicious=0, size=10), DEFAULT, "positives"),
    ],
)
def test_each_filter_drops_with_its_reason(
    item: dict[str, Any], options: LivehuntOptions, reason: str
) -> None:
    assert drop_reason(item, options) == reason


def test_extensions_compare_without_dot_or_case() -> None:
    options = LivehuntOptions(extensions=(".EXE", " dll "))
    assert drop_reason(file_notification(type_extension="exe"), options) is None
    assert drop_reason(file_notification(type_extension="dll"), options) is None
    # a file VT gives no extension is not one of the asked-for types
    assert drop_reason(file_notification(type_extension=None), options) == "extension"


def test_zero_disables_numeric_filters() -> None:
    """Upstream's min_positives=0 / max_age_days=0 dropped everything; 0 means 'off'."""
    off = LivehuntOptions(min_positives=0, min_file_size=0, max_file_size=0, max_age_days=0)
    item = file_notification(
        malicious=0, size=1, first_submission_date=NOTIFICATION_DATE - 900 * DAY
    )
    assert drop_reason(item, off) is None
    assert drop_reason(file_notification(size=10**12), off) is None


def test_age_is_measured_at_notification_time_not_now() -> None:
    """A file 2.9 days old when notified is kept forever: replays keep what the live run kept."""
    young = file_notification(first_submission_date=NOTIFICATION_DATE - int(2.9 * DAY))
    assert drop_reason(young, DEFAULT) is None
    just_old = file_notification(first_submission_date=NOTIFICATION_DATE - 3 * DAY)
    assert drop_reason(just_old, DEFAULT) == "age"
    iso = file_notification(
        notification_date="2025-11-20T10:00:00Z", first_submission_date=1_763_632_800 - 4 * DAY
    )
    assert drop_reason(iso, DEFAULT) == "age"


def test_missing_values_are_unknown_not_failing() -> None:
    item = without(file_notification(), "size", "last_analysis_stats", "first_submission_date")
    assert drop_reason(item, DEFAULT) is None
    null_date = file_notification(attributes={"first_submission_date": None})
    assert drop_reason(null_date, DEFAULT) is None


@pytest.mark.parametrize(
    "item",
    [url_notification(), domain_notification(), ip_notification(), ip_notification("2001:db8::7")],
)
def test_network_subjects_skip_file_filters_but_not_positives(item: dict[str, Any]) -> None:
    strict = LivehuntOptions(extensions=("exe",), min_file_size=10**9, max_age_days=1)
    assert drop_reason(item, strict) is None
    assert drop_reason(item, LivehuntOptions(min_positives=50)) == "positives"


@pytest.mark.parametrize(
    "item",
    [
        url_notification("http://evil.example/\nInjected: header"),
        url_notification("not a url"),
        domain_notification("../../etc/passwd"),
        domain_notification("exa mple.com"),
        ip_notification("999.1.1.1"),
        file_notification(attributes={"sha256": "../../x"}) | {"id": "../../x"},
        {
            "type": "collection",
            "id": "x",
            "attributes": {},
            "context_attributes": {"notification_id": "n1", "notification_date": NOTIFICATION_DATE},
        },
        file_notification(context={"notification_date": None}),
    ],
)
def test_unsafe_subjects_are_dropped_not_crashing(item: dict[str, Any]) -> None:
    assert drop_reason(item, DEFAULT) == "invalid_subject"


def test_frame_has_one_row_per_notification_with_reasons_and_duplicates() -> None:
    items = [
        file_notification("a", notification_id="n1"),
        file_notification("b", notification_id="n2", malicious=0),
        file_notification("a", notification_id="n1"),  # the same notification twice
        url_notification(notification_id="n3"),
    ]
    frame = filter_notifications(items, DEFAULT)
    assert list(frame["notification_id"]) == ["n1", "n2", "n1", "n3"]
    assert list(frame["drop_reason"].fillna("")) == ["", "positives", "duplicate", ""]
    assert list(frame["kept"]) == [True, False, False, True]
    assert list(frame["object_type"]) == ["file", "file", "file", "url"]
    assert frame.loc[0, "age_days"] == pytest.approx(1 / 24)
    assert frame.loc[0, "ruleset_ids"] == "ruleset-1"


def test_hostile_strings_stay_data() -> None:
    hostile = file_notification(
        meaningful_name="../../" + "A" * 5000 + "|\n\u202e",
        type_extension="exe\n../",
    )
    frame = filter_notifications([hostile], LivehuntOptions(extensions=("exe",)))
    assert frame.loc[0, "drop_reason"] == "extension"
    assert len(frame.loc[0, "type_extension"]) <= 64


def test_empty_window_gives_an_empty_typed_frame() -> None:
    frame = filter_notifications([], DEFAULT)
    assert len(frame) == 0
    assert str(frame["kept"].dtype) == "bool"


def test_each_hostile_item_is_dropped_as_malformed_beside_good_ones(tmp_path: Path) -> None:
    hostile = hostile_notifications()
    good = [
        file_notification("good-1", notification_id="g1"),
        url_notification(notification_id="g2"),
    ]
    items = [good[0], *hostile.values(), good[1]]
    frame = filter_notifications(items, LivehuntOptions(min_positives=1, max_age_days=30))
    by_id = frame.set_index("notification_id")
    assert list(by_id.loc[["g1", "g2"], "kept"]) == [True, True]
    for item in hostile.values():
        row = by_id.loc[item["context_attributes"]["notification_id"]]
        assert row["drop_reason"] == "malformed" and not row["kept"]
        assert row["drop_detail"]
    # the table stores: Parquet takes every row, hostile ones included
    frame.to_parquet(tmp_path / "files.parquet", index=False)
    assert len(pd.read_parquet(tmp_path / "files.parquet")) == len(items)


def test_a_malformed_item_without_a_usable_id_gets_a_storable_row(tmp_path: Path) -> None:
    items: list[Any] = [
        {
            "type": "file\udc80",
            "attributes": [],
            "context_attributes": {"notification_id": "x\udc80"},
        },
        ["not", "an", "object"],
    ]
    frame = filter_notifications(items, DEFAULT)
    assert list(frame["drop_reason"]) == ["malformed", "malformed"]
    assert frame.loc[0, "notification_id"] == "x\\udc80"
    assert pd.isna(frame.loc[1, "notification_id"])
    frame.to_parquet(tmp_path / "files.parquet", index=False)
