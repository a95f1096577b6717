"""The fixture folder loader: a bad file is named with its problem, never a bare traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from vt_pipeline import cli
from vt_pipeline.emulators.virustotal.fixtures import FixtureError, load_fixtures
from vt_pipeline_tests.factories import file_notification

GOOD = file_notification("fixture-good", notification_id="n-1")


def write(root: Path, name: str, payload: Any, raw: bool = False) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload if raw else json.dumps(payload), encoding="utf-8")
    return path


def notification(**changes: Any) -> dict[str, Any]:
    item = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("ctx_"):
            item["context_attributes"][key[4:]] = value
        elif value is None:
            item.pop(key)
        else:
            item[key] = value
    return item


Case = tuple[str, Any, bool, str]
CASES: dict[str, Case] = {
    "object without id": ("files/x.json", {"data": {"type": "file"}}, False, '"data" has no "id"'),
    "no data member": ("urls/x.json", {"error": {}}, False, 'with a "data" member'),
    "data not an object": ("domains/x.json", {"data": [1]}, False, '"data" must be an object'),
    "invalid JSON": ("files/y.json", '{"data": {', True, "is not valid JSON: Expecting"),
    "resolutions not a list": ("resolutions/a.json", {"data": {}}, False, "must be a list"),
    "stream not a list": ("notifications.json", {"data": []}, False, "must be a JSON list"),
    "item not an object": ("notifications.json", [GOOD, 3], False, "notification #1: must be"),
    "no id": ("notifications.json", [notification(id=None)], False, 'has no "id"'),
    "unknown type": (
        "notifications.json",
        [notification(type="bogus")],
        False,
        "\"type\" must be one of ['domain', 'file', 'ip_address', 'url'], not 'bogus'",
    ),
    "no context": (
        "notifications.json",
        [notification(context_attributes=None)],
        False,
        '"context_attributes" must be an object, not null',
    ),
    "no notification id": (
        "notifications.json",
        [notification(ctx_notification_id="")],
        False,
        'has no "notification_id"',
    ),
    "date as text": (
        "notifications.json",
        [notification(ctx_notification_date="yesterday")],
        False,
        "notification_date\" must be an integer (unix seconds), not 'yesterday'",
    ),
    "sources not objects": (
        "notifications.json",
        [notification(ctx_sources=["ruleset"])],
        False,
        'sources" must hold objects',
    ),
    "duplicate id": (
        "notifications.json",
        [GOOD, GOOD],
        False,
        "notification #1: notification_id 'n-1' is already used by notification #0",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_file_is_named_with_its_problem(case: str, tmp_path: Path) -> None:
    name, payload, raw, problem = CASES[case]
    path = write(tmp_path, name, payload, raw)
    with pytest.raises(FixtureError) as caught:
        load_fixtures(tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert problem in str(caught.value)
    assert caught.value.path == path


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "files" / "z.json"
    path.parent.mkdir()
    path.write_bytes(b'{"data": "\xff"}')
    with pytest.raises(FixtureError, match=r"z\.json: is not UTF-8 text \(byte 10\)"):
        load_fixtures(tmp_path)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FixtureError, match="nowhere: is not a directory"):
        load_fixtures(tmp_path / "nowhere")


def test_hostile_values_in_a_good_shape_load_as_they_are(tmp_path: Path) -> None:
    item = notification(attributes={**GOOD["attributes"], "size": 2**64, "names": ["a\udc80"]})
    write(tmp_path, "notifications.json", [item])
    corpus = load_fixtures(tmp_path)
    assert corpus.notifications[0]["attributes"]["size"] == 2**64
    assert corpus.notifications[0]["attributes"]["names"] == ["a\udc80"]


def test_the_cli_reports_a_bad_folder_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "files/x.json", {"data": {"type": "file"}})
    with pytest.raises(SystemExit) as caught:
        cli.main(["emulate", "virustotal", "--fixtures", str(tmp_path)])
    message = str(caught.value.code)
    assert message.startswith("vt-pipeline emulate virustotal: bad fixtures: ")
    assert str(path) in message and '"data" has no "id"' in message
