"""Retrohunt jobs imported like Livehunt windows: one partition per finished job.

    retrohunt_matches -> retrohunt_files -> retrohunt_artifacts -> retrohunt_stix_bundles
                                                                -> retrohunt_opencti_delivery

A job's matching files go through the chain of a Livehunt window: each match is read as a
Livehunt notification (`virustotal/retrohunt.py`: the job is its ruleset, its finish date the
notification date), then the same filters (`files_tables`), samples (`sample_artifacts`, with
UPLOAD_ARTIFACT and the same store), STIX mapping (`stix_bundles`), bundle check and delivery
(`delivery._deliver`) as Livehunt. What differs, in `RetrohuntSettings`:
- a match is not an alert: no Incident by default (`VIRUSTOTAL_RETROHUNT_CREATE_INCIDENT`);
  a File with the rule's YARA Indicator (`based-on`) either way;
- the age filter is off by default (`VIRUSTOTAL_RETROHUNT_MAX_AGE_DAYS`): looking back is what
  a Retrohunt is for; extension, positives and size filters are Livehunt's own settings;
- nothing is deleted on VirusTotal (a job's matches are not notifications).

`retrohunt_sensor` finds finished jobs on VirusTotal (`GET /intelligence/retrohunt_jobs`, every
page) and adds each as a partition (Dagster dynamic partitions `retrohunt_jobs`) with one run;
a partition can be re-materialized (replayed, re-delivered) from the UI. It also starts jobs
from OpenCTI: a YARA Indicator carrying the label `VIRUSTOTAL_RETROHUNT_LABEL` starts one job
over the configured corpus and time range, once. The Indicators are found with pycti's
indicator list, filtered on the label and `pattern_type` yara (newest first, at most
`RETROHUNT_INDICATORS_PER_TICK` per tick): polling suffices for a label an analyst adds by hand,
and needs no live-stream position. Which Indicator started which job is kept in the sensor's
cursor; a crash between starting a job and saving the cursor is caught by the next tick, which
finds the job by its rules among the key's jobs and adopts it instead of starting a second one.
A pattern that does not compile (plyara, the check of the Livehunt rules) is never sent; it
is recorded with the reason and not retried.
"""

import dataclasses
import json
import time
from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
import pandas as pd
from pycti import Indicator as PyctiIndicator
from pydantic import Field, field_validator

from vt_pipeline.config import invalid, is_env_reference, settings_from_env
from vt_pipeline.livehunt.assets import (
    LIVEHUNT_OWNERS,
    files_tables,
    run_vt,
    sample_artifacts,
    stix_bundles,
    vt_calls_metadata,
)
from vt_pipeline.livehunt.checks import _materializations, check_metadata
from vt_pipeline.livehunt.delivery import _deliver, _file_names, opencti_links
from vt_pipeline.livehunt.options import LivehuntOptions
from vt_pipeline.livehunt.settings import LivehuntSettings
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource
from vt_pipeline.stix.hunting_rules import YaraIndicator, compile_problem, ruleset_name
from vt_pipeline.stix.validation import validate_bundles
from vt_pipeline.storage.store import StorageResource
from vt_pipeline.virustotal import objects as n
from vt_pipeline.virustotal import retrohunt as rh
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalResource, VirusTotalSession

ENV_PREFIX = "VIRUSTOTAL_RETROHUNT_"
PARTITIONS_NAME = "retrohunt_jobs"
RETROHUNT_INDICATORS_PER_TICK = 100
SENSOR_INTERVAL_SECONDS = 300
CHECK_NAME = "retrohunt_stix_bundle_is_valid"
INDICATOR_TAG = "vt_pipeline/retrohunt_indicator"

retrohunt_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS_NAME)

RETROHUNT_ASSET: dict[str, Any] = {
    "partitions_def": retrohunt_partitions,
    "group_name": "retrohunt",
    "owners": LIVEHUNT_OWNERS,
}
_VT = {"pool": "virustotal"}


class RetrohuntSettings(dg.ConfigurableResource):
    """Retrohunt's own settings (`VIRUSTOTAL_RETROHUNT_*`); the filters and UPLOAD_ARTIFACT are
    Livehunt's (`livehunt_settings`)."""

    create_incident: bool = Field(
        default=False,
        description="An Incident per match, as a Livehunt alert. Off: a Retrohunt is a search "
        "the analyst asked for, not an alert; the Files and YARA Indicators are made either way.",
    )
    max_age_days: int = Field(
        default=0,
        ge=0,
        description="Drop files older than this at the job's finish date (0 = off: a "
        "Retrohunt looks back on purpose).",
    )
    label: str = Field(
        default="retrohunt",
        description="A YARA Indicator with this label in OpenCTI starts one Retrohunt job "
        "(empty: jobs are never started from OpenCTI).",
    )
    corpus: str = Field(default="main", description="main or goodware, for jobs started here.")
    time_range_days: int = Field(
        default=90,
        ge=1,
        le=365,
        description="Jobs started here scan the files of the last N days (VT allows 90, more "
        "with higher privileges).",
    )
    notification_email: str = Field(
        default="", description="Who VT e-mails when a job started here finishes (optional)."
    )
    import_all_jobs: bool = Field(
        default=True,
        description="Import every finished job of the key; false: only jobs started here.",
    )

    @field_validator("corpus", mode="before")
    @classmethod
    def _known_corpus(cls, value: Any) -> Any:
        if is_env_reference(value) or not isinstance(value, str):
            return value
        corpus = value.strip().lower()
        if corpus not in rh.CORPORA:
            raise invalid(ENV_PREFIX + "CORPUS", value, " or ".join(rh.CORPORA))
        return corpus

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "RetrohuntSettings":
        """Settings from `VIRUSTOTAL_RETROHUNT_*`; a bad value fails naming its variable."""
        return settings_from_env(cls, ENV_PREFIX, env)

    def options(self, livehunt: LivehuntSettings) -> LivehuntOptions:
        """Livehunt's options (filters, UPLOAD_ARTIFACT, mapping) with Retrohunt's own."""
        return dataclasses.replace(
            livehunt.to_options(),
            create_alert=self.create_incident,
            max_age_days=self.max_age_days,
            filter_with_tag="",
        )


# -- assets ----------------------------------------------------------------------------------


@dg.asset(kinds={"virustotal", "json"}, **RETROHUNT_ASSET, **_VT)
def retrohunt_matches(
    context: dg.AssetExecutionContext,
    virustotal: VirusTotalResource,
    storage: StorageResource,
    opencti: OpenCTIResource,
) -> dict[str, dict[str, Any]]:
    """The job and every file it matched, raw as VirusTotal returned them, and the OpenCTI
    YARA Indicator whose pattern the job's rules are, when there is one.

    The record only grows: files stored by an earlier read are kept, a re-read adds the ones
    not seen before (by file id), and the Indicator once found is kept. A job that is not
    finished fails with its status: its matches are not all there yet (the sensor only adds
    finished jobs).
    """
    key = context.partition_key

    async def fetch(session: VirusTotalSession) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        job = await rh.retrohunt_job(session, key)
        if rh.job_status(job) != rh.FINISHED:
            attrs = n.attributes(job)
            raise dg.Failure(
                f"Retrohunt job {key} is {rh.job_status(job) or 'of unknown status'} "
                f"(progress {attrs.get('progress')}%): materialize it once it is finished"
            )
        return job, await rh.matching_files(session, key)

    (job, files), session = run_vt(virustotal, fetch)
    stored = storage.stored_json(context.asset_key.path, key) or {}
    known = stored.get("files") or []
    ids = {_file_key(item) for item in known}
    merged = list(known) + [item for item in files if _file_key(item) not in ids]
    attrs = n.attributes(job)
    indicator = stored.get("indicator") or _source_indicator(context, opencti, attrs.get("rules"))
    context.add_asset_metadata(
        {
            "matches": len(merged),
            "matches_new": len(merged) - len(known),
            "rules": dg.MetadataValue.text(", ".join(rh.rule_names(attrs.get("rules"))) or "?"),
            "corpus": dg.MetadataValue.text(str(attrs.get("corpus") or "main")),
            **vt_calls_metadata(session, []),
        },
        partition_key=key,
    )
    if indicator:
        context.add_asset_metadata(
            {"opencti_indicator": dg.MetadataValue.text(indicator["id"])}, partition_key=key
        )
    return {key: {"job": job, "files": merged, "indicator": indicator}}


def _source_indicator(
    context: dg.AssetExecutionContext, opencti: OpenCTIResource, rules: Any
) -> dict[str, str] | None:
    """The YARA Indicator OpenCTI holds with exactly these rules as its pattern (its id is the
    pattern's: pycti's `Indicator.generate_id`, what OpenCTI computes), as `{id, name}`; None
    when there is none or OpenCTI cannot be asked (the bundle then has the rule's own
    Indicator, as for any job)."""
    if not isinstance(rules, str) or not rules.strip() or not opencti.configured:
        return None
    try:
        found = opencti.lookups().read_entity(PyctiIndicator.generate_id(rules))
    except OpenCTIError as exc:
        context.log.warning(f"cannot ask OpenCTI for the job's Indicator: {exc}")
        return None
    if not found or str(found.get("pattern_type") or "").lower() != "yara":
        return None
    return {"id": str(found["standard_id"]), "name": str(found.get("name") or "")}


def job_ruleset(record: dict[str, Any]) -> dict[str, Any]:
    """The job as the ruleset of its matches. Named after the OpenCTI Indicator it was started
    from (with its marker, as a managed Livehunt ruleset: `stix/hunting_rules.py`), its matches
    map to that same Indicator (same pattern, same id) instead of a copy of its rule."""
    job, indicator = record["job"], record.get("indicator")
    if indicator:
        source = YaraIndicator(
            key=indicator["id"],
            id=indicator["id"],
            name=indicator["name"] or indicator["id"],
            pattern=str(n.attributes(job).get("rules") or ""),
            detection=True,
            revoked=False,
        )
        name = ruleset_name(source)
    else:
        name = f"Retrohunt job {job.get('id')}"
    return {**job, "attributes": {**n.attributes(job), "name": name}}


def _file_key(item: Any) -> str:
    return str(item.get("id")) if isinstance(item, dict) else json.dumps(item, default=str)


def job_notifications(record: dict[str, Any]) -> list[Any]:
    """A stored job's matches as Livehunt notifications (see `virustotal/retrohunt.py`)."""
    return [rh.match_as_notification(record["job"], item) for item in record.get("files") or []]


@dg.asset(kinds={"pandas", "parquet"}, **RETROHUNT_ASSET)
def retrohunt_files(
    context: dg.AssetExecutionContext,
    retrohunt_matches: dict[str, dict[str, Any]],
    livehunt_settings: LivehuntSettings,
    retrohunt_settings: RetrohuntSettings,
) -> dict[str, pd.DataFrame]:
    """One row per match, with what the Livehunt filters read and why a row was dropped."""
    notifications = {key: job_notifications(r) for key, r in retrohunt_matches.items()}
    options = retrohunt_settings.options(livehunt_settings)
    return dict(files_tables(context, notifications, options))


@dg.asset(kinds={"virustotal", "filesystem"}, **RETROHUNT_ASSET, **_VT)
def retrohunt_artifacts(
    context: dg.AssetExecutionContext,
    retrohunt_files: dict[str, pd.DataFrame],
    virustotal: VirusTotalResource,
    livehunt_settings: LivehuntSettings,
    retrohunt_settings: RetrohuntSettings,
    storage: StorageResource,
    opencti: OpenCTIResource,
) -> dict[str, list[dict[str, Any]]]:
    """Kept samples, downloaded when UPLOAD_ARTIFACT is on, into Livehunt's sample store."""
    options = retrohunt_settings.options(livehunt_settings)
    return dict(sample_artifacts(context, retrohunt_files, virustotal, options, storage, opencti))


@dg.asset(kinds={"stix", "json"}, **RETROHUNT_ASSET)
def retrohunt_stix_bundles(
    context: dg.AssetExecutionContext,
    retrohunt_matches: dict[str, dict[str, Any]],
    retrohunt_files: dict[str, pd.DataFrame],
    retrohunt_artifacts: dict[str, list[dict[str, Any]]],
    livehunt_settings: LivehuntSettings,
    retrohunt_settings: RetrohuntSettings,
) -> dict[str, dict[str, Any]]:
    """One STIX bundle per job, Livehunt's mapping with the job as the ruleset; no VT call."""
    notifications = {key: job_notifications(r) for key, r in retrohunt_matches.items()}
    rulesets = {key: {r["job"]["id"]: job_ruleset(r)} for key, r in retrohunt_matches.items()}
    options = retrohunt_settings.options(livehunt_settings)
    return dict(
        stix_bundles(
            context, notifications, retrohunt_files, rulesets, retrohunt_artifacts, options
        )
    )


BUNDLES_KEY = retrohunt_stix_bundles.key


@dg.asset_check(asset=retrohunt_stix_bundles, partitions_def=retrohunt_partitions, blocking=True)
def retrohunt_stix_bundle_is_valid(
    context: dg.AssetCheckExecutionContext,
    retrohunt_stix_bundles: dict[str, dict[str, Any]],
) -> Iterator[dg.AssetCheckEvaluation | dg.Output]:
    """Each bundle parses with stix2 and every reference resolves inside it (as Livehunt's)."""
    targets = _materializations(context.instance, BUNDLES_KEY, set(retrohunt_stix_bundles))
    problems = validate_bundles(retrohunt_stix_bundles)
    for key, bundle in sorted(retrohunt_stix_bundles.items()):
        yield dg.AssetCheckEvaluation(
            asset_key=BUNDLES_KEY,
            check_name=CHECK_NAME,
            passed=not problems[key],
            partition=key,
            blocking=True,
            metadata=check_metadata(bundle, problems[key]),
            target_materialization_data=targets.get(key),
        )
    yield dg.Output(None, output_name=context.op_execution_context.op_def.output_defs[0].name)


@dg.asset(kinds={"opencti"}, pool="opencti", **RETROHUNT_ASSET)
def retrohunt_opencti_delivery(
    context: dg.AssetExecutionContext,
    retrohunt_matches: dict[str, dict[str, Any]],
    retrohunt_artifacts: dict[str, list[dict[str, Any]]],
    retrohunt_stix_bundles: dict[str, dict[str, Any]],
    opencti: OpenCTIResource,
    livehunt_settings: LivehuntSettings,
    storage: StorageResource,
) -> dict[str, dict[str, Any]]:
    """Each job's bundle and samples in OpenCTI, as a Livehunt window's (one work per job)."""
    records: dict[str, dict[str, Any]] = {}
    with opencti.connector() as cti:
        for key, bundle in retrohunt_stix_bundles.items():
            records[key] = _deliver(
                context,
                cti,
                key,
                bundle,
                retrohunt_artifacts[key],
                _file_names(job_notifications(retrohunt_matches[key])),
                storage,
                opencti.work_timeout_seconds,
                work_name=f"VirusTotal Retrohunt {key} (vt_pipeline)",
            )
    for key, record in records.items():
        metadata: dict[str, Any] = {
            "objects_sent": int(record["objects_sent"]),
            "work_id": dg.MetadataValue.text(
                str(record.get("work_id") or "none: nothing kept for this job, no work")
            ),
        }
        if livehunt_settings.upload_artifact:
            metadata["artifacts_uploaded"] = int(record["artifacts_uploaded"])
        for name in ("artifacts_already_in_opencti", "stale_works_closed"):
            if record.get(name):
                metadata[name] = int(record[name])
        metadata.update(opencti_links(opencti, record, retrohunt_stix_bundles[key]))
        context.add_asset_metadata(metadata, partition_key=key)
    return records


retrohunt_assets = [
    retrohunt_matches,
    retrohunt_files,
    retrohunt_artifacts,
    retrohunt_stix_bundles,
    retrohunt_opencti_delivery,
]

retrohunt_job = dg.define_asset_job(
    "retrohunt_job",
    selection=dg.AssetSelection.groups("retrohunt"),
    description=(
        "A finished VirusTotal Retrohunt job to OpenCTI, as a Livehunt window: matches -> files "
        "(Livehunt's filters) -> samples -> STIX bundle (checked) -> delivered. One partition "
        "per job; retrohunt_sensor adds them."
    ),
)


# -- sensor ----------------------------------------------------------------------------------


@dg.sensor(
    name="retrohunt_sensor",
    job=retrohunt_job,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Every 5 minutes: starts a Retrohunt job for each new YARA Indicator labelled "
        "VIRUSTOTAL_RETROHUNT_LABEL in OpenCTI (once), and adds each finished job on VirusTotal "
        "as a partition of retrohunt_job, with one run. Starts stopped: turn it on once "
        "VirusTotal (a premium key) and OpenCTI are configured."
    ),
)
def retrohunt_sensor(
    context: dg.SensorEvaluationContext,
    virustotal: VirusTotalResource,
    opencti: OpenCTIResource,
    retrohunt_settings: RetrohuntSettings,
) -> dg.SensorResult:
    return evaluate(context, virustotal, opencti, retrohunt_settings)


def evaluate(
    context: dg.SensorEvaluationContext,
    virustotal: VirusTotalResource,
    opencti: OpenCTIResource,
    settings: RetrohuntSettings,
    now: float | None = None,
) -> dg.SensorResult:
    """One tick: start jobs for newly labelled Indicators, then import finished jobs."""
    state = json.loads(context.cursor) if context.cursor else {}
    started: dict[str, str] = state.get("started") or {}  # indicator id -> job id
    refused: dict[str, str] = state.get("refused") or {}  # indicator id -> why
    wanted: list[dict[str, Any]] = []
    if settings.label.strip() and opencti.configured:
        try:
            wanted = [
                i
                for i in labelled_yara_indicators(opencti, settings.label.strip())
                if i["id"] not in started and i["id"] not in refused
            ]
        except OpenCTIError as exc:
            context.log.warning(f"cannot list OpenCTI's Indicators labelled for Retrohunt: {exc}")
    for indicator in list(wanted):
        problem = compile_problem(indicator["pattern"])
        if problem is not None:  # the Livehunt rules' check: never sent
            refused[indicator["id"]] = f"the pattern does not compile as YARA: {problem}"[:300]
            context.log.warning(f"Indicator {indicator['id']} not sent: {refused[indicator['id']]}")
            wanted.remove(indicator)
    moment = time.time() if now is None else now
    span = (int(moment) - settings.time_range_days * 86_400, int(moment))

    async def work(session: VirusTotalSession) -> list[dict[str, Any]]:
        jobs = await rh.retrohunt_jobs(session)
        for indicator in wanted:
            found = rh.find_job_by_rules(jobs, indicator["pattern"])
            if found is not None:  # started before a crash, or by hand: adopted
                started[indicator["id"]] = str(found["id"])
                continue
            try:
                job = await rh.start_retrohunt_job(
                    session,
                    indicator["pattern"],
                    settings.corpus,
                    span,
                    settings.notification_email.strip(),
                )
            except VirusTotalError as exc:
                if exc.code != "InvalidArgumentError":
                    raise  # an outage, the quota: the next tick tries again
                refused[indicator["id"]] = f"VirusTotal refused the job: {exc}"[:300]
                continue
            started[indicator["id"]] = str(job["id"])
            jobs.append(job)
        return jobs

    jobs, _ = run_vt(virustotal, work)
    ours = set(started.values())
    finished = [
        str(j["id"])
        for j in jobs
        if isinstance(j, dict)
        and rh.job_status(j) == rh.FINISHED
        and n.is_valid_ruleset_id(str(j.get("id") or ""))
        and (settings.import_all_jobs or str(j["id"]) in ours)
    ]
    known = set(context.instance.get_dynamic_partitions(PARTITIONS_NAME))
    new = sorted(set(finished) - known)
    by_job = {job_id: indicator for indicator, job_id in started.items()}
    requests = [
        dg.RunRequest(
            partition_key=job_id,
            run_key=f"retrohunt:{job_id}",
            tags={INDICATOR_TAG: by_job[job_id]} if job_id in by_job else {},
        )
        for job_id in new
    ]
    running = sum(1 for j in jobs if rh.job_status(j) in ("queued", "starting", "running"))
    summary = (
        f"{len(jobs)} Retrohunt jobs on VirusTotal ({running} running), {len(new)} newly "
        f"finished added as partitions; {len(started)} started from OpenCTI Indicators"
        + (f", {len(refused)} refused" if refused else "")
    )
    context.log.info(summary)
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[retrohunt_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps({"started": started, "refused": refused}, sort_keys=True),
        skip_reason=None if requests else summary,
    )


def labelled_yara_indicators(opencti: OpenCTIResource, label: str) -> list[dict[str, Any]]:
    """YARA Indicators carrying `label`, newest first, at most RETROHUNT_INDICATORS_PER_TICK:
    `{id, pattern}` each. OpenCTI filters labels by id: the label is looked up first (none: no
    Indicator can carry it)."""
    lookups = opencti.lookups()
    api = lookups.api

    def query() -> list[dict[str, Any]]:
        found = api.label.read(
            filters={
                "mode": "and",
                "filters": [{"key": "value", "values": [label]}],
                "filterGroups": [],
            }
        )
        if not found:
            return []
        return api.indicator.list(
            filters={
                "mode": "and",
                "filters": [
                    {"key": "objectLabel", "values": [found["id"]]},
                    {"key": "pattern_type", "values": ["yara"]},
                ],
                "filterGroups": [],
            },
            first=RETROHUNT_INDICATORS_PER_TICK,
            orderBy="created_at",
            orderMode="desc",
        )

    try:
        indicators = query()
    except Exception as exc:  # pycti raises plain exceptions; never with the token
        what = type(exc).__name__
        raise OpenCTIError(f"OpenCTI failed to list labelled Indicators ({what})") from None
    return [
        {"id": str(i["standard_id"] or i["id"]), "pattern": str(i["pattern"])}
        for i in indicators or []
        if isinstance(i, dict) and i.get("pattern") and (i.get("standard_id") or i.get("id"))
    ]
