"""Retrohunt jobs: the VT layer against the emulator, and the whole loop end to end - a YARA
Indicator labelled in the OpenCTI emulator starts a job on the VT emulator, the finished job
becomes a partition, its matches are delivered to OpenCTI, and a re-run adds nothing."""

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from vt_pipeline.config import ConfigError
from vt_pipeline.emulators.opencti.server import OpenCTIEmulator
from vt_pipeline.emulators.virustotal.corpus import Corpus
from vt_pipeline.emulators.virustotal.server import VirusTotalEmulator
from vt_pipeline.livehunt.retrohunt import (
    PARTITIONS_NAME,
    RetrohuntSettings,
    retrohunt_assets,
    retrohunt_sensor,
    retrohunt_stix_bundle_is_valid,
)
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIResource
from vt_pipeline.stix.validation import validate_bundle
from vt_pipeline.virustotal import retrohunt as rh
from vt_pipeline.virustotal.resource import VirusTotalResource
from vt_pipeline_tests.conftest import PREMIUM_KEY, ResourcesFactory

RULE = """rule vt_pipeline_retro_probe
{
    meta:
        description = "Retrohunt probe written in OpenCTI"
    strings:
        $a = "probe"
    condition:
        $a
}"""
TWO_RULES = RULE + '\nrule second_probe { strings: $b = "b" condition: $b }'


def vt(emulator: VirusTotalEmulator) -> VirusTotalResource:
    return VirusTotalResource(api_key=PREMIUM_KEY, api_url=emulator.url, quota_budget=False)


def call(resource: VirusTotalResource, work: Any) -> Any:
    async def main() -> Any:
        async with resource.session() as session:
            return await work(session)

    return asyncio.run(main())


# -- the VT layer ----------------------------------------------------------------------------


def test_jobs_and_matches_are_read_over_every_page(
    vt_emulator: VirusTotalEmulator, vt_corpus: Corpus
) -> None:
    files = sorted(vt_corpus.files)[:45]  # two pages of 40
    one = vt_emulator.api.retrohunt.add(RULE, files, created=1_790_000_000)
    two = vt_emulator.api.retrohunt.add(TWO_RULES, files[:3], created=1_790_000_100)
    running = vt_emulator.api.retrohunt.add(RULE, files[:2], run_seconds=3600)
    resource = vt(vt_emulator)

    matches = call(resource, lambda s: rh.matching_files(s, one))
    assert [m["id"] for m in matches] == files
    assert vt_emulator.count("retrohunt_matching_files") == 2
    finished = call(resource, lambda s: rh.retrohunt_jobs(s, rh.FINISHED))
    assert {j["id"] for j in finished} == {one, two}
    everything = call(resource, lambda s: rh.retrohunt_jobs(s))
    assert {j["id"]: rh.job_status(j) for j in everything}[running] in {"starting", "running"}

    job = call(resource, lambda s: rh.retrohunt_job(s, one))
    note = rh.match_as_notification(job, matches[0])
    context = note["context_attributes"]
    assert context["notification_id"] == f"{one}:{files[0]}"
    assert context["notification_date"] == job["attributes"]["finish_date"]
    assert context["hunting_info"] == {"rule_name": "vt_pipeline_retro_probe"}
    assert context["sources"] == [{"id": one, "label": ""}]
    assert note["attributes"] == matches[0]["attributes"]  # the file itself untouched
    # A job of two rules does not say which matched: no rule is guessed.
    job_two = call(resource, lambda s: rh.retrohunt_job(s, two))
    assert "hunting_info" not in rh.match_as_notification(job_two, matches[0])["context_attributes"]
    assert rh.match_as_notification(job, ["not", "a", "file"]) == ["not", "a", "file"]


def test_a_started_job_runs_then_finishes_with_its_matches(
    vt_emulator: VirusTotalEmulator,
) -> None:
    vt_emulator.api.retrohunt.run_seconds = 0.5
    resource = vt(vt_emulator)
    job = call(resource, lambda s: rh.start_retrohunt_job(s, RULE, "main", (1, 2), "a@b.c"))
    attrs = job["attributes"]
    assert attrs["status"] in {"starting", "running"} and attrs["rules"] == RULE
    assert attrs["time_range"] == {"start": 1, "end": 2}
    assert attrs["notification_email"] == "a@b.c"
    time.sleep(0.6)
    done = call(resource, lambda s: rh.retrohunt_job(s, job["id"]))
    assert rh.job_status(done) == rh.FINISHED and done["attributes"]["num_matches"] > 0
    assert rh.find_job_by_rules([done], "\n" + RULE + "\n")["id"] == job["id"]


def test_settings_refuse_a_bad_corpus_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="VIRUSTOTAL_RETROHUNT_CORPUS='everything'"):
        RetrohuntSettings.from_env({"VIRUSTOTAL_RETROHUNT_CORPUS": "everything"})
    settings = RetrohuntSettings.from_env(
        {"VIRUSTOTAL_RETROHUNT_CREATE_INCIDENT": "true", "VIRUSTOTAL_RETROHUNT_LABEL": "hunt"}
    )
    assert settings.create_incident and settings.label == "hunt"


# -- end to end ------------------------------------------------------------------------------


@pytest.fixture
def loop(
    vt_emulator: VirusTotalEmulator,
    opencti: OpenCTIEmulator,
    livehunt_resources: ResourcesFactory,
    dagster_instance: dg.DagsterInstance,
) -> Iterator["Loop"]:
    vt_emulator.api.retrohunt.run_seconds = 0.5
    yield Loop(vt_emulator, opencti, livehunt_resources, dagster_instance)


class Loop:
    """The sensor's ticks (applying their partitions as the daemon does) and the job's runs."""

    def __init__(
        self,
        vt_emulator: VirusTotalEmulator,
        opencti: OpenCTIEmulator,
        resources: ResourcesFactory,
        instance: dg.DagsterInstance,
    ) -> None:
        self.vt, self.opencti, self.instance = vt_emulator, opencti, instance
        cti = OpenCTIResource(
            url=opencti.url, token=opencti.token, queue_protocol="api", work_timeout_seconds=30
        )
        self.resources = {
            **resources(opencti=cti),
            "retrohunt_settings": RetrohuntSettings(),
        }
        self.cursor: str | None = None

    def tick(self) -> dg.SensorResult:
        context = dg.build_sensor_context(
            instance=self.instance,
            cursor=self.cursor,
            resources={k: self.resources[k] for k in ("virustotal", "opencti")}
            | {"retrohunt_settings": self.resources["retrohunt_settings"]},
        )
        result = retrohunt_sensor(context)
        assert isinstance(result, dg.SensorResult)
        for request in result.dynamic_partitions_requests or []:
            self.instance.add_dynamic_partitions(PARTITIONS_NAME, list(request.partition_keys))
        self.cursor = result.cursor
        return result

    def run(self, job_id: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*retrohunt_assets, retrohunt_stix_bundle_is_valid],
            instance=self.instance,
            resources=self.resources,
            partition_key=job_id,
        )


@pytest.mark.integration
def test_a_labelled_indicator_starts_one_job_whose_matches_reach_opencti_once(
    loop: Loop, tmp_path: Path
) -> None:
    indicator = loop.opencti.create_indicator(
        RULE, pattern_type="yara", name="probe", labels=["retrohunt"]
    )
    first = loop.tick()
    assert loop.vt.count("retrohunt_job_create") == 1
    assert not first.run_requests  # started, not finished yet
    started = json.loads(loop.cursor or "{}")["started"]
    (job_id,) = started.values()
    assert list(started) == [loop.opencti.get(indicator)["id"]]

    time.sleep(0.6)  # the emulator's job finishes
    second = loop.tick()
    assert [r.partition_key for r in second.run_requests] == [job_id]
    assert loop.instance.get_dynamic_partitions(PARTITIONS_NAME) == [job_id]
    assert loop.vt.count("retrohunt_job_create") == 1  # never started twice

    result = loop.run(job_id)
    assert result.success
    checks = result.get_asset_check_evaluations()
    assert [c.passed for c in checks] == [True]
    bundle = json.loads(
        (tmp_path / "storage/retrohunt_stix_bundles" / f"{job_id}.json").read_bytes()
    )
    assert validate_bundle(bundle) == []
    types = {o["type"] for o in bundle["objects"]}
    assert "incident" not in types  # a Retrohunt is not an alert (default)
    assert {"file", "indicator", "relationship", "artifact"} <= types
    files = [o for o in bundle["objects"] if o["type"] == "file"]
    yara = [o for o in bundle["objects"] if o.get("pattern_type") == "yara"]
    # The loop closes: the matches hang on the analyst's own Indicator (same id), not a copy.
    assert len(yara) == 1 and yara[0]["id"] == loop.opencti.get(indicator)["id"]
    assert yara[0]["pattern"] == RULE and yara[0]["name"] == "probe"
    based_on = {
        o["target_ref"]
        for o in bundle["objects"]
        if o.get("relationship_type") == "based-on" and o["source_ref"] == yara[0]["id"]
    }
    assert based_on == {f["id"] for f in files}

    # In OpenCTI: every File, the rule's Indicator, the samples with their bytes.
    for obj in files + yara:
        assert loop.opencti.get(obj["id"]) is not None, obj["id"]
    artifacts = [o for o in bundle["objects"] if o["type"] == "artifact"]
    assert len(loop.opencti.artifacts()) == len(artifacts) > 0
    wanted = {a["hashes"]["SHA-256"] for a in artifacts}
    assert {hashlib.sha256(f.data).hexdigest() for f in loop.opencti.artifacts()} == wanted
    delivery = next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == dg.AssetKey("retrohunt_opencti_delivery")
    )
    work = loop.opencti.work(delivery["work_id"].value)
    assert work is not None and job_id in work.name

    # A re-run (a replay from the UI) adds nothing; a later tick neither starts nor adds.
    counts, uploads = loop.opencti.counts(), len(loop.opencti.artifacts())
    downloads = loop.vt.count("file_download")
    assert loop.run(job_id).success
    assert loop.opencti.counts() == counts
    assert len(loop.opencti.artifacts()) == uploads
    assert loop.vt.count("file_download") == downloads  # the samples are stored
    third = loop.tick()
    assert not third.run_requests and not third.dynamic_partitions_requests
    assert loop.vt.count("retrohunt_job_create") == 1


@pytest.mark.integration
def test_a_crash_before_the_cursor_is_saved_adopts_the_job_instead_of_starting_another(
    loop: Loop,
) -> None:
    loop.opencti.create_indicator(RULE, pattern_type="yara", name="probe", labels=["retrohunt"])
    loop.tick()
    assert loop.vt.count("retrohunt_job_create") == 1
    job_id = next(iter(json.loads(loop.cursor or "{}")["started"].values()))
    loop.cursor = None  # the tick's cursor was never saved
    loop.tick()
    assert loop.vt.count("retrohunt_job_create") == 1
    assert list(json.loads(loop.cursor or "{}")["started"].values()) == [job_id]


@pytest.mark.integration
def test_a_pattern_that_does_not_parse_is_never_sent_and_says_why(loop: Loop) -> None:
    bad = loop.opencti.create_indicator(
        "rule broken { condition: ", pattern_type="yara", name="broken", labels=["retrohunt"]
    )
    loop.opencti.create_indicator(RULE, pattern_type="yara", name="probe", labels=["retrohunt"])
    loop.opencti.create_indicator(RULE + " ", pattern_type="yara", name="unlabelled")
    loop.tick()
    state = json.loads(loop.cursor or "{}")
    assert loop.vt.count("retrohunt_job_create") == 1  # the labelled, parsable one only
    assert "does not compile as YARA" in state["refused"][loop.opencti.get(bad)["id"]]
    loop.tick()
    assert loop.vt.count("retrohunt_job_create") == 1


@pytest.mark.integration
def test_incidents_when_asked_and_the_age_filter_off_by_default(
    loop: Loop, vt_corpus: Corpus, tmp_path: Path
) -> None:
    kept = [
        sha
        for sha, f in sorted(vt_corpus.files.items())
        if (f["attributes"].get("last_analysis_stats") or {}).get("malicious", 0) > 0
        and (f["attributes"].get("size") or 0) > 1000
    ][:3]
    job_id = loop.vt.api.retrohunt.add(RULE, kept, created=int(time.time()) - 10, run_seconds=1)
    loop.resources["retrohunt_settings"] = RetrohuntSettings(create_incident=True)
    loop.resources["livehunt_settings"] = LivehuntSettings(upload_artifact=False)
    loop.tick()
    assert loop.run(job_id).success
    bundle = json.loads(
        (tmp_path / "storage/retrohunt_stix_bundles" / f"{job_id}.json").read_bytes()
    )
    incidents = [o for o in bundle["objects"] if o["type"] == "incident"]
    (yara,) = [o for o in bundle["objects"] if o.get("pattern_type") == "yara"]
    assert yara["name"] == "vt_pipeline_retro_probe"  # no Indicator in OpenCTI: the rule's own
    assert len(incidents) == len(kept)  # old files kept: looking back is the point
    assert "artifact" not in {o["type"] for o in bundle["objects"]}  # UPLOAD_ARTIFACT off


@pytest.mark.integration
def test_only_jobs_started_here_when_asked_and_an_unfinished_job_fails_saying_so(
    loop: Loop, vt_corpus: Corpus
) -> None:
    files = sorted(vt_corpus.files)[:2]
    by_hand = loop.vt.api.retrohunt.add(RULE, files, created=int(time.time()) - 10, run_seconds=1)
    loop.resources["retrohunt_settings"] = RetrohuntSettings(import_all_jobs=False)
    assert not loop.tick().run_requests  # finished, but not started from OpenCTI
    assert loop.instance.get_dynamic_partitions(PARTITIONS_NAME) == []

    running = loop.vt.api.retrohunt.add(TWO_RULES, files, run_seconds=3600)
    loop.instance.add_dynamic_partitions(PARTITIONS_NAME, [running])  # an operator's mistake
    with pytest.raises(dg.Failure, match=rf"Retrohunt job {running} is (starting|running)"):
        loop.run(running)
    assert by_hand != running
