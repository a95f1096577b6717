"""Enrichment on VirusTotal's own reports: old (2021-2022), fields missing, no GTI.

The VT emulator serves the captured reports of `vt_pipeline_tests/fixtures/vt_real_reports`
exactly as VirusTotal sent them, to a key that is premium but not licensed for Google Threat
Intelligence. A file, an IPv4, a domain and a URL are asked for in the OpenCTI emulator, the
sensor turns the requests into a run (the daemon's part done by hand), the job answers them;
then the same entities are asked for again, later.
"""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.keys import ApiKey
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID, OpenCTIResource
from vt_pipeline.storage.store import StorageResource
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.fixtures.vt_reports import (
    REAL_DOMAIN,
    REAL_FILE,
    REAL_IPV4,
    REAL_URL,
    REAL_URL_ID,
    captured,
    serve_reports,
)

pytestmark = pytest.mark.integration

KEY = "premium-without-gti"


@pytest.fixture
def real_vt() -> Iterator[VirusTotalEmulator]:
    with serve_reports(api_keys={KEY: ApiKey(premium=True, gti=False)}) as emulator:
        yield emulator


def ratio(attributes: dict[str, Any]) -> int:
    stats = attributes["last_analysis_stats"]
    return round(
        100 * stats["malicious"] / (stats["malicious"] + stats["harmless"] + stats["undetected"])
    )


def test_old_real_reports_give_valid_indicators_and_re_enrichment_adds_nothing(
    real_vt: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    dagster_instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    cti = OpenCTIResource(url=opencti.url, token=opencti.token, work_timeout_seconds=30)
    with cti.connector("enrichment"):
        pass  # registered: OpenCTI can send it requests
    resources = {
        "virustotal": VirusTotalResource(
            api_key=KEY, api_url=real_vt.url, backoff_base_seconds=0.01, max_attempts=3
        ),
        "opencti": cti,
        # The IPv4 and the domain have 4 and 6 detections: Indicators for every type here.
        "enrichment_settings": EnrichmentSettings(
            ip_indicator_create_positives=1,
            domain_indicator_create_positives=1,
            url_indicator_create_positives=1,
            lookup_cache_hours=0,  # the second round asks VirusTotal again
        ),
        "storage": StorageResource(base_dir=str(tmp_path / "storage")),
    }
    entities = {
        ("files", REAL_FILE): opencti.create_observable("StixFile", hashes={"SHA-256": REAL_FILE}),
        ("ip_addresses", REAL_IPV4): opencti.create_observable("IPv4-Addr", REAL_IPV4),
        ("domains", REAL_DOMAIN): opencti.create_observable("Domain-Name", REAL_DOMAIN),
        ("urls", REAL_URL_ID): opencti.create_observable("Url", REAL_URL),
    }
    cursor: str | None = None

    def enrich_all() -> datetime:
        """One round: every entity asked for, the sensor's run, the run, the works complete."""
        nonlocal cursor
        works = [opencti.ask_enrichment(e, ENRICHMENT_CONNECTOR_ID) for e in entities.values()]
        asked = datetime.now(UTC)
        context = dg.build_sensor_context(
            instance=dagster_instance,
            cursor=cursor,
            resources={"opencti": cti},
            definitions=dg.Definitions.merge(enrichment_defs, dg.Definitions(resources=resources)),
        )
        tick = opencti_enrichment_sensor.evaluate_tick(context)
        (run_request,) = tick.run_requests or []
        cursor = tick.cursor
        result = vt_enrichment_job.execute_in_process(
            run_config=run_request.run_config,
            resources=resources,
            instance=dagster_instance,
            tags={**run_request.tags, "dagster/run_key": run_request.run_key or ""},
        )
        assert result.success
        for work_id in works:
            work = opencti.wait_for_work(work_id, timeout=30)
            assert work.status == "complete" and not work.in_error, work.summary()
        return asked

    first_asked = enrich_all()
    now = datetime.now(UTC)
    first: dict[str, tuple[str, str]] = {}
    for (collection, object_id), entity in entities.items():
        attributes = captured(collection, object_id)["attributes"]
        assert "gti_assessment" not in attributes
        assert opencti.score_of(entity) == ratio(attributes), collection  # no GTI: the ratio
        [indicator] = opencti.indicators_based_on(entity)
        valid_from = datetime.fromisoformat(indicator["valid_from"].replace("Z", "+00:00"))
        valid_until = datetime.fromisoformat(indicator["valid_until"].replace("Z", "+00:00"))
        assert valid_from <= now < valid_until, (collection, indicator)  # valid, not born expired
        assert (valid_until - valid_from).total_seconds() == 2880 * 60
        assert first_asked.replace(microsecond=0) <= valid_from <= now  # from the request
        first[collection] = (indicator["id"], indicator["valid_until"])
    notes = {key: len(opencti.notes_about(e)) for key, e in entities.items()}
    assert all(notes.values())

    enrich_all()  # later, the same entities again: the same analyses on VirusTotal
    for (collection, object_id), entity in entities.items():
        [indicator] = opencti.indicators_based_on(entity)  # no second Indicator
        assert indicator["id"] == first[collection][0]
        assert indicator["valid_until"] > first[collection][1]  # re-confirmed: validity moves on
        assert len(opencti.notes_about(entity)) == notes[collection, object_id]  # no new note
        assert opencti.score_of(entity) == ratio(captured(collection, object_id)["attributes"])
