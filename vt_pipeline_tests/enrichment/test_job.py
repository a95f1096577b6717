"""End to end: OpenCTI's enrichment requests answered by `vt_enrichment_job`.

The OpenCTI emulator publishes the requests on the enrichment connector's listen queue (real
RabbitMQ), the test reads them as the sensor does (`parse_request`), the job runs in process
against the VirusTotal emulator and sends its bundles through real pycti; the assertions read
what OpenCTI then holds and each work's status.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from vt import url_id

from vt_pipeline.emulators.opencti.amqp import listen_queue
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.rabbitmq import RabbitMQ
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.scaled_clock import ScaledClockVirusTotalResource
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.enrichment.definitions import defs as enrichment_defs
from vt_pipeline.enrichment.job import vt_enrichment_job
from vt_pipeline.enrichment.requests import (
    ENRICHMENT_JOB,
    ENRICHMENT_OP,
    EnrichmentRequest,
    enrichment_run_config,
    parse_request,
)
from vt_pipeline.enrichment.sensor import opencti_enrichment_sensor
from vt_pipeline.opencti.resource import ENRICHMENT_CONNECTOR_ID, OpenCTIResource
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.virustotal.budget import window
from vt_pipeline_tests.conftest import PREMIUM_KEY, take

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

Enrich = Callable[..., tuple[dg.ExecuteInProcessResult, list[EnrichmentRequest]]]


def malicious_file(corpus: Corpus, minimum: int = 10) -> str:
    """A corpus file VT flags with at least `minimum` engines and crowdsourced YARA results."""
    return next(
        sha256
        for sha256, obj in sorted(corpus.files.items())
        if obj["attributes"]["last_analysis_stats"]["malicious"] >= minimum
        and obj["attributes"].get("crowdsourced_yara_results")
    )


def vt_score(attributes: dict[str, Any]) -> int:
    gti = ((attributes.get("gti_assessment") or {}).get("threat_score") or {}).get("value")
    if gti:
        return int(gti)
    stats = attributes["last_analysis_stats"]
    total = stats["malicious"] + stats["harmless"] + stats["undetected"]
    return round(100 * stats["malicious"] / total)


@pytest.fixture
def enrich(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> Enrich:
    """Ask OpenCTI to enrich entities, run the job on the requests, wait for the works."""

    def run(
        *entity_ids: str,
        requests: list[EnrichmentRequest] | None = None,
        virustotal: dict[str, Any] | None = None,
        **settings: Any,
    ) -> tuple[dg.ExecuteInProcessResult, list[EnrichmentRequest]]:
        for entity_id in entity_ids:
            opencti.ask_enrichment(entity_id, ENRICHMENT_CONNECTOR_ID)
        bodies = take(rabbitmq, listen_queue(ENRICHMENT_CONNECTOR_ID))
        requests = [parse_request(body) for body in bodies] + (requests or [])
        result = vt_enrichment_job.execute_in_process(
            run_config=enrichment_run_config(requests),
            resources=job_resources(virustotal, **settings),
            instance=dagster_instance,
            raise_on_error=False,
        )
        for request in requests:
            if request.work_id:
                opencti.wait_for_work(request.work_id, timeout=20)
        return result, requests

    return run


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    event = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT")
    return {k: v.value for k, v in event.step_output_data.metadata.items()}


def rows(result: dg.ExecuteInProcessResult) -> dict[str, dict[str, Any]]:
    table = metadata(result)["requests"]
    return {r.data["request_id"]: r.data for r in table.records}


def work_message(opencti: OpenCTIEmulator, work_id: str | None) -> tuple[str, bool, str]:
    assert work_id
    work = opencti.wait_for_work(work_id, timeout=20)
    summary = work.summary()
    messages = " | ".join(str(m) for m in summary.get("messages") or [])
    errors = " | ".join(str(m) for m in summary.get("errors") or [])
    return summary["status"], bool(work.in_error), messages + " " + errors


def stored(tmp_path: Path, object_type: str, object_id: str) -> dict[str, Any]:
    """The VT response the job stored (and then used) for an object."""
    found = ResponseStore(tmp_path / "storage").latest(object_type, object_id)
    assert found is not None, f"no stored {object_type} {object_id}"
    return found.body["data"]["attributes"]


def test_one_entity_of_each_type_is_enriched(
    enrich: Enrich,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    tmp_path: Path,
) -> None:
    targets = vt_corpus.targets()
    ids = {
        "StixFile": opencti.create_observable(
            "StixFile", hashes={"SHA-256": targets.yara_file}, markings=["TLP:GREEN"], score=5
        ),
        "Artifact": opencti.create_artifact(
            targets.unknown_file_content, "unseen.exe", markings=["TLP:CLEAR"]
        ),
        "IPv4-Addr": opencti.create_observable("IPv4-Addr", targets.ip),
        "Domain-Name": opencti.create_observable("Domain-Name", targets.domain),
        "Hostname": opencti.create_observable("Hostname", targets.hostname),
        "Url": opencti.create_observable("Url", targets.url),
        "unseen Url": opencti.create_observable("Url", targets.unknown_url),
        "Indicator": opencti.create_indicator(
            f"[domain-name:value = '{targets.domain}' OR "
            f"file:hashes.'SHA-256' = '{targets.malicious_file}']",
            observable_values=[
                {"type": "Domain-Name", "value": targets.domain},
                {
                    "type": "StixFile",
                    "value": targets.malicious_file,
                    "hashes": {"SHA-256": targets.malicious_file},
                },
            ],
            name=targets.domain,
        ),
    }
    result, requests = enrich(
        *ids.values(), file_import_yara=True, file_indicator_create_positives=1
    )
    assert result.success, result.all_events
    table = rows(result)
    assert len(table) == 8 and {r["outcome"] for r in table.values()} == {"enriched"}
    for request in requests:
        status, in_error, message = work_message(opencti, request.work_id)
        assert status == "complete" and not in_error, message
        assert "VirusTotal enrichment of" in message

    # StixFile: score, note, indicator valid for the configured minutes, YARA, reference
    file_id = ids["StixFile"]
    assert opencti.score_of(file_id) == vt_score(stored(tmp_path, "file", targets.yara_file))
    assert opencti.notes_about(file_id)
    (indicator,) = opencti.indicators_based_on(file_id)
    valid_from = datetime.fromisoformat(indicator["valid_from"].replace("Z", "+00:00"))
    valid_until = datetime.fromisoformat(indicator["valid_until"].replace("Z", "+00:00"))
    assert (valid_until - valid_from).total_seconds() == 2880 * 60
    assert targets.yara_file in indicator["pattern"]
    yara = [e for e in opencti.objects("Indicator") if e.get("pattern_type") == "yara"]
    assert yara
    rulesets = {  # each fetched once in the run, though two requests' files match some
        r["ruleset_id"]
        for sha256 in (targets.yara_file, targets.malicious_file)
        for r in stored(tmp_path, "file", sha256).get("crowdsourced_yara_results") or []
    }
    assert vt_emulator.count("yara_ruleset") == len(rulesets)
    refs = opencti.external_references_of(file_id)
    assert any(targets.yara_file in str(r.get("url")) for r in refs)
    assert opencti.labels_of(file_id)  # VT's tags

    # Artifact unseen by VT: its file read from OpenCTI, uploaded, analysed, then enriched
    assert vt_emulator.count("file_upload") == 1
    sha256 = hashlib.sha256(targets.unknown_file_content).hexdigest()
    assert opencti.score_of(ids["Artifact"]) == vt_score(stored(tmp_path, "file", sha256))

    # IPv4: AS (belongs-to) and a named country (located-at)
    (system,) = opencti.related(ids["IPv4-Addr"], "belongs-to")
    assert system["type"] == "autonomous-system"
    (country,) = opencti.related(ids["IPv4-Addr"], "located-at")
    assert country["type"] == "location" and country.get("name")
    # Domain / Hostname: A records as IPv4-Addr (resolves-to)
    for key, name in (("Domain-Name", targets.domain), ("Hostname", targets.hostname)):
        resolved = opencti.related(ids[key], "resolves-to")
        records = stored(tmp_path, "domain", name)["last_dns_records"]
        assert sorted(e["value"] for e in resolved) == sorted(
            r["value"] for r in records if r["type"] == "A"
        )
    # Url: looked up by VT's URL id (base64url, no padding); an unseen one submitted first
    assert opencti.score_of(ids["Url"]) == vt_score(stored(tmp_path, "url", url_id(targets.url)))
    assert vt_emulator.count("url_submit") == 1
    assert opencti.score_of(ids["unseen Url"]) is not None
    # Indicator: each value enriched as its observable (based-on from the indicator), and one
    # score for the indicator: the most dangerous value's
    observables = opencti.related(ids["Indicator"], "based-on")
    assert sorted(o["type"] for o in observables) == ["domain-name", "file"]
    assert opencti.score_of(ids["Indicator"]) == max(
        vt_score(stored(tmp_path, "domain", targets.domain)),
        vt_score(stored(tmp_path, "file", targets.malicious_file)),
    )

    totals = metadata(result)
    assert totals["requests_enriched"] == 8 and totals["requests_failed"] == 0
    assert all(r["vt_calls"] + r["cache_hits"] >= 1 for r in table.values())
    # overall_quotas (read by the budget) is not a call VT counts, nor do we
    assert totals["vt_calls"] == sum(
        vt_emulator.count(e) for e in vt_emulator.stats() if e != "overall_quotas"
    )


def test_the_gti_score_comes_back_and_wins_over_the_ratio(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    """Only requests with VT's x-tool header get the GTI assessment: vt_pipeline sends it."""
    targets = vt_corpus.targets()
    gti, ratio_only = (
        opencti.create_observable("StixFile", hashes={"SHA-256": targets.file_gti}),
        opencti.create_observable("StixFile", hashes={"SHA-256": targets.file_no_gti}),
    )
    result, _ = enrich(gti, ratio_only)
    assert result.success
    gti_attributes = stored(tmp_path, "file", targets.file_gti)
    threat_score = gti_attributes["gti_assessment"]["threat_score"]["value"]
    assert opencti.score_of(gti) == threat_score
    stats = gti_attributes["last_analysis_stats"]
    ratio = round(
        100 * stats["malicious"] / (stats["malicious"] + stats["harmless"] + stats["undetected"])
    )
    assert threat_score != ratio  # the test tells the two apart
    assert opencti.score_of(ratio_only) == vt_score(stored(tmp_path, "file", targets.file_no_gti))


def test_refusals_end_their_work_in_error_and_spare_their_batch_mates(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, vt_emulator: VirusTotalEmulator
) -> None:
    domain = sorted(vt_corpus.domains)[2]
    ids = {
        "red": opencti.create_observable(
            "Domain-Name", domain, markings=["TLP:CLEAR", "TLP:RED", "TLP:GREEN"]
        ),
        "unknown_to_vt": opencti.create_observable("StixFile", hashes={"SHA-256": "ab" * 32}),
        "no_hash": opencti.create_observable("StixFile", name="nohash.exe"),
        "too_big": opencti.create_artifact(b"MZ" + os.urandom(5000), "big.exe"),
        "upload_off_url": opencti.create_observable("Url", "http://never.example/x"),
        "no_file": opencti.create_artifact(b"MZ" + os.urandom(64), "gone.exe", with_file=False),
        "fine": opencti.create_observable("IPv4-Addr", sorted(vt_corpus.ip_addresses)[1]),
    }
    unknown_type = EnrichmentRequest(
        request_id="work-unknown-type", entity_id=ids["fine"], entity_type="Malware"
    )
    result, requests = enrich(
        *ids.values(),
        requests=[unknown_type],
        virustotal={"max_upload_bytes": 4096},
        url_upload_unseen=False,
    )
    assert not result.success  # the run shows failed, so it can be re-executed
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "7 of 8 enrichment request(s) failed" in str(failure.step_failure_data.user_failure_data)
    by_entity = {r.entity_id: r for r in requests if r.work_id}
    expected = {
        "red": "is marked TLP:RED, above VIRUSTOTAL_MAX_TLP=TLP:AMBER",
        "unknown_to_vt": "VirusTotal has no record of file " + "ab" * 32,
        "no_hash": "has no SHA-256, SHA-1 or MD5 hash",
        "too_big": "above VirusTotal's upload limit of 4096 bytes",
        "upload_off_url": "VIRUSTOTAL_URL_UPLOAD_UNSEEN is off",
        "no_file": "the Artifact holds no file to upload",
    }
    for key, text in expected.items():
        status, in_error, message = work_message(opencti, by_entity[ids[key]].work_id)
        assert in_error and text in message, (key, message)
        assert PREMIUM_KEY not in message and opencti.token not in message
    status, in_error, message = work_message(opencti, by_entity[ids["fine"]].work_id)
    assert status == "complete" and not in_error, message
    assert opencti.score_of(ids["fine"]) is not None
    table = rows(result)
    assert table["work-unknown-type"]["outcome"] == "failed"
    messages = metadata(result)["messages"].splitlines()
    assert any(
        line.startswith("- work-unknown-type, failed:")
        and "does not support entities of type Malware" in line
        for line in messages
    )
    assert opencti.score_of(ids["red"]) is None  # nothing sent for the refused entity
    assert vt_emulator.count("domain") == 0  # the TLP:RED domain never reached VirusTotal
    assert vt_emulator.count("file_upload") == 0 and vt_emulator.count("url_submit") == 0


def test_re_enrichment_adds_no_note_and_the_cache_saves_the_quota(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, vt_emulator: VirusTotalEmulator
) -> None:
    entity = opencti.create_observable("StixFile", hashes={"SHA-256": malicious_file(vt_corpus)})
    first, _ = enrich(entity)
    assert first.success
    notes = opencti.notes_about(entity)
    assert len(notes) >= 1
    calls = vt_emulator.count("file")
    assert calls == 1

    second, _ = enrich(entity)
    assert second.success
    assert vt_emulator.count("file") == calls  # the stored response was reused
    (row,) = rows(second).values()
    assert (row["type"], row["outcome"]) == ("StixFile", "enriched")
    assert metadata(second)["kind"] == "enrichment clicks"
    assert row["cache_hits"] == 1 and row["vt_calls"] == 0
    # The value once, in full, in its own cell; the detail does not repeat it.
    # Short cells (the UI breaks words to fit a wide table): the hash cut, the work's short id
    assert row["entity"] == malicious_file(vt_corpus)[:16] + "…"
    assert row["request_id"].startswith("work ") and len(row["request_id"]) == 13
    (message,) = metadata(second)["messages"].splitlines()
    assert message.startswith(f"- {row['request_id']}, enriched: VirusTotal enrichment of")
    assert "cache, no quota spent" in message
    assert len(opencti.notes_about(entity)) == len(notes)  # same analysis: no new note

    third, _ = enrich(entity, lookup_cache_hours=0)  # cache off: VT asked again, same analysis
    assert third.success and vt_emulator.count("file") == calls + 1
    assert len(opencti.notes_about(entity)) == len(notes)


def test_a_429_burst_still_ends_in_success_with_the_same_result(
    enrich: Enrich,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
) -> None:
    domain = sorted(vt_corpus.domains)[3]
    calm = opencti.create_observable("Domain-Name", domain)
    result, _ = enrich(calm, lookup_cache_hours=0)
    assert result.success
    expected = (opencti.score_of(calm), len(opencti.related(calm, "resolves-to")))

    vt_emulator.set_faults("domain:429:1.0:4")
    result, requests = enrich(calm, lookup_cache_hours=0)
    assert result.success
    assert vt_emulator.count("domain", 429) == 4
    status, in_error, text = work_message(opencti, requests[0].work_id)
    assert status == "complete" and not in_error
    assert "VirusTotal asked us to slow down" in text and "retrying at" in text, text
    assert (opencti.score_of(calm), len(opencti.related(calm, "resolves-to"))) == expected


def test_a_vt_answer_that_keeps_failing_ends_its_request_in_time_and_spares_the_others(
    enrich: Enrich,
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
) -> None:
    """Every URL lookup answers 500: the URL's work ends in error once the retry deadline has
    passed, saying what kept failing, with its waits on the work meanwhile; the domain of the
    same batch is enriched."""
    targets = vt_corpus.targets()
    url = opencti.create_observable("Url", targets.url)
    domain = opencti.create_observable("Domain-Name", targets.domain)
    vt_emulator.set_faults("url:500:1.0")
    started = time.monotonic()
    result, requests = enrich(
        url,
        domain,
        lookup_cache_hours=0,
        virustotal={"retry_deadline_seconds": 3.0, "max_attempts": 1000},
    )
    assert not result.success
    assert time.monotonic() - started < 60
    by_entity = {r.entity_id: r for r in requests}
    status, in_error, text = work_message(opencti, by_entity[url].work_id)
    assert status == "complete" and in_error
    assert "kept failing" in text and "InternalError" in text and "retrying at" in text, text
    status, in_error, text = work_message(opencti, by_entity[domain].work_id)
    assert status == "complete" and not in_error, text


def test_a_playbook_request_is_answered_with_the_bundle(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus
) -> None:
    ip = sorted(vt_corpus.ip_addresses)[2]
    entity = opencti.create_observable("IPv4-Addr", ip, markings=["TLP:GREEN"])
    execution = opencti.ask_playbook_enrichment(entity, ENRICHMENT_CONNECTOR_ID)
    out_of_scope = opencti.create_observable("Email-Addr", "someone@example.org")
    passed = opencti.ask_playbook_enrichment(out_of_scope, ENRICHMENT_CONNECTOR_ID)
    result, requests = enrich()
    assert result.success, result.all_events
    assert {r.kind for r in requests} == {"playbook"}
    (answer,) = opencti.playbook_results(execution)
    types = {o["type"] for o in answer["objects"]}
    assert {"ipv4-addr", "autonomous-system", "location", "relationship"} <= types
    edited = next(o for o in answer["objects"] if o["id"] == entity)
    assert edited.get("x_opencti_score") is not None or "extensions" in edited
    # Out of scope: the incoming bundle goes on unchanged instead of failing the playbook
    incoming = next(r.bundle for r in requests if r.entity_id == out_of_scope)
    assert opencti.playbook_results(passed) == [incoming]
    outcomes = sorted(r["outcome"] for r in rows(result).values())
    assert outcomes == ["enriched", "passed through"]


def test_a_failed_run_is_re_executed_with_the_same_requests(
    enrich: Enrich, opencti: OpenCTIEmulator, dagster_instance: dg.DagsterInstance
) -> None:
    entity = opencti.create_observable("StixFile", hashes={"MD5": hashlib.md5(b"x").hexdigest()})
    result, requests = enrich(entity)
    assert not result.success
    run = dagster_instance.get_run_by_id(result.run_id)
    assert run is not None
    config = run.run_config["ops"][ENRICHMENT_OP]["config"]["requests"]
    assert [EnrichmentRequest.from_config(c) for c in config] == requests


def test_clicks_answered_through_the_sensor(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    cti_resource: OpenCTIResource,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    """As a deployment runs it: sensor tick -> run (the daemon's part by hand) -> tick acks."""
    targets = vt_corpus.targets()
    entities = [
        opencti.create_observable("Domain-Name", targets.domain),
        opencti.create_observable("IPv4-Addr", targets.ip),
    ]
    works = [opencti.ask_enrichment(e, ENRICHMENT_CONNECTOR_ID) for e in entities]

    def tick(cursor: str | None) -> dg.SensorExecutionData:
        context = dg.build_sensor_context(
            instance=dagster_instance,
            cursor=cursor,
            resources={"opencti": cti_resource},
            definitions=dg.Definitions.merge(
                enrichment_defs, dg.Definitions(resources=job_resources())
            ),
        )
        return opencti_enrichment_sensor.evaluate_tick(context)

    first = tick(None)
    (run_request,) = first.run_requests or []
    result = vt_enrichment_job.execute_in_process(
        run_config=run_request.run_config,
        resources=job_resources(),
        instance=dagster_instance,
        tags={**run_request.tags, "dagster/run_key": run_request.run_key},
    )
    assert result.success
    assert not tick(first.cursor).run_requests  # acknowledged now that the run exists
    for work_id in works:
        status, in_error, message = work_message(opencti, work_id)
        assert status == "complete" and not in_error, message
    assert all(opencti.score_of(e) is not None for e in entities)
    assert opencti.related(entities[0], "resolves-to") and opencti.related(
        entities[1], "belongs-to"
    )


def test_the_code_location_runs_the_sensor_and_the_job() -> None:
    from vt_pipeline.definitions import defs

    job = defs.resolve_job_def(ENRICHMENT_JOB)
    assert job.graph.node_named(ENRICHMENT_OP).definition.pool == "virustotal"
    sensor = defs.resolve_sensor_def("opencti_enrichment_sensor")
    assert sensor.job_name == ENRICHMENT_JOB
    assert "enrichment_settings" in defs.resources


def test_a_failed_playbook_step_passes_its_bundle_on(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, vt_emulator: VirusTotalEmulator
) -> None:
    """A playbook has no work to fail: the step answers with the bundle unchanged, the run fails."""
    red = opencti.create_observable("IPv4-Addr", vt_corpus.targets().ip, markings=["TLP:RED"])
    execution = opencti.ask_playbook_enrichment(red, ENRICHMENT_CONNECTOR_ID)
    result, (request,) = enrich()
    assert not result.success
    assert opencti.playbook_results(execution) == [request.bundle]
    (row,) = rows(result).values()
    assert row["outcome"] == "failed"
    assert "above VIRUSTOTAL\\_MAX\\_TLP" in metadata(result)["messages"]
    assert vt_emulator.count("ip_address") == 0


def test_the_demo_enriches_one_entity_of_each_type(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's demo command: one click per type, answered by the sensor and the job."""
    from vt_pipeline.cli import DEMO_ENTITIES, demo_enrichment

    assert demo_enrichment(dagster_instance, opencti, vt_corpus, job_resources())
    shown = capsys.readouterr().out
    assert [line.split()[0] for line in shown.splitlines() if "work complete" in line] == [
        entity_type for entity_type, _ in DEMO_ENTITIES
    ]
    assert len(opencti.works()) == len(DEMO_ENTITIES)


def test_a_spent_day_puts_the_work_in_error_saying_when_to_retry(
    enrich: Enrich, opencti: OpenCTIEmulator, vt_corpus: Corpus, tmp_path: Path
) -> None:
    entity = opencti.create_observable("Domain-Name", sorted(vt_corpus.domains)[4])
    noon = window("day", time.time())[0] + 43200  # far from the reset, whenever this runs
    budget: dict[str, Any] = {
        "quota_per_day": 1,
        "budget_url": f"sqlite:///{tmp_path / 'budget.db'}",
        "budget_time_scale": 1.0,
        "budget_time_offset": noon - time.time(),
    }
    spent = ScaledClockVirusTotalResource(api_key=PREMIUM_KEY, **budget).budget()
    assert spent is not None
    asyncio.run(spent.acquire("livehunt"))  # another run spent the day

    result, requests = enrich(entity, virustotal=budget, lookup_cache_hours=0)
    assert not result.success
    status, in_error, message = work_message(opencti, requests[0].work_id)
    assert status == "complete" and in_error  # ended, in error: not processed successfully
    assert "daily quota spent" in message and "retry after 00:00 UTC" in message
    assert opencti.score_of(entity) is None  # nothing written as if enriched

    # Asked again once the budget allows: answered in full.
    result, requests = enrich(entity, virustotal={**budget, "quota_per_day": 0})
    assert result.success
    assert opencti.score_of(entity) is not None


def test_the_demo_driver_answers_with_the_deployments_whole_resource_set(
    opencti: OpenCTIEmulator,
    vt_corpus: Corpus,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    """`answer_enrichment_requests` (the demo's loop) with every resource the code location
    has, the IO manager included: a resource with a teardown must not break the sensor's
    context (it did once: the demo failed after Livehunt)."""
    from vt_pipeline.enrichment.summary import answer_enrichment_requests
    from vt_pipeline.storage.store import PartitionedFileIOManager

    entity = opencti.create_observable("Domain-Name", vt_corpus.targets().domain)
    work = opencti.ask_enrichment(entity, ENRICHMENT_CONNECTOR_ID)
    resources = {
        **job_resources(),
        "io_manager": PartitionedFileIOManager(base_dir=str(tmp_path / "storage")),
    }
    results = answer_enrichment_requests(dagster_instance, resources, expected=1)
    assert [r.success for r in results] == [True]
    status, in_error, message = work_message(opencti, work)
    assert status == "complete" and not in_error, message


def broker_down_during_send(
    rabbitmq: RabbitMQ, opencti: OpenCTIEmulator, work_id: str, down_seconds: float
) -> threading.Thread:
    """In a thread: once the job has marked the work received (it then waits on VirusTotal,
    slowed down by the test), stop RabbitMQ, and start it again `down_seconds` later; the
    bundle goes out while it is down."""

    def blip() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            work = opencti.work(work_id)
            if work is not None and work.received_time:
                break
            time.sleep(0.01)
        rabbitmq.restart(down_seconds=down_seconds)

    thread = threading.Thread(target=blip, daemon=True)
    thread.start()
    return thread


def test_a_broker_blip_while_sending_is_waited_out_in_the_same_work(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    job_resources: Callable[..., dict[str, Any]],
) -> None:
    """RabbitMQ restarts while the bundle is being sent: the send waits it out and goes into
    the same work, whose figures stay true, so it completes without an error. The wait is in
    the run's log (dagster.yaml hands vt_pipeline's Python loggers to Dagster)."""
    entity = opencti.create_observable("Domain-Name", vt_corpus.targets().domain)
    opencti.ask_enrichment(entity, ENRICHMENT_CONNECTOR_ID)
    [request] = [parse_request(b) for b in take(rabbitmq, listen_queue(ENRICHMENT_CONNECTOR_ID))]
    vt_emulator.set_latency(1500)
    python_logs = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())["python_logs"]
    with dg.instance_for_test(overrides={"python_logs": python_logs}) as instance:
        blip = broker_down_during_send(rabbitmq, opencti, request.work_id or "", down_seconds=3)
        result = vt_enrichment_job.execute_in_process(
            run_config=enrichment_run_config([request]),
            resources=job_resources(),
            instance=instance,
        )
        blip.join(60)
        assert result.success
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any(f"sending again into work {request.work_id}" in m for m in logged), logged[-5:]
    work = opencti.wait_for_work(request.work_id or "", timeout=60).summary()
    assert work["status"] == "complete" and not work["errors"], work
    assert work["expected"] == work["processed"] > 0
    assert opencti.score_of(entity) is not None


def test_a_broker_down_for_good_ends_the_work_in_error_with_the_reason(
    opencti: OpenCTIEmulator,
    rabbitmq: RabbitMQ,
    vt_corpus: Corpus,
    vt_emulator: VirusTotalEmulator,
    job_resources: Callable[..., dict[str, Any]],
    dagster_instance: dg.DagsterInstance,
) -> None:
    """Retries run out: the pieces never published are settled on the work with the reason, and
    the work ends (complete, in error) instead of staying in progress forever."""
    entity = opencti.create_observable("Domain-Name", vt_corpus.targets().domain)
    opencti.ask_enrichment(entity, ENRICHMENT_CONNECTOR_ID)
    [request] = [parse_request(b) for b in take(rabbitmq, listen_queue(ENRICHMENT_CONNECTOR_ID))]
    resources = job_resources()
    resources["opencti"] = OpenCTIResource(
        url=opencti.url,
        token=opencti.token,
        work_timeout_seconds=30,
        retry_attempts=2,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=0.2,
    )
    vt_emulator.set_latency(1500)
    blip = broker_down_during_send(rabbitmq, opencti, request.work_id or "", down_seconds=6)
    result = vt_enrichment_job.execute_in_process(
        run_config=enrichment_run_config([request]),
        resources=resources,
        instance=dagster_instance,
        raise_on_error=False,
    )
    blip.join(60)
    assert not result.success
    work = opencti.wait_for_work(request.work_id or "", timeout=60).summary()
    assert work["status"] == "complete", work
    assert work["expected"] == work["processed"] > 0
    assert any("RabbitMQ" in e and "gave up after 2 attempts" in e for e in work["errors"]), work
