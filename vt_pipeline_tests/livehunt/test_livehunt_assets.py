"""The Livehunt chain materialized against the VirusTotal emulator on a real Dagster instance."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.assets import livehunt_assets, livehunt_stix_bundles, run_vt, table_counts
from vt_pipeline.livehunt.checks import PROBLEMS_SHOWN, livehunt_stix_bundle_is_valid
from vt_pipeline.livehunt.filters import filter_notifications
from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.livehunt.summary import livehunt_totals
from vt_pipeline.stix.validation import validate_bundle
from vt_pipeline.storage.store import PartitionedFileIOManager, dumps_json
from vt_pipeline.virustotal.resource import VirusTotalSession
from vt_pipeline_tests.conftest import (
    PUBLIC_KEY,
    ResourcesFactory,
    partition_key,
    rebuild_bundle,
    stored,
    window,
)
from vt_pipeline_tests.conftest import materialize_hours as run

pytestmark = pytest.mark.integration

HOUR = 2  # a window of the fixed corpus with files, network subjects and drops


def in_window(corpus: Corpus, hour: int) -> list[dict[str, Any]]:
    lo, hi = window(hour)
    return [
        item
        for item in corpus.notifications
        if lo <= item["context_attributes"]["notification_date"] < hi
    ]


def test_counts_match_the_corpus(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    expected = in_window(vt_corpus, HOUR)
    assert expected, "the fixed corpus must have notifications in this window"
    result = run(dagster_instance, livehunt_resources(), HOUR)
    assert result.success

    notifications = json.loads(
        stored(tmp_path / "storage", "livehunt_notifications", HOUR).read_bytes()
    )
    assert sorted(n["context_attributes"]["notification_id"] for n in notifications) == sorted(
        n["context_attributes"]["notification_id"] for n in expected
    )
    totals = livehunt_totals(result)
    assert totals["notifications"] == len(expected)
    frame = filter_notifications(expected, LivehuntOptions())
    assert totals["kept"] == int(frame["kept"].sum())
    assert totals["dropped_by_reason"] == frame["drop_reason"].value_counts().to_dict()
    assert totals["kept"] > 0 and totals["dropped_by_reason"]


def test_vt_calls_are_the_minimum(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    """Pages, one fetch per ruleset, one download per kept file; nothing for dropped files."""
    expected = in_window(vt_corpus, HOUR)
    frame = filter_notifications(expected, LivehuntOptions())
    kept = frame[frame["kept"]]
    kept_files = set(kept[kept["object_type"] == "file"]["subject"])
    dropped_only = (
        set(frame[~frame["kept"] & (frame["object_type"] == "file")]["subject"]) - kept_files
    )
    assert dropped_only, "the window must drop some files for this test to mean anything"
    rulesets = {r for ids in kept["ruleset_ids"] for r in ids.split(",") if r}
    too_large = {
        sha
        for sha in kept_files
        if vt_corpus.files[sha]["attributes"].get("size", 0) > LivehuntOptions().artifact_max_bytes
    }

    result = run(dagster_instance, livehunt_resources(), HOUR)
    assert result.success
    assert vt_emulator.count("ioc_stream") == max(1, math.ceil(len(expected) / 40))
    assert vt_emulator.count("hunting_ruleset") == len(rulesets)
    assert vt_emulator.count("file_download") == len(kept_files - too_large)
    assert vt_emulator.count("file") == 0  # ioc_stream already carries full objects
    assert livehunt_totals(result)["vt_calls_by_endpoint"] == {
        "ioc_stream": vt_emulator.count("ioc_stream"),
        "hunting_ruleset": len(rulesets),
        "file_download": len(kept_files - too_large),
    }


def test_rematerializing_is_byte_identical_and_free(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resources = livehunt_resources()
    run(dagster_instance, resources, HOUR)
    bundle_path = stored(tmp_path / "storage", "livehunt_stix_bundles", HOUR)
    first = bundle_path.read_bytes()
    downloads = vt_emulator.count("file_download")
    assert downloads > 0

    run(dagster_instance, resources, HOUR)
    assert bundle_path.read_bytes() == first
    assert vt_emulator.count("file_download") == downloads  # samples already stored
    bundle = json.loads(first)
    assert validate_bundle(bundle) == []
    types = {obj["type"] for obj in bundle["objects"]}
    assert {"incident", "file", "indicator", "relationship", "artifact", "identity"} <= types


def test_bundles_from_handed_on_inputs_equal_bundles_rebuilt_from_the_files(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory, tmp_path: Path
) -> None:
    """In one run the IO manager hands each step the values the step before wrote; a run of the
    bundles alone reads them from the files. Both give the same bytes: the handed-on values are
    what the files hold, and no step changed them in place."""
    resources = livehunt_resources()
    run(dagster_instance, resources, HOUR)
    handed_on, rebuilt = rebuild_bundle(dagster_instance, resources, tmp_path / "storage", HOUR)
    assert rebuilt == handed_on


def test_quota_bursts_and_server_faults_give_the_clean_bundle(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    run(dagster_instance, livehunt_resources(tmp_path / "clean"), HOUR)
    clean = stored(tmp_path / "clean", "livehunt_stix_bundles", HOUR).read_bytes()

    vt_emulator.reset_stats()
    vt_emulator.set_faults(
        "ioc_stream:429:1.0:3,hunting_ruleset:429:0.5:4,*:503:0.2,*:500:0.1,"
        "sample:truncated:0.3:5,ioc_stream:malformed:0.3:2",
        seed=5,
    )
    result = run(dagster_instance, livehunt_resources(tmp_path / "faulty"), HOUR)
    assert result.success
    assert stored(tmp_path / "faulty", "livehunt_stix_bundles", HOUR).read_bytes() == clean
    stats = vt_emulator.stats()
    assert stats["ioc_stream"].get("429", 0) >= 3  # the burst happened and was waited out
    assert sum(stats["sample"].get(code, 0) for code in stats["sample"]) > 0
    retries = sum(
        (event.materialization.metadata.get("vt_retries") or dg.MetadataValue.int(0)).value
        for event in result.get_asset_materialization_events()
    )
    assert retries >= 3


def test_timeouts_are_retried(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    vt_emulator.set_faults("hunting_ruleset:timeout:1.0:1")
    assert run(dagster_instance, livehunt_resources(), HOUR).success


def test_non_premium_key_fails_with_a_clear_message(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory
) -> None:
    result = run(
        dagster_instance, livehunt_resources(api_key=PUBLIC_KEY), HOUR, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    message = failure.step_failure_data.error.to_string()
    assert "premium" in message and "Livehunt" in message
    assert PUBLIC_KEY not in message


def test_backfill_range_stores_each_window(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    result = run(dagster_instance, livehunt_resources(), 1, 3)
    assert result.success
    for hour in (1, 2, 3):
        items = json.loads(
            stored(tmp_path / "storage", "livehunt_notifications", hour).read_bytes()
        )
        assert len(items) == len(in_window(vt_corpus, hour))
        bundle = json.loads(
            stored(tmp_path / "storage", "livehunt_stix_bundles", hour).read_bytes()
        )
        assert validate_bundle(bundle) == []
    materialized = dagster_instance.get_materialized_partitions(
        dg.AssetKey("livehunt_stix_bundles")
    )
    assert materialized == {partition_key(h) for h in (1, 2, 3)}
    # each window carries its own numbers, not the run's total
    per_window = {
        e.materialization.partition: e.materialization.metadata["notifications"].value
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_notifications")
    }
    assert per_window == {partition_key(h): len(in_window(vt_corpus, h)) for h in (1, 2, 3)}


def test_a_range_equals_its_windows_run_one_by_one(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory, tmp_path: Path
) -> None:
    run(dagster_instance, livehunt_resources(tmp_path / "range"), 1, 2)
    for hour in (1, 2):
        run(dagster_instance, livehunt_resources(tmp_path / "single"), hour)
        assert (
            stored(tmp_path / "range", "livehunt_stix_bundles", hour).read_bytes()
            == stored(tmp_path / "single", "livehunt_stix_bundles", hour).read_bytes()
        )


class DroppingIdentitiesIOManager(PartitionedFileIOManager):
    """Storage that loses the author objects of bundles: a bug the check must catch."""

    def handle_output(self, context: dg.OutputContext, obj: dict[str, Any]) -> None:
        if context.asset_key == dg.AssetKey("livehunt_stix_bundles"):
            obj = {
                key: {**b, "objects": [o for o in b["objects"] if o["type"] != "identity"]}
                for key, b in obj.items()
            }
        super().handle_output(context, obj)


def test_asset_check_fails_on_a_broken_bundle(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory, tmp_path: Path
) -> None:
    resources = livehunt_resources()
    run(dagster_instance, resources, HOUR)
    broken_storage = {
        **resources,
        "io_manager": DroppingIdentitiesIOManager(base_dir=str(tmp_path / "storage")),
    }
    result = dg.materialize(
        [*livehunt_assets, livehunt_stix_bundle_is_valid],
        selection=dg.AssetSelection.assets(livehunt_stix_bundles).without_checks()
        | dg.AssetSelection.checks(livehunt_stix_bundle_is_valid),
        partition_key=partition_key(HOUR),
        instance=dagster_instance,
        resources=broken_storage,
        raise_on_error=False,
    )
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 1 and not evaluations[0].passed
    assert evaluations[0].partition == partition_key(HOUR)
    # Each problem is a line of text, not a JSON blob.
    problems = evaluations[0].metadata["problems"]
    assert isinstance(problems, dg.MarkdownMetadataValue)
    count = evaluations[0].metadata["problem_count"].value
    lines = [line for line in problems.value.splitlines() if line]
    bullets = [line for line in lines if line.startswith("- ")]
    assert len(bullets) == min(count, PROBLEMS_SHOWN) > 0
    assert any(r"identity\-\-" in line for line in bullets)
    if count > PROBLEMS_SHOWN:
        assert lines[-1] == f"{count - PROBLEMS_SHOWN} more problems."
    assert not result.success  # the check blocks what would consume the bundle


def test_network_rule_notifications_become_observables(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    hours = [
        h
        for h in range(6)
        if {"url", "domain", "ip_address"} & {n["type"] for n in in_window(vt_corpus, h)}
    ]
    assert hours
    run(dagster_instance, livehunt_resources(min_positives=0), hours[0], hours[-1])
    types: set[str] = set()
    for hour in hours:
        bundle = json.loads(
            stored(tmp_path / "storage", "livehunt_stix_bundles", hour).read_bytes()
        )
        types |= {obj["type"] for obj in bundle["objects"]}
    assert {"url", "domain-name"} <= types and types & {"ipv4-addr", "ipv6-addr"}


def test_samples_are_stored_only_by_hash(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory, tmp_path: Path
) -> None:
    run(dagster_instance, livehunt_resources(), 0, 5)
    base = tmp_path / "storage"
    samples = [p for p in (base / "artifacts").rglob("*") if p.is_file()]
    assert samples
    for path in samples:
        assert path.parent.parent == base / "artifacts" / "sha256"
        assert len(path.name) == 64 and path.name.startswith(path.parent.name)
        assert path.stat().st_mode & 0o777 == 0o600
    written = {p.relative_to(base).parts[0] for p in base.rglob("*") if p.is_file()}
    assert written <= {
        "artifacts",
        "livehunt_notifications",
        "livehunt_files",
        "livehunt_rulesets",
        "livehunt_artifacts",
        "livehunt_file_relations",
        "livehunt_stix_bundles",
    }


def test_artifact_cap_skips_without_downloading(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    result = run(dagster_instance, livehunt_resources(artifact_max_bytes=1), HOUR)
    assert result.success
    assert vt_emulator.count("file_download") == 0
    records = json.loads(stored(tmp_path / "storage", "livehunt_artifacts", HOUR).read_bytes())
    assert records and {r["status"] for r in records} == {"too_large"}


def test_limit_and_tag_filter(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    result = run(dagster_instance, livehunt_resources(limit=3), HOUR)
    meta = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_notifications")
    )
    assert meta["notifications"].value == 3 and meta["limit_reached"].value is True

    tags = sorted({t for n in in_window(vt_corpus, HOUR) for t in n["context_attributes"]["tags"]})
    tag = tags[0]
    run(dagster_instance, livehunt_resources(tmp_path / "tagged", filter_with_tag=tag), HOUR)
    items = json.loads(stored(tmp_path / "tagged", "livehunt_notifications", HOUR).read_bytes())
    assert items and all(tag in n["context_attributes"]["tags"] for n in items)
    assert len(items) == sum(
        tag in n["context_attributes"]["tags"] for n in in_window(vt_corpus, HOUR)
    )


def test_options_without_downloads_or_yara_spend_no_quota_on_them(
    dagster_instance: dg.DagsterInstance,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    run(dagster_instance, livehunt_resources(upload_artifact=False, create_yara_rule=False), HOUR)
    assert vt_emulator.count("file_download") == 0 and vt_emulator.count("hunting_ruleset") == 0
    bundle = json.loads(stored(tmp_path / "storage", "livehunt_stix_bundles", HOUR).read_bytes())
    types = {obj["type"] for obj in bundle["objects"]}
    assert "artifact" not in types
    assert not any(obj.get("pattern_type") == "yara" for obj in bundle["objects"])


def materialization_metadata(
    result: dg.ExecuteInProcessResult, asset: str, hour: int = HOUR
) -> dict[str, Any]:
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset) and e.partition == partition_key(hour)
    )
    return {k: v.value for k, v in event.materialization.metadata.items()}


def stored_record(base: Path, hour: int = HOUR) -> tuple[bytes, pd.DataFrame, bytes]:
    """A window's stored notifications, files table and bundle."""
    return (
        stored(base, "livehunt_notifications", hour).read_bytes(),
        pd.read_parquet(stored(base, "livehunt_files", hour, ".parquet")),
        stored(base, "livehunt_stix_bundles", hour).read_bytes(),
    )


def delete_on_vt(resources: dict[str, Any], ids: list[str]) -> None:
    """Delete notifications through the VT API, as a delivery cut short by a crash had done."""

    async def delete(session: VirusTotalSession) -> None:
        for notification_id in ids:
            assert await session.delete_notification(notification_id)

    run_vt(resources["virustotal"], delete)


def test_a_re_read_after_part_of_the_window_was_deleted_keeps_all(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resources = livehunt_resources()
    run(dagster_instance, resources, HOUR)
    before = stored_record(tmp_path / "storage")
    ids = [n["context_attributes"]["notification_id"] for n in in_window(vt_corpus, HOUR)]
    delete_on_vt(resources, ids[: len(ids) // 2])  # a crash part-way through the deletes

    result = run(dagster_instance, resources, HOUR)
    after = stored_record(tmp_path / "storage")
    assert after[0] == before[0]
    pd.testing.assert_frame_equal(after[1], before[1])
    assert after[2] == before[2]
    meta = materialization_metadata(result, "livehunt_notifications")
    assert meta["notifications_read"] == len(ids) - len(ids) // 2
    assert len(ids) == meta["notifications"]
    assert meta["notifications_new"] == 0
    assert materialization_metadata(result, "livehunt_files")["notifications"] == len(ids)


def test_a_re_read_only_adds_what_is_new_and_never_replaces_a_stored_item(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    run(dagster_instance, livehunt_resources(limit=3), HOUR)
    path = stored(tmp_path / "storage", "livehunt_notifications", HOUR)
    first = json.loads(path.read_bytes())
    first[0]["attributes"]["meaningful_name"] = "as-first-read.exe"  # VT's data changed since
    path.write_bytes(dumps_json(first))

    result = run(dagster_instance, livehunt_resources(), HOUR)
    merged = json.loads(path.read_bytes())
    expected = in_window(vt_corpus, HOUR)
    assert merged[:3] == first  # stored items stay, as they were first read, in order
    assert len(merged) == len(expected)
    assert sorted(n["context_attributes"]["notification_id"] for n in merged) == sorted(
        n["context_attributes"]["notification_id"] for n in expected
    )
    meta = materialization_metadata(result, "livehunt_notifications")
    assert meta["notifications"] - meta["notifications_new"] == 3
    assert meta["notifications_new"] == len(expected) - 3


def kept_files_by_window(corpus: Corpus, hours: range) -> dict[str, set[int]]:
    """SHA-256 of every file the default filters keep -> the corpus hours that keep it."""
    kept_in: dict[str, set[int]] = {}
    for hour in hours:
        frame = filter_notifications(in_window(corpus, hour), LivehuntOptions())
        for sha256 in frame[frame["kept"] & (frame["object_type"] == "file")]["subject"]:
            kept_in.setdefault(str(sha256), set()).add(hour)
    return kept_in


def test_a_file_kept_in_two_windows_of_a_run_is_downloaded_once(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    """One download per distinct SHA-256 per run; every window keeping it records it stored."""
    hours = range(6)
    cap = LivehuntOptions().artifact_max_bytes
    kept_in = {
        sha256: found
        for sha256, found in kept_files_by_window(vt_corpus, hours).items()
        if vt_corpus.files[sha256]["attributes"].get("size", 0) <= cap
    }
    shared = {sha256: found for sha256, found in kept_in.items() if len(found) > 1}
    assert shared, "the fixed corpus must keep some file in two windows"

    result = run(dagster_instance, livehunt_resources(), hours[0], hours[-1])
    assert result.success
    assert vt_emulator.count("file_download") == len(kept_in)
    for sha256, found in shared.items():
        for hour in found:
            records = json.loads(
                stored(tmp_path / "storage", "livehunt_artifacts", hour).read_bytes()
            )
            (record,) = [r for r in records if r["sha256"] == sha256]
            assert record["status"] == "downloaded", (hour, record)
            assert record["mime_type"]
            bundle = json.loads(
                stored(tmp_path / "storage", "livehunt_stix_bundles", hour).read_bytes()
            )
            assert any(
                o["type"] == "artifact" and o["hashes"]["SHA-256"] == sha256
                for o in bundle["objects"]
            )


def metadata_by_window(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, dict[str, Any]]:
    return {
        str(e.partition): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey(asset)
    }


def test_vt_calls_are_counted_on_every_window_they_serve(
    dagster_instance: dg.DagsterInstance,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    """A ruleset fetched once for a 6-window run shows on each window that uses it; the run's
    real spend is beside it, once per step, and is what the summary adds up."""
    hours = range(6)
    cap = LivehuntOptions().artifact_max_bytes
    result = run(dagster_instance, livehunt_resources(), hours[0], hours[-1])
    assert result.success
    rulesets = metadata_by_window(result, "livehunt_rulesets")
    artifacts = metadata_by_window(result, "livehunt_artifacts")
    run_rulesets = vt_emulator.count("hunting_ruleset")
    for hour in hours:
        frame = filter_notifications(in_window(vt_corpus, hour), LivehuntOptions())
        kept = frame[frame["kept"]]
        named = {r for ids in kept["ruleset_ids"].dropna() for r in ids.split(",") if r}
        meta = rulesets[partition_key(hour)]
        assert meta["rulesets"] + meta.get("missing_rulesets", 0) == len(named) > 0
        assert meta["vt_calls"] == len(named), hour  # was 0 on all but the first user
        calls = meta["vt_calls_by_endpoint"]
        assert table_counts(calls, "window") == {"hunting_ruleset": len(named)}
        assert table_counts(calls, "run") == {"hunting_ruleset": run_rulesets}
        assert meta["run_vt_calls"] == run_rulesets
        files = set(kept[kept["object_type"] == "file"]["subject"])
        downloadable = {s for s in files if vt_corpus.files[s]["attributes"]["size"] <= cap}
        downloads = artifacts[partition_key(hour)]["vt_calls_by_endpoint"]
        assert table_counts(downloads, "window") == {"file_download": len(downloadable)}
    # a ruleset named in several windows was fetched once: the windows' sum exceeds the spend
    assert sum(m["vt_calls"] for m in rulesets.values()) > run_rulesets
    assert livehunt_totals(result)["vt_calls_by_endpoint"] == {
        endpoint: vt_emulator.count(endpoint)
        for endpoint in ("ioc_stream", "hunting_ruleset", "file_download")
    }


def test_what_the_ui_plots_is_what_an_operator_watches(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory
) -> None:
    """The UI plots every numeric entry: each asset has a few, the watched ones; breakdowns
    are tables (never JSON), usually-zero counts only appear when they happened, and the
    steps that call no VT have no VT entries."""
    result = run(dagster_instance, livehunt_resources(), HOUR)
    numeric = (dg.IntMetadataValue, dg.FloatMetadataValue)
    plotted = {
        event.asset_key.to_user_string(): sorted(
            name
            for name, value in event.materialization.metadata.items()
            if isinstance(value, numeric)
        )
        for event in result.get_asset_materialization_events()
    }
    assert plotted == {
        "livehunt_notifications": sorted(
            ["notifications", "notifications_new", "notifications_read", "vt_calls", "run_vt_calls"]
        ),
        "livehunt_files": ["dropped", "kept", "notifications"],
        "livehunt_rulesets": ["rulesets", "run_vt_calls", "vt_calls"],
        "livehunt_artifacts": ["artifact_bytes", "artifacts", "run_vt_calls", "vt_calls"],
        "livehunt_file_relations": [],  # nothing without VIRUSTOTAL_..._FILE_RELATIONSHIPS
        "livehunt_stix_bundles": ["stix_objects"],
    }
    for event in result.get_asset_materialization_events():
        for name, value in event.materialization.metadata.items():
            assert not isinstance(value, dg.JsonMetadataValue), (event.asset_key, name)
    files = materialization_metadata(result, "livehunt_files")
    reasons = table_counts(files["dropped_by_reason"])
    assert sum(reasons.values()) == files["dropped"] > 0 and all(reasons.values())
    artifacts = materialization_metadata(result, "livehunt_artifacts")
    statuses = table_counts(artifacts["artifacts_by_status"])
    assert statuses["downloaded"] > 0 and all(statuses.values())
    notifications = materialization_metadata(result, "livehunt_notifications")
    types = table_counts(notifications["notifications_by_type"])
    assert sum(types.values()) == notifications["notifications"]
    bundles = materialization_metadata(result, "livehunt_stix_bundles")
    objects = table_counts(bundles["stix_objects_by_type"])
    assert sum(objects.values()) == bundles["stix_objects"]
    assert table_counts(bundles["mapping"])["notifications_mapped"] == files["kept"]


def test_a_window_without_sample_downloads_plots_no_sample_figures(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory
) -> None:
    """With UPLOAD_ARTIFACT off, 0 samples is not a figure: the window says why instead."""
    result = run(dagster_instance, livehunt_resources(upload_artifact=False), HOUR)
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_artifacts")
    )
    metadata = event.materialization.metadata
    assert metadata["samples"].value == "not downloaded: UPLOAD_ARTIFACT is off"
    assert not any(isinstance(v, dg.IntMetadataValue) for v in metadata.values())
