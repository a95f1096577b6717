"""End to end: VT emulator -> Livehunt assets -> OpenCTI emulator (real pycti, real RabbitMQ)."""

import hashlib
import html
import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import dagster as dg
import pandas as pd
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.delivery import INCIDENT_ROWS, incident_table
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline_tests.conftest import (
    ResourcesFactory,
    materialize_hours,
    partition_key,
    stored,
    window,
)

pytestmark = pytest.mark.integration

HOUR = 2


def cti(emulator: OpenCTIEmulator, protocol: str = "amqp", **options: Any) -> OpenCTIResource:
    """OpenCTI through the emulator; retries fast (what is tested is that they happen)."""
    return OpenCTIResource(
        url=emulator.url,
        token=emulator.token,
        queue_protocol=protocol,
        **{
            "work_timeout_seconds": 30,
            "retry_attempts": 4,
            "retry_backoff_seconds": 0.05,
            "retry_backoff_max_seconds": 0.2,
            **options,
        },
    )


def deliver(
    instance: dg.DagsterInstance, resources: dict[str, Any], raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    return materialize_hours(instance, resources, HOUR, raise_on_error=raise_on_error, deliver=True)


def stored_bundle(base: Path) -> dict[str, Any]:
    return json.loads(stored(base, "livehunt_stix_bundles", HOUR).read_bytes())


def window_ids(corpus: Corpus, hour: int = HOUR) -> set[str]:
    lo, hi = window(hour)
    return {e.notification_id for e in corpus.stream if lo <= e.date < hi}


def delivery_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_opencti_delivery")
    )
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.parametrize("protocol", ["amqp", "api"])
def test_opencti_holds_the_window(
    protocol: str,
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    result = deliver(dagster_instance, livehunt_resources(opencti=cti(opencti, protocol)))
    assert result.success
    bundle = stored_bundle(tmp_path / "storage")
    sent: dict[str, int] = {}
    for obj in bundle["objects"]:
        sent[obj["type"]] = sent.get(obj["type"], 0) + 1

    # every object of the bundle is in OpenCTI, once
    for kind in ("incident", "file", "indicator", "url", "domain-name"):
        assert len(opencti.objects(kind)) == sent.get(kind, 0), kind
    assert len(opencti.relationships()) == sent["relationship"]
    for obj in bundle["objects"]:
        held = opencti.get(obj["id"])
        assert held is not None, obj["id"]
    # author and marking on what OpenCTI holds
    author = next(o for o in bundle["objects"] if o["type"] == "identity")
    marking = next(o for o in bundle["objects"] if o["type"] == "marking-definition")
    incident = opencti.objects("incident")[0]
    assert incident["created_by_ref"] == author["id"]
    assert marking["id"] in incident["object_marking_refs"]
    # samples: one uploaded file per Artifact of the bundle, bytes matching their hash
    artifacts = [o for o in bundle["objects"] if o["type"] == "artifact"]
    assert artifacts and len(opencti.artifacts()) == len(artifacts)
    for uploaded in opencti.artifacts():
        digest = hashlib.sha256(uploaded.data).hexdigest()
        held = opencti.find_by_hash("SHA-256", digest)
        assert held is not None and held["id"] in {a["id"] for a in artifacts}
        assert "/" not in uploaded.name and "\n" not in uploaded.name
    # the work is complete and the metadata says what happened
    meta = delivery_metadata(result)
    work = opencti.work(meta["work_id"])
    assert work is not None and work.status == "complete" and not work.errors
    assert meta["objects_sent"] == len(bundle["objects"])
    assert meta["artifacts_uploaded"] == len(artifacts)
    assert "notifications_deleted" not in meta  # delete_notification is off by default


def test_redelivery_duplicates_nothing_and_skips_held_samples(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    deliver(dagster_instance, livehunt_resources(opencti=cti(opencti)))
    before = opencti.counts()
    files_before = len(opencti.artifacts())
    downloads = vt_emulator.count("file_download")
    assert downloads > 0 and files_before > 0

    # a fresh storage (a new deployment, or a wiped disk): OpenCTI already has the samples,
    # so VT is not asked for them again and nothing is uploaded twice
    result = deliver(dagster_instance, livehunt_resources(tmp_path / "fresh", opencti=cti(opencti)))
    assert opencti.counts() == before
    assert len(opencti.artifacts()) == files_before
    assert vt_emulator.count("file_download") == downloads
    meta = delivery_metadata(result)
    assert meta["artifacts_uploaded"] == 0 and meta["artifacts_already_in_opencti"] == files_before
    records = json.loads(stored(tmp_path / "fresh", "livehunt_artifacts", HOUR).read_bytes())
    assert {r["status"] for r in records} <= {"in_opencti", "too_large"}
    assert stored_bundle(tmp_path / "fresh") == stored_bundle(tmp_path / "storage")


def test_notifications_are_deleted_only_after_opencti_accepted(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    resources = livehunt_resources(opencti=cti(opencti), delete_notification=True)
    opencti.set_outage(503)
    failed = deliver(dagster_instance, resources, raise_on_error=False)
    assert not failed.success
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE")
    assert "OpenCTI" in failure.step_failure_data.error.to_string()
    assert opencti.token not in failure.step_failure_data.error.to_string()
    assert vt_emulator.deleted_notifications == frozenset()
    assert vt_emulator.count("ioc_stream_delete") == 0

    opencti.clear_outage()  # OpenCTI is back: re-materializing completes the delivery
    result = deliver(dagster_instance, resources)
    assert result.success
    assert vt_emulator.deleted_notifications == window_ids(vt_corpus)
    assert delivery_metadata(result)["notifications_deleted"] == len(window_ids(vt_corpus))
    assert opencti.objects("incident")


def test_unconfigured_opencti_fails_delivery_clearly_but_not_ingestion(
    dagster_instance: dg.DagsterInstance, livehunt_resources: ResourcesFactory
) -> None:
    result = deliver(dagster_instance, livehunt_resources(), raise_on_error=False)
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert [e.step_key for e in failures] == ["livehunt_opencti_delivery"]
    assert "OPENCTI_URL" in failures[0].step_failure_data.error.to_string()


def test_re_reading_a_delivered_and_deleted_window_keeps_what_was_stored(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resources = livehunt_resources(opencti=cti(opencti), delete_notification=True)
    deliver(dagster_instance, resources)
    assert vt_emulator.deleted_notifications == window_ids(vt_corpus)  # VT lists none of them now
    base = tmp_path / "storage"
    notifications = stored(base, "livehunt_notifications", HOUR).read_bytes()
    files = pd.read_parquet(stored(base, "livehunt_files", HOUR, ".parquet"))
    bundle = stored(base, "livehunt_stix_bundles", HOUR).read_bytes()
    held = opencti.counts()

    result = deliver(dagster_instance, resources)  # the next schedule tick re-reads the window
    assert stored(base, "livehunt_notifications", HOUR).read_bytes() == notifications
    pd.testing.assert_frame_equal(
        pd.read_parquet(stored(base, "livehunt_files", HOUR, ".parquet")), files
    )
    assert stored(base, "livehunt_stix_bundles", HOUR).read_bytes() == bundle
    meta = next(
        {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_notifications")
    )
    assert meta["notifications_read"] == 0
    assert meta["notifications"] == len(window_ids(vt_corpus))
    assert meta["notifications_new"] == 0
    assert opencti.counts() == held  # re-delivered the same bundle: nothing new, nothing lost


def deliver_only(
    instance: dg.DagsterInstance, resources: dict[str, Any], raise_on_error: bool = True
) -> dg.ExecuteInProcessResult:
    """Only the delivery step of HOUR, from the stored bundle (upstream materialized before)."""
    from vt_pipeline.livehunt.assets import livehunt_assets
    from vt_pipeline.livehunt.delivery import livehunt_opencti_delivery

    return dg.materialize(
        [*livehunt_assets, livehunt_opencti_delivery],
        selection=[livehunt_opencti_delivery],
        instance=instance,
        resources=resources,
        partition_key=partition_key(HOUR),
        raise_on_error=raise_on_error,
    )


def window_works(emulator: OpenCTIEmulator) -> list[Any]:
    return [
        w
        for w in emulator.works()
        if w.name == f"VirusTotal Livehunt {partition_key(HOUR)} (vt_pipeline)"
    ]


def test_a_five_second_opencti_outage_during_delivery_is_waited_out(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    resources = livehunt_resources(
        opencti=cti(
            opencti, retry_attempts=12, retry_backoff_seconds=0.2, retry_backoff_max_seconds=1.0
        )
    )
    materialize_hours(dagster_instance, resources, HOUR)  # the bundle, stored
    opencti.set_outage(503, seconds=5)
    started = time.monotonic()
    result = deliver_only(dagster_instance, resources)
    assert result.success
    assert time.monotonic() - started >= 4  # it did wait the outage out
    meta = delivery_metadata(result)
    work = opencti.work(meta["work_id"])
    assert work is not None and work.status == "complete" and not work.errors
    assert opencti.objects("incident")


def test_a_failed_delivery_closes_its_work_in_error(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    resources = livehunt_resources(opencti=cti(opencti, work_timeout_seconds=1))
    materialize_hours(dagster_instance, resources, HOUR)
    opencti.platform.paused.set()  # OpenCTI's workers stop ingesting: the work never completes
    try:
        failed = deliver_only(dagster_instance, resources, raise_on_error=False)
    finally:
        opencti.platform.paused.clear()
    assert not failed.success
    [work] = window_works(opencti)
    assert work.processed_time is not None
    assert any("not complete after 1 s" in error["message"] for error in work.errors), work.errors


def test_the_next_delivery_closes_a_work_an_earlier_one_left_in_progress(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
) -> None:
    resource = cti(opencti)
    resources = livehunt_resources(opencti=resource)
    materialize_hours(dagster_instance, resources, HOUR)
    # what a run killed in the middle of a delivery leaves: a work created, never closed
    name = f"VirusTotal Livehunt {partition_key(HOUR)} (vt_pipeline)"
    with resource.connector() as connector:
        left = connector.initiate_work(name)
        live = connector.initiate_work(name)  # a delivery still running elsewhere: too recent
    opencti.work(left).timestamp = "2026-01-01T00:00:00.000Z"  # an hour ago and more

    result = deliver_only(dagster_instance, resources)
    assert delivery_metadata(result)["stale_works_closed"] == 1
    closed = opencti.work(left)
    assert closed.processed_time is not None
    assert "did not finish" in closed.errors[0]["message"]
    assert opencti.work(live).processed_time is None and not opencti.work(live).errors
    done = opencti.work(delivery_metadata(result)["work_id"])
    assert done.status == "complete" and not done.errors


def test_a_delivered_window_links_to_its_work_and_incidents_in_opencti(
    dagster_instance: dg.DagsterInstance,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
    tmp_path: Path,
) -> None:
    resource = cti(opencti)
    result = deliver(dagster_instance, livehunt_resources(opencti=resource))
    assert result.success
    event = next(
        e
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("livehunt_opencti_delivery")
    )
    metadata = event.materialization.metadata
    base = opencti.url.rstrip("/")
    assert metadata["opencti_work"] == dg.MetadataValue.url(
        f"{base}/dashboard/data/ingestion/connectors/{resource.connector_id}"
    )
    table = metadata["opencti_incidents"]
    assert isinstance(table, dg.MarkdownMetadataValue)
    incidents = [
        o for o in stored_bundle(tmp_path / "storage")["objects"] if o["type"] == "incident"
    ]
    assert incidents
    for incident in incidents[:INCIDENT_ROWS]:
        assert f"({base}/dashboard/id/{incident['id']})" in table.value.replace("<", "").replace(
            ">", ""
        )
        vt_report = incident["external_references"][0]["url"]
        assert vt_report.startswith("https://www.virustotal.com/gui/")
        assert quote(vt_report, safe=":/?&=#%@+,;~!$'*") in table.value
    # without deletion there is no VT call, and no VT figure to plot
    assert not any(name.startswith(("vt_", "run_vt_")) for name in metadata)
    assert "notifications_deleted" not in metadata

    # the links open what they name: the connector's page lists this window's work...
    page = fetch(metadata["opencti_work"].value)
    work = opencti.work(metadata["work_id"].value)
    assert work is not None and html.escape(work.name) in page and "complete" in page
    # ...and each Incident's link (OpenCTI resolves the STIX id) opens that Incident
    for link in re.findall(r"\[open\]\(<([^>]+)>\)", table.value)[:3]:
        page = fetch(link)
        assert (
            "Incident" in page and html.escape(opencti.get(link.rsplit("/", 1)[1])["name"]) in page
        )


def fetch(url: str) -> str:
    """A page as a browser gets it (no token): what a link in the Dagster UI opens."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200 and response.headers.get_content_type() == "text/html"
        return response.read().decode()


def test_the_emulator_answers_unknown_links_with_404(opencti: OpenCTIEmulator) -> None:
    for path in ("/dashboard/id/incident--nope", "/dashboard/data/ingestion/connectors/nope"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(opencti.url.rstrip("/") + path, timeout=10)
        assert caught.value.code == 404


def test_incident_table_escapes_what_virustotal_named() -> None:
    hostile = {
        "type": "incident",
        "id": "incident--00000000-0000-4000-8000-000000000000",
        "created": "2025-11-20T10:00:00.000Z",
        "name": "VT rule|x [click](https://evil.example) url=http://a.example/<b>",
        "external_references": [
            {"source_name": "VirusTotal", "url": "https://www.virustotal.com/gui/url/a b)c"}
        ],
    }
    table = incident_table("https://opencti.example", [hostile] * (INCIDENT_ROWS + 2))
    _header, _separator, row, *rest = table.split("\n")
    assert row.count("|") - row.count("\\|") == 4  # the name's pipe cannot add a column
    assert "[click](" not in row and "\\[click\\]\\(" in row  # no link VT could forge
    assert "<b>" not in row
    assert "(<https://www.virustotal.com/gui/url/a%20b%29c>)" in row
    assert rest[-1] == "2 more Incidents in this window."
    assert len([line for line in rest if line.startswith("| ")]) == INCIDENT_ROWS - 1
