"""A window with one of each hostile notification beside good ones, replayed from a fixture
folder through the VT emulator, the Livehunt chain and delivery to OpenCTI: the good ones are
ingested exactly as without the hostile ones, each hostile one is dropped and named."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.corpus import generate_corpus
from vt_pipeline.emulators.virustotal.fixtures import dump_fixtures, load_fixtures
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.assets import table_counts
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.conftest import (
    LIVEHUNT_START,
    PREMIUM_KEY,
    ResourcesFactory,
    materialize_hours,
    stored,
    window,
)
from vt_pipeline_tests.factories import file_notification
from vt_pipeline_tests.livehunt.hostile import hostile_notifications

pytestmark = pytest.mark.integration

HOUR = 1


def good_folder(root: Path) -> tuple[Path, str]:
    """A small corpus of the window as fixtures, plus one file whose served bytes never match
    its SHA-256; returns the folder and that SHA-256."""
    first = LIVEHUNT_START + timedelta(hours=HOUR)
    corpus = generate_corpus(11, 30, first, first + timedelta(hours=1))
    dump_fixtures(corpus, root, max_sample_size=256 * 1024)
    wrong = file_notification(
        "wrong-bytes", notification_id="wrong-bytes", notification_date=window(HOUR)[0] + 60
    )
    sha256 = wrong["id"]
    (root / "samples").mkdir(exist_ok=True)
    (root / "samples" / sha256).write_bytes(b"MZ these are not the bytes of that hash")
    add_notifications(root, [wrong])
    return root, sha256


def add_notifications(root: Path, items: list[dict[str, Any]]) -> None:
    """Append to notifications.json, escaping what UTF-8 cannot carry, as VT's JSON would."""
    path = root / "notifications.json"
    path.write_text(json.dumps([*json.loads(path.read_text("utf-8")), *items]), "utf-8")


@contextmanager
def serving(folder: Path) -> Iterator[VirusTotalResource]:
    emulator = VirusTotalEmulator(load_fixtures(folder), api_keys={PREMIUM_KEY: True})
    with emulator.serve():
        yield ScaledClockVirusTotalResource(
            api_key=PREMIUM_KEY,
            api_url=emulator.url,
            timeout_seconds=2.0,
            backoff_base_seconds=0.01,
            backoff_max_seconds=0.02,
            budget_time_scale=240.0,  # a 429 waits for the next "minute": 0.25 s
            max_attempts=3,
        )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    event = next(
        e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)
    )
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_hostile_notifications_are_dropped_and_the_window_delivered(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    good, wrong_sha256 = good_folder(tmp_path / "good")
    hostile_folder, _ = good_folder(tmp_path / "hostile")
    hostile = hostile_notifications(window(HOUR)[0] + 120)
    add_notifications(hostile_folder, list(hostile.values()))
    hostile_ids = sorted(item["context_attributes"]["notification_id"] for item in hostile.values())

    with serving(good) as virustotal:
        clean = livehunt_resources(tmp_path / "clean")
        clean_run = materialize_hours(dagster_instance, {**clean, "virustotal": virustotal}, HOUR)
    with serving(hostile_folder) as virustotal:
        resources = livehunt_resources(
            tmp_path / "storage",
            opencti=OpenCTIResource(url=opencti.url, token=opencti.token, work_timeout_seconds=30),
        )
        result = materialize_hours(
            dagster_instance, {**resources, "virustotal": virustotal}, HOUR, deliver=True
        )
    assert clean_run.success and result.success

    # the good notifications give exactly the bundle they give alone, and OpenCTI holds it
    bundle = stored(tmp_path / "storage", "livehunt_stix_bundles", HOUR).read_bytes()
    assert bundle == stored(tmp_path / "clean", "livehunt_stix_bundles", HOUR).read_bytes()
    objects = json.loads(bundle)["objects"]
    assert objects and all(opencti.get(obj["id"]) is not None for obj in objects)

    # each hostile one is dropped as malformed, named in the metadata and in a warning
    files = metadata(result, "livehunt_files")
    malformed = {
        r.data["notification_id"]: r.data["why"] for r in files["malformed_notifications"].records
    }
    assert sorted(malformed) == hostile_ids and all(malformed.values())
    assert table_counts(files["dropped_by_reason"])["malformed"] == len(hostile)
    clean_files = metadata(clean_run, "livehunt_files")
    assert files["kept"] == clean_files["kept"]
    assert "malformed" not in table_counts(clean_files["dropped_by_reason"])
    assert "malformed_notifications" not in clean_files
    warnings = [
        e.user_message
        for e in dagster_instance.all_logs(result.run_id)
        if e.level == 30 and "dropped as malformed" in e.user_message
    ]
    for notification_id in hostile_ids:
        assert any(notification_id in line for line in warnings), notification_id
    table = pd.read_parquet(stored(tmp_path / "storage", "livehunt_files", HOUR, ".parquet"))
    dropped = table[table["drop_reason"] == "malformed"]
    assert sorted(dropped["notification_id"]) == hostile_ids
    assert dropped["drop_detail"].notna().all()

    # raw data only grows: the hostile items are stored as VT sent them
    raw = json.loads(stored(tmp_path / "storage", "livehunt_notifications", HOUR).read_bytes())
    by_id = {item["context_attributes"]["notification_id"]: item for item in raw}
    assert set(hostile_ids) <= set(by_id)
    assert by_id["hostile-surrogate"]["attributes"]["meaningful_name"] == "invoice\udc80.exe"
    assert by_id["hostile-size"]["attributes"]["size"] == 2**64

    # the sample whose bytes never match is not_available, with its reason; the window went on
    records = json.loads(stored(tmp_path / "storage", "livehunt_artifacts", HOUR).read_bytes())
    wrong = next(r for r in records if r["sha256"] == wrong_sha256)
    assert wrong["status"] == "not_available" and "never matched the SHA-256" in wrong["reason"]
    statuses = table_counts(metadata(result, "livehunt_artifacts")["artifacts_by_status"])
    assert statuses["not_available"] >= 1
