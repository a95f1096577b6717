"""`vt_enrichment_job`: answer a batch of OpenCTI enrichment requests with VirusTotal knowledge.

One op, `vt_enrichment`, takes the requests as config (`EnrichmentRequest.to_config()`), so a
run re-executed from the UI repeats exactly the same requests. For each request, concurrently
(VirusTotal calls bounded by the resource's concurrency, OpenCTI's blocking pycti calls in
threads):

1. the work is marked received;
2. the entity is read with its files as pycti reads it (`stix2.get_reader(type)(withFiles=True)`,
   then `prepare_export(generate_export(...))`), or taken from the playbook's bundle;
3. an entity whose HIGHEST TLP marking is above `VIRUSTOTAL_MAX_TLP` is refused;
4. VirusTotal is asked (a stored response younger than the cache window is reused instead; every
   fresh response is stored raw before it is used); an unseen Artifact or URL is uploaded /
   submitted when the options say so and its analysis awaited with bounded backoff (an asyncio
   sleep: the batch's other requests go on meanwhile);
5. the pure mapping (`stix/enrichment.py`) builds the objects; the bundle is sent with the work id
   and the work marked processed with a message a person understands - or, for a playbook step,
   the incoming bundle plus the new objects go back through `playbookStepExecution`.

Each request answered on OpenCTI is recorded on the run (`recovery.record_answered`) right after
OpenCTI took the answer: if the run dies, the sensor answers again exactly the requests that were
not (see `recovery.py`). Sending the bundle waits out a RabbitMQ or OpenCTI blip in place and
keeps the work's figures true (`OpenCTIConnector.send_into_work`), so a work always ends.
Everything written to a log or a work message has its control characters escaped (`printable`).

Failures: one request's failure ends ITS work in error with the reason (never the token) and never
touches its batch mates. A failed playbook step passes its bundle through unchanged, so the
playbook goes on (as for an out-of-scope entity). After every request is answered, the op fails if
any request failed, so the run shows failed and can be re-executed from the UI; re-executing
repeats the whole batch, which is harmless for the requests that succeeded: ids are
deterministic (no duplicate notes or indicators) and their VirusTotal responses come from the
cache window (no quota spent).
"""

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import dagster as dg
import vt

from vt_pipeline.enrichment.artifact import attach_sample
from vt_pipeline.enrichment.recovery import record_answered
from vt_pipeline.enrichment.requests import (
    ENRICHMENT_JOB,
    ENRICHMENT_OP,
    SUPPORTED_TYPES,
    EnrichmentRequest,
    InvalidRequest,
    printable,
)
from vt_pipeline.enrichment.settings import TLP_RANKS, EnrichmentSettings
from vt_pipeline.opencti.resource import (
    OpenCTIConnector,
    OpenCTIError,
    OpenCTIResource,
    OpenCTIUnavailable,
)
from vt_pipeline.stix.enrichment import (
    EnrichmentResult,
    build_enrichment,
    build_indicator_enrichment,
    enrichment_bundle,
    playbook_bundle,
    unchanged_playbook_bundle,
)
from vt_pipeline.stix.enrichment.base import FILE_ENTITY_TYPES, REPORT_KIND
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.storage.store import StorageResource
from vt_pipeline.virustotal.expansion_fetch import ExpansionFetcher, refresh
from vt_pipeline.virustotal.relations import describe as describe_relations
from vt_pipeline.virustotal.relations import fetch_relations
from vt_pipeline.virustotal.reports import (
    AnyReport,
    Relation,
    Report,
    read_report,
    with_relations,
)
from vt_pipeline.virustotal.resource import (
    VirusTotalError,
    VirusTotalResource,
    VirusTotalSession,
    call_scope,
)

T = TypeVar("T")

HASH_PREFERENCE = ("SHA-256", "SHA-1", "MD5")
_HASH_PATTERNS = {
    "SHA-256": re.compile(r"^[0-9a-fA-F]{64}$"),
    "SHA-1": re.compile(r"^[0-9a-fA-F]{40}$"),
    "MD5": re.compile(r"^[0-9a-fA-F]{32}$"),
}

OUTCOME_ENRICHED = "enriched"
OUTCOME_FAILED = "failed"
OUTCOME_PASSED = "passed through"


class RequestFailed(Exception):
    """A request that cannot be answered; the message is what the analyst reads on the work."""


@dataclass
class Outcome:
    """What happened to one request (a row of the run's metadata table)."""

    request: EnrichmentRequest
    status: str = OUTCOME_FAILED
    message: str = ""
    entity: str = ""
    entity_type: str | None = None
    score: int | None = None
    vt_calls: int = 0
    cache_hits: int = 0
    objects: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    reported: bool = False  # OpenCTI took the answer (work closed, playbook step answered)
    # Not reported because OpenCTI could not be reached (worth trying again later), rather
    # than because it answered and refused (a work it no longer knows: never worth it).
    unreachable: bool = False

    @property
    def line(self) -> str:
        """The request, its entity and its message: one line of a failed run's list."""
        return f"{self.request.request_id} ({self.entity}): {self.message}"


@dataclass
class _Trace:
    """Per request: when it was asked (what the Indicators are valid from) and the counters the
    lookups update."""

    requested_at: datetime
    cache_hits: int = 0
    cached_at: list[datetime] = field(default_factory=list)
    relations: tuple[Relation, ...] = ()  # the entity's VT relations, as fetched
    notes: list[str] = field(default_factory=list)  # what the expansions and rescans say


class Enricher:
    """Answers requests against one VirusTotal session and one registered OpenCTI connector."""

    def __init__(
        self,
        vt_session: VirusTotalSession,
        cti: OpenCTIConnector,
        settings: EnrichmentSettings,
        responses: ResponseStore,
        log: Any = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        secrets: Sequence[str] = (),
    ) -> None:
        self.vt = vt_session
        self._secrets = [s for s in secrets if s]
        self.cti = cti
        self.settings = settings
        self.options = settings.to_options()
        self.responses = responses
        self.log = log
        self.clock = clock
        self._rulesets: dict[str, asyncio.Task[dict[str, Any] | None]] = {}
        self.expansions = ExpansionFetcher(
            vt_session, responses, timedelta(hours=settings.lookup_cache_hours), clock
        )

    # -- one request -----------------------------------------------------------------------

    async def answer(self, request: EnrichmentRequest) -> Outcome:
        """Answer one request; never raises (its failure is its outcome)."""
        call_scope(request.request_id)
        outcome = Outcome(request, entity=request.entity_id)
        # The sensor stamps each request; a run config written by hand may carry no time.
        trace = _Trace(requested_at=request.requested_time or self.clock())
        try:
            if request.work_id:
                await self._opencti(
                    "mark the work received",
                    self.cti.mark_received,
                    request.work_id,
                    "vt_pipeline: VirusTotal enrichment started",
                )
            await self._answer(request, outcome, trace)
            outcome.reported = True
        except Exception as exc:  # one request's failure never sinks its batch
            outcome.status = OUTCOME_FAILED
            outcome.message = self._reason(exc)
            outcome.reported = await self._report_failure(request, outcome)
        outcome.cache_hits = trace.cache_hits
        outcome.vt_calls = self.vt.log_for(request.request_id).total
        if self.log is not None:
            log = self.log.info if outcome.status != OUTCOME_FAILED else self.log.warning
            log(
                printable(
                    f"{request.request_id} ({outcome.entity}): {outcome.status}: {outcome.message}",
                    1000,
                )
            )
        return outcome

    async def _answer(self, request: EnrichmentRequest, outcome: Outcome, trace: _Trace) -> None:
        if await self._unsupported(request, outcome, request.entity_type):
            return
        entity = await self._opencti(
            "read the entity", self._read, request.entity_type, request.entity_id
        )
        if entity is None:
            raise RequestFailed(
                f"OpenCTI has no entity {request.entity_id}, or the connector may not read it"
            )
        entity_type = request.entity_type or str(entity.get("entity_type") or "")
        outcome.entity_type, outcome.entity = entity_type, f"{entity_type} {_label(entity)}"
        if await self._unsupported(request, outcome, entity_type):
            return
        self._check_tlp(entity, outcome.entity)
        stix_entity, context_objects = await self._stix_entity(request, entity)
        result = await self._enrich(entity_type, entity, stix_entity, trace)
        if entity_type == "StixFile" and self.settings.file_download_artifact:
            result = await attach_sample(
                self.vt,
                self.cti,
                self.responses,
                result,
                stix_entity,
                trace.requested_at,
                self.settings.file_download_max_bytes,
                trace.notes,
            )
        outcome.score, outcome.objects, outcome.stats = (
            result.score,
            len(result.objects),
            result.stats,
        )
        if request.playbook is not None:
            answer = playbook_bundle(request.bundle or {}, result.objects)
            await self._opencti(
                "answer the playbook step",
                self.cti.answer_playbook,
                self._playbook_dict(request),
                answer,
            )
            outcome.status = OUTCOME_ENRICHED
            outcome.message = self._success_message(outcome, trace)
            return
        bundle = enrichment_bundle(context_objects, result.objects)
        await self._opencti(
            "accept the bundle",
            self._send_as_applicant,
            bundle,
            request.work_id,
            request.applicant_id,
        )
        outcome.status = OUTCOME_ENRICHED
        outcome.message = self._success_message(outcome, trace)
        if request.work_id:
            await self._opencti(
                "close the work", self.cti.close_work, request.work_id, outcome.message, False
            )

    async def _unsupported(
        self, request: EnrichmentRequest, outcome: Outcome, entity_type: str | None
    ) -> bool:
        """A type the job cannot enrich: refused, or passed through in a playbook (True)."""
        if entity_type is None or entity_type in SUPPORTED_TYPES:
            return False
        if request.playbook is not None:
            await self._pass_through(request, outcome, f"{entity_type} is out of scope")
            return True
        raise RequestFailed(
            f"VirusTotal enrichment does not support entities of type {entity_type} "
            f"(supported: {', '.join(SUPPORTED_TYPES)})"
        )

    def _success_message(self, outcome: Outcome, trace: _Trace) -> str:
        score = "score unchanged" if outcome.score is None else f"score {outcome.score}"
        counts = ", ".join(f"{v} {k}" for k, v in sorted(outcome.stats.items()) if v)
        text = f"VirusTotal enrichment of {outcome.entity}: {score}"
        text += f"; {outcome.objects} objects sent" + (f" ({counts})" if counts else "")
        if trace.relations:
            text += f"; VirusTotal relations: {describe_relations(trace.relations)}"
        for note in trace.notes:
            text += f"; {note}"
        if trace.cached_at:
            oldest = min(trace.cached_at).strftime("%Y-%m-%d %H:%M UTC")
            text += f"; VirusTotal data reused from {oldest} (cache, no quota spent)"
        return text

    # -- entity reading ------------------------------------------------------------------

    def _read(self, entity_type: str | None, entity_id: str) -> dict[str, Any] | None:
        """The entity as pycti's enrichment listener reads it (files included)."""
        reader = self.cti.api.stix2.get_reader(entity_type or "Stix-Core-Object")
        return reader(id=entity_id, withFiles=True)

    async def _stix_entity(
        self, request: EnrichmentRequest, entity: dict[str, Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The entity as STIX, and the objects exported with it (its markings, its author)."""
        if request.playbook is not None:
            objects = (request.bundle or {}).get("objects") or []
            wanted = {request.entity_id, entity.get("standard_id"), entity.get("id")}
            found = next(
                (o for o in objects if isinstance(o, dict) and o.get("id") in wanted), None
            )
            if found is None:
                raise RequestFailed(
                    f"the playbook bundle does not hold the entity {request.entity_id}"
                )
            return found, list(objects)

        def export() -> list[dict[str, Any]]:
            stix2 = self.cti.api.stix2
            return stix2.prepare_export(entity=stix2.generate_export(dict(entity)))

        objects = await self._opencti("export the entity", export)
        standard_id = entity.get("standard_id")
        for item in objects or []:
            if item.get("id") in {standard_id, f"x-opencti-{standard_id}"}:
                return item, list(objects)
        raise RequestFailed(f"OpenCTI could not export the entity {request.entity_id} as STIX")

    def _check_tlp(self, entity: Mapping[str, Any], label: str) -> None:
        """Refuse an entity whose highest TLP marking is above the maximum (upstream: the last)."""
        levels = [
            str(m.get("definition") or "").upper()
            for m in entity.get("objectMarking") or []
            if isinstance(m, dict) and str(m.get("definition_type") or "").upper() == "TLP"
        ]
        if not levels:
            return
        # An unknown TLP label counts as the most restrictive: never send what we cannot rank.
        highest = max(levels, key=lambda level: TLP_RANKS.get(level, max(TLP_RANKS.values()) + 1))
        if TLP_RANKS.get(highest, max(TLP_RANKS.values()) + 1) > self.settings.max_tlp_rank:
            raise RequestFailed(
                f"{label} is marked {highest}, above VIRUSTOTAL_MAX_TLP="
                f"{self.settings.max_tlp}: it was not sent to VirusTotal"
            )

    # -- VirusTotal ------------------------------------------------------------------------

    async def _enrich(
        self,
        entity_type: str,
        entity: dict[str, Any],
        stix_entity: dict[str, Any],
        trace: _Trace,
    ) -> EnrichmentResult:
        if entity_type in FILE_ENTITY_TYPES:
            return await self._enrich_file(entity_type, entity, stix_entity, trace)
        if entity_type == "Indicator":
            return await self._enrich_indicator(entity, stix_entity, trace)
        value = str(stix_entity.get("value") or entity.get("observable_value") or "").strip()
        if not value:
            raise RequestFailed(f"the {entity_type} has no value to look up")
        body = await self._observable(entity_type, value, trace, upload=True)
        if body is None:
            hint = ""
            if entity_type == "Url" and not self.settings.url_upload_unseen:
                hint = " (VIRUSTOTAL_URL_UPLOAD_UNSEEN is off)"
            raise RequestFailed(f"VirusTotal has no record of {entity_type} {value}{hint}")
        key = key_of(entity_type, value)
        body = await self._refreshed(entity_type, key, body, trace)
        report = await self._report(entity_type, key, body, trace)
        report = await self._expanded(entity_type, key, body, report, trace)
        return build_enrichment(
            stix_entity, entity_type, report, self.options, requested_at=trace.requested_at
        )

    async def _enrich_file(
        self,
        entity_type: str,
        entity: dict[str, Any],
        stix_entity: dict[str, Any],
        trace: _Trace,
    ) -> EnrichmentResult:
        file_hash = best_hash(stix_entity, entity)
        if file_hash is None:
            raise RequestFailed(
                f"the {entity_type} has no SHA-256, SHA-1 or MD5 hash: VirusTotal looks files "
                "up by hash"
            )
        body = await self._lookup("file", file_hash, trace)
        if body is None:
            if entity_type != "Artifact" or not self.settings.file_upload_unseen_artifacts:
                hint = (
                    " (VIRUSTOTAL_FILE_UPLOAD_UNSEEN_ARTIFACTS is off)"
                    if entity_type == "Artifact"
                    else " (only Artifacts, which hold the file, can be uploaded)"
                )
                raise RequestFailed(f"VirusTotal has no record of file {file_hash}{hint}")
            body = await self._upload_artifact(entity, file_hash, trace)
        body = await self._refreshed(entity_type, file_hash, body, trace)
        rulesets = await self._yara_rulesets(body["data"], trace)
        report = await self._report(entity_type, file_hash, body, trace)
        report = await self._expanded(entity_type, file_hash, body, report, trace)
        return build_enrichment(
            stix_entity,
            entity_type,
            report,
            self.options,
            rulesets,
            requested_at=trace.requested_at,
        )

    async def _upload_artifact(
        self, entity: dict[str, Any], file_hash: str, trace: _Trace
    ) -> dict[str, Any]:
        files = [f for f in entity.get("importFiles") or [] if isinstance(f, dict) and f.get("id")]
        if not files:
            raise RequestFailed(
                f"VirusTotal has no record of file {file_hash} and the Artifact holds no file "
                "to upload"
            )
        limit = self.vt.max_upload_bytes
        size = files[0].get("size")
        if isinstance(size, int) and size > limit:
            raise RequestFailed(
                f"VirusTotal has no record of file {file_hash}, and the Artifact's file "
                f"({size} bytes) is above VirusTotal's upload limit of {limit} bytes"
            )
        data = await self._opencti(
            "serve the Artifact's file",
            self.cti.api.fetch_opencti_file_by_id,
            str(files[0]["id"]),
            True,
        )
        if not isinstance(data, bytes | bytearray) or not data:
            raise RequestFailed(f"OpenCTI did not serve the file of Artifact {file_hash}")
        analysis_id = await self.vt.upload_file(bytes(data), str(files[0].get("name") or ""))
        await self.vt.wait_for_analysis(analysis_id)
        body = await self._lookup("file", file_hash, trace, fresh=True)
        if body is None:
            raise RequestFailed(
                f"VirusTotal analysed the uploaded file {file_hash} but has no report for it"
            )
        return body

    async def _observable(
        self, entity_type: str, value: str, trace: _Trace, upload: bool
    ) -> dict[str, Any] | None:
        """The VT response for a network observable (URLs: VT's URL id, submitted if unseen)."""
        object_type = REPORT_KIND[entity_type]
        key = key_of(entity_type, value)
        body = await self._lookup(object_type, key, trace)
        if body is None and object_type == "url" and upload and self.settings.url_upload_unseen:
            analysis_id = await self.vt.submit_url(value)
            await self.vt.wait_for_analysis(analysis_id)
            body = await self._lookup(object_type, key, trace, fresh=True)
        return body

    async def _enrich_indicator(
        self, entity: dict[str, Any], stix_entity: dict[str, Any], trace: _Trace
    ) -> EnrichmentResult:
        values = entity.get("x_opencti_observable_values") or stix_entity.get(
            "x_opencti_observable_values"
        )
        wanted: list[tuple[str, str]] = []
        for item in values or []:
            if not isinstance(item, dict):
                continue
            kind, value = str(item.get("type") or ""), str(item.get("value") or "").strip()
            if kind in FILE_ENTITY_TYPES:
                value = best_hash({"hashes": _hash_dict(item.get("hashes"))}, {}) or value
            if kind in REPORT_KIND and value and (kind, value) not in wanted:
                wanted.append((kind, value))
        if not wanted:
            raise RequestFailed(
                "the Indicator has no observable value VirusTotal can look up "
                f"(supported: {', '.join(REPORT_KIND)})"
            )

        async def one(kind: str, value: str) -> tuple[str, str, dict[str, Any] | None, Any]:
            if kind in FILE_ENTITY_TYPES:
                body = await self._lookup("file", value, trace)
            else:
                body = await self._observable(kind, value, trace, upload=False)
            if body is None:
                return kind, value, None, None
            key = vt.url_id(value) if REPORT_KIND[kind] == "url" else value
            return kind, value, body, await self._expanded(kind, key, body, body["data"], trace)

        found = await asyncio.gather(*(one(kind, value) for kind, value in wanted))
        lookups = [(kind, value, data) for kind, value, _, data in found]
        if all(data is None for _, _, data in lookups):
            listed = ", ".join(value for _, value in wanted)
            raise RequestFailed(f"VirusTotal has no record of the Indicator's values: {listed}")
        rulesets: dict[str, dict[str, Any]] = {}
        for kind, _, body, _ in found:
            if body is not None and kind in FILE_ENTITY_TYPES:
                rulesets.update(await self._yara_rulesets(body["data"], trace))
        return build_indicator_enrichment(
            stix_entity, lookups, self.options, rulesets, requested_at=trace.requested_at
        )

    async def _lookup(
        self, object_type: str, object_id: str, trace: _Trace, fresh: bool = False
    ) -> dict[str, Any] | None:
        """A stored response inside the cache window, else VirusTotal's (stored before use)."""
        if not fresh:
            window = timedelta(hours=self.settings.lookup_cache_hours)
            stored = self.responses.recent(object_type, object_id, window, now=self.clock())
            if stored is not None:
                trace.cache_hits += 1
                trace.cached_at.append(stored.fetched_at)
                return stored.body
        relations = self.settings.relationships(object_type)  # embedded: no extra call
        body = await self.vt.lookup(object_type, object_id, relations)
        if body is not None:
            self.responses.put(object_type, object_id, body, now=self.clock())
        return body

    async def _report(
        self, entity_type: str, key: str, body: dict[str, Any], trace: _Trace
    ) -> dict[str, Any] | AnyReport:
        """What the mapping reads: the lookup's data, with the configured VT relations when
        there are (`virustotal/relations.py`: from the lookup, else one call per relation,
        cached like lookups; a relation that fails is kept with its reason)."""
        kind = REPORT_KIND[entity_type]
        wanted = self.settings.relationships(kind)
        report = read_report(kind, body["data"]) if wanted else None
        if report is None:
            return body["data"]
        window = timedelta(hours=self.settings.lookup_cache_hours)

        def recent(stored_type: str, object_id: str) -> dict[str, Any] | None:
            stored = self.responses.recent(stored_type, object_id, window, now=self.clock())
            if stored is None:
                return None
            trace.cache_hits += 1
            trace.cached_at.append(stored.fetched_at)
            return stored.body

        def store(stored_type: str, object_id: str, page: dict[str, Any]) -> None:
            self.responses.put(stored_type, object_id, page, now=self.clock())

        trace.relations = await fetch_relations(
            self.vt,
            kind,
            key,
            body,
            wanted,
            self.settings.relationships_limit,
            recent=recent,
            store=store,
        )
        return with_relations(report, trace.relations)

    async def _refreshed(
        self, entity_type: str, key: str, body: dict[str, Any], trace: _Trace
    ) -> dict[str, Any]:
        """The lookup, re-analysed first when VT's analysis is older than
        VIRUSTOTAL_RESCAN_OLDER_THAN_DAYS (files and URLs; `expansion_fetch.refresh`)."""
        kind = REPORT_KIND[entity_type]
        outcome = await refresh(
            self.vt,
            kind,
            key,
            body["data"],
            self.settings.rescan_older_than_days,
            trace.requested_at,
            lambda: self._lookup(kind, key, trace, fresh=True),
        )
        if outcome.message:
            trace.notes.append(outcome.message)
        return outcome.body or body

    async def _expanded(
        self,
        entity_type: str,
        key: str,
        body: dict[str, Any],
        report: dict[str, Any] | AnyReport,
        trace: _Trace,
    ) -> dict[str, Any] | AnyReport:
        """The report with the expansions the settings ask for (`expansion_fetch.py`: family,
        Sigma and IDS from the lookup; ATT&CK, Sigma rules, comments, GTI context one call
        each); an expansion that fails is left out, its reason in the work's message."""
        options = self.settings.expansion_options()
        wanted = options.any or any(
            getattr(self.options, name)
            for name in ("file_malware_family", "file_import_ids", "file_import_sigma")
        )
        kind = REPORT_KIND[entity_type]
        if not isinstance(report, Report):
            report = read_report(kind, body["data"]) if wanted else None
            if report is None:
                return body["data"]
        found = await self.expansions.expand(kind, key, body["data"], options)
        trace.cache_hits += found.cache_hits
        trace.notes += [f"{name} left out: {reason}" for name, reason in found.errors]
        return replace(report, expansions=found)

    async def _yara_rulesets(
        self, vt_object: Mapping[str, Any], trace: _Trace
    ) -> dict[str, dict[str, Any]]:
        """The crowdsourced rulesets a file matched, each fetched once per run (when enabled)."""
        if not self.options.file_import_yara:
            return {}
        results = (vt_object.get("attributes") or {}).get("crowdsourced_yara_results") or []
        ids = sorted(
            {str(r["ruleset_id"]) for r in results if isinstance(r, dict) and r.get("ruleset_id")}
        )
        for ruleset_id in ids:
            if ruleset_id not in self._rulesets:
                self._rulesets[ruleset_id] = asyncio.create_task(self._ruleset(ruleset_id, trace))
        fetched = await asyncio.gather(*(self._rulesets[i] for i in ids))
        return {i: body["data"] for i, body in zip(ids, fetched, strict=True) if body}

    async def _ruleset(self, ruleset_id: str, trace: _Trace) -> dict[str, Any] | None:
        window = timedelta(hours=self.settings.lookup_cache_hours)
        stored = self.responses.recent("yara_ruleset", ruleset_id, window, now=self.clock())
        if stored is not None:
            trace.cache_hits += 1
            return stored.body
        try:
            body = await self.vt.yara_ruleset(ruleset_id)
        except VirusTotalError as exc:
            if exc.code == "NotFoundError":  # a withdrawn ruleset: the rule is left out
                return None
            raise
        self.responses.put("yara_ruleset", ruleset_id, body, now=self.clock())
        return body

    # -- OpenCTI ---------------------------------------------------------------------------

    async def _opencti(self, what: str, call: Callable[..., T], *args: Any) -> T:
        """A blocking pycti call in a thread; its errors say what failed, never the token."""
        try:
            return await asyncio.to_thread(call, *args)
        except (OpenCTIError, RequestFailed):
            raise
        except Exception as exc:
            raise OpenCTIError(f"OpenCTI failed to {what}: {self._clip(exc)}") from None

    def _send_as_applicant(
        self, bundle: dict[str, Any], work_id: str | None, applicant_id: str | None
    ) -> int:
        """Send as pycti does for this request: on behalf of the user who asked, when known.

        pycti keeps the applicant on the shared helper, so sends are serialized while it is set.
        """
        if not work_id:
            raise RequestFailed("the request has no OpenCTI work to send the bundle with")
        if not applicant_id:
            return self.cti.send_into_work(bundle, work_id)
        helper = self.cti.helper
        with self.cti.applicant_lock:  # one per connector: every enricher of a drain shares it
            default = helper.applicant_id
            helper.applicant_id = applicant_id
            try:
                return self.cti.send_into_work(bundle, work_id)
            finally:
                helper.applicant_id = default

    async def _pass_through(self, request: EnrichmentRequest, outcome: Outcome, why: str) -> None:
        await self._opencti(
            "answer the playbook step",
            self.cti.answer_playbook,
            self._playbook_dict(request),
            unchanged_playbook_bundle(request.bundle or {}),
        )
        outcome.status = OUTCOME_PASSED
        outcome.message = f"{why}: the playbook bundle was passed through unchanged"

    async def _report_failure(self, request: EnrichmentRequest, outcome: Outcome) -> bool:
        """End the work in error with the reason; a failed playbook step passes its bundle on.
        False when OpenCTI could not be told (the sensor answers the request again later)."""
        try:
            if request.work_id:
                await self._opencti(
                    "close the work", self.cti.close_work, request.work_id, outcome.message, True
                )
            elif request.playbook is not None and request.bundle is not None:
                await self._opencti(
                    "answer the playbook step",
                    self.cti.answer_playbook,
                    self._playbook_dict(request),
                    unchanged_playbook_bundle(request.bundle),
                )
        except Exception as exc:
            outcome.message += f" (and reporting it to OpenCTI failed: {self._reason(exc)})"
            outcome.unreachable = isinstance(exc, OpenCTIUnavailable)
            return False
        return True

    def _playbook_dict(self, request: EnrichmentRequest) -> dict[str, Any]:
        """pycti's playbook dict, the step's execution starting now."""
        return request.pycti_playbook(self.clock().isoformat().replace("+00:00", "Z"))

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, RequestFailed | OpenCTIError | VirusTotalError):
            return self._clip(exc)
        return f"unexpected error ({type(exc).__name__}): {self._clip(exc)}"

    def _clip(self, exc: BaseException) -> str:
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return printable(text, 500)


def key_of(entity_type: str, value: str) -> str:
    """The id a network observable is looked up by on VT (a URL: VT's URL id)."""
    return vt.url_id(value) if REPORT_KIND[entity_type] == "url" else value


def best_hash(stix_entity: Mapping[str, Any], entity: Mapping[str, Any]) -> str | None:
    """SHA-256, else SHA-1, else MD5, from the STIX hashes or OpenCTI's hash list."""
    hashes = {**_hash_dict(entity.get("hashes")), **_hash_dict(stix_entity.get("hashes"))}
    for algorithm in HASH_PREFERENCE:
        value = str(hashes.get(algorithm) or "").strip()
        if _HASH_PATTERNS[algorithm].match(value):
            return value.lower()
    return None


def _hash_dict(value: Any) -> dict[str, str]:
    """STIX `{"SHA-256": v}` or OpenCTI's `[{"algorithm", "hash"}]` -> `{ALGORITHM: value}`."""
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, list):
        items = [(h.get("algorithm"), h.get("hash")) for h in value if isinstance(h, Mapping)]
    else:
        items = []
    normal = {"SHA256": "SHA-256", "SHA1": "SHA-1"}
    out: dict[str, str] = {}
    for algorithm, digest in items:
        if algorithm and digest:
            key = str(algorithm).upper()
            out[normal.get(key, key)] = str(digest)
    return out


def _label(entity: Mapping[str, Any]) -> str:
    for key in ("observable_value", "value", "name"):
        if entity.get(key):
            return printable(entity[key], 200)
    return printable(entity.get("standard_id") or entity.get("id") or "", 200)


async def answer_all(
    requests: Sequence[EnrichmentRequest],
    virustotal: VirusTotalResource,
    cti: OpenCTIConnector,
    settings: EnrichmentSettings,
    responses: ResponseStore,
    log: Any = None,
    secrets: Sequence[str] = (),
    on_answered: Callable[[Outcome], None] | None = None,
) -> tuple[list[Outcome], dict[str, Any]]:
    """Answer every request concurrently; the outcomes and the session's call metadata.
    `on_answered` is told of each request OpenCTI took the answer of, as soon as it did.
    A request whose VirusTotal call waits (a 429, a retry, a long quota wait) says why on its
    work, so an analyst never watches a silent "in progress"."""
    notices = WaitNotices(cti, {r.request_id: r.work_id for r in requests if r.work_id})
    async with virustotal.session(on_wait=notices.post) as session:
        secrets = [virustotal.api_key, *secrets]
        enricher = Enricher(session, cti, settings, responses, log, secrets=secrets)

        async def one(request: EnrichmentRequest) -> Outcome:
            outcome = await enricher.answer(request)
            if outcome.reported and on_answered is not None:
                on_answered(outcome)
            return outcome

        tasks: list[Awaitable[Outcome]] = [one(r) for r in requests]
        outcomes = list(await asyncio.gather(*tasks))
        return outcomes, session.log.as_metadata()


class WaitNotices:
    """`on_wait` for the enrichment's VT session: post why a request waits on its work
    (`to_received` with the message, which OpenCTI appends to the work's messages), at most
    once per `min_seconds` per request, never the same text twice in a row."""

    def __init__(
        self, cti: OpenCTIConnector, works: Mapping[str, str], min_seconds: float = 20.0
    ) -> None:
        self.cti = cti
        self.works = dict(works)
        self.min_seconds = min_seconds
        self._last: dict[str, tuple[float, str]] = {}

    async def post(self, scope: str, reason: str, seconds: float) -> None:
        work_id = self.works.get(scope)
        if not work_id:
            return
        now = time.monotonic()
        last = self._last.get(scope)
        if last is not None and (now - last[0] < self.min_seconds or last[1] == reason):
            return
        self._last[scope] = (now, reason)
        message = printable(f"vt_pipeline: {reason}", 500)
        await asyncio.to_thread(self.cti.mark_received, work_id, message)


# The run's table, narrow enough for the UI to show without breaking a word: the UI shares a
# table's width by its cells' lengths and breaks words to fit, so one long cell (a SHA-256, a
# work id, a sentence) broke "interactive" and "StixFile" mid-word. Cells stay short: the
# entity's type, its value (long ones cut, hashes to their first 16 characters), numbers, and
# the OpenCTI work's short id; each request's message, in full, is a line of `messages`.
_COLUMNS = (
    ("type", "string"),
    ("entity", "string"),
    ("outcome", "string"),
    ("score", "string"),
    ("objects", "int"),
    ("vt_calls", "int"),
    ("cache_hits", "int"),
    ("request_id", "string"),
)
# What an operator calls each kind of enrichment request.
_KIND_NAMES = {
    "interactive": "enrichment clicks",
    "auto": "auto-enrichment",
    "playbook": "playbook steps",
}
_ENTITY_CELL = 32
_HASH = re.compile(r"^[0-9a-fA-F]{32,128}$")
_WORK_ID = re.compile(r"^work_[0-9a-f-]{36}_(?P<work>[0-9a-f]{8})[0-9a-f-]{28}$")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def _value(outcome: Outcome, entity_type: str) -> str:
    """The entity's value alone (its type has a column), short enough for a table cell."""
    value = outcome.entity
    if entity_type and value.startswith(f"{entity_type} "):
        value = value[len(entity_type) + 1 :]
    if _HASH.match(value):
        return value[:16] + "…"
    return value if len(value) <= _ENTITY_CELL else value[: _ENTITY_CELL - 1] + "…"


def short_request_id(request_id: str) -> str:
    """An OpenCTI work id (`work_<connector>_<uuid>`) by its uuid's first 8 characters, as in
    the run's log lines; other request ids as they are."""
    match = _WORK_ID.match(request_id)
    return f"work {match['work']}" if match else request_id


def outcomes_metadata(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Per request a table row (entity, outcome, score, VT calls, cache hits) and a line of
    text with its message, plus the counts an operator plots: requests, enriched, failed (the
    rarer counts only when they happened)."""
    rows, lines = [], []
    for o in outcomes:
        entity_type = o.entity_type or o.request.entity_type or ""
        request = short_request_id(o.request.request_id)
        rows.append(
            dg.TableRecord(
                {
                    "type": entity_type,
                    "entity": _value(o, entity_type),
                    "outcome": o.status,
                    "score": "" if o.score is None else str(o.score),
                    "objects": o.objects,
                    "vt_calls": o.vt_calls,
                    "cache_hits": o.cache_hits,
                    "request_id": request,
                }
            )
        )
        text = f"{request}, {o.status}: {o.message}"
        lines.append("- " + _MD_SPECIAL.sub(r"\\\1", text))
    schema = dg.TableSchema(columns=[dg.TableColumn(name, kind) for name, kind in _COLUMNS])
    kinds = sorted({o.request.kind for o in outcomes})
    metadata: dict[str, Any] = {
        "requests": dg.MetadataValue.table(rows, schema=schema),
        "messages": dg.MetadataValue.md("\n".join(lines)),
        "kind": dg.MetadataValue.text(", ".join(_KIND_NAMES.get(k, k) for k in kinds) or "none"),
        **outcome_counts(outcomes),
    }
    return metadata


def outcome_counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    """The counts an operator plots: requests, enriched, failed (the rarer ones, passed
    through and cache hits, only when they happened)."""
    counts = {
        "requests_total": len(outcomes),
        "requests_enriched": sum(o.status == OUTCOME_ENRICHED for o in outcomes),
        "requests_failed": sum(o.status == OUTCOME_FAILED for o in outcomes),
    }
    passed = sum(o.status == OUTCOME_PASSED for o in outcomes)
    if passed:
        counts["requests_passed_through"] = passed
    cache_hits = sum(o.cache_hits for o in outcomes)
    if cache_hits:
        counts["cache_hits"] = cache_hits
    return counts


@dg.op(
    name=ENRICHMENT_OP,
    pool="virustotal",
    config_schema={
        "requests": dg.Field(
            [dg.Permissive()],
            description="The enrichment requests of this run (EnrichmentRequest.to_config()).",
        )
    },
    out=dg.Out(dg.Nothing),
)
def vt_enrichment(
    context: dg.OpExecutionContext,
    virustotal: VirusTotalResource,
    opencti: OpenCTIResource,
    enrichment_settings: EnrichmentSettings,
    storage: StorageResource,
) -> Any:
    """Answer every request of the batch; fail at the end if any of them failed."""
    requests: list[EnrichmentRequest] = []
    refused: list[str] = []
    for index, raw in enumerate(context.op_config["requests"]):
        try:
            requests.append(EnrichmentRequest.from_config(raw))
        except (InvalidRequest, TypeError) as exc:
            refused.append(f"request {index}: {exc}")
    responses = ResponseStore(storage.base_dir)

    def answered(outcome: Outcome) -> None:
        record_answered(
            context.instance, context.dagster_run, outcome.request.request_id, outcome.status
        )

    with opencti.connector("enrichment") as cti:
        outcomes, calls = asyncio.run(
            answer_all(
                requests,
                virustotal,
                cti,
                enrichment_settings,
                responses,
                context.log,
                secrets=[opencti.token],
                on_answered=answered,
            )
        )
    metadata = {**outcomes_metadata(outcomes), **calls}
    if refused:
        metadata["invalid_requests"] = dg.MetadataValue.md(
            "\n".join(f"- {printable(line, 500)}" for line in refused)
        )
    yield dg.Output(None, metadata=metadata)
    failed = [o for o in outcomes if o.status == OUTCOME_FAILED]
    if failed or refused:
        lines = [o.line for o in failed] + refused
        raise dg.Failure(
            description=f"{len(lines)} of {len(outcomes) + len(refused)} enrichment request(s) "
            "failed; their OpenCTI works are in error. Re-execute the run to repeat the batch.\n"
            + "\n".join(lines[:20]),
            metadata={"failed_requests": dg.MetadataValue.json(lines)},
        )


@dg.job(
    name=ENRICHMENT_JOB,
    description="Answer OpenCTI enrichment requests with VirusTotal (the sensor's runs).",
    tags={"vt_pipeline/domain": "enrichment"},
)
def vt_enrichment_job() -> None:
    vt_enrichment()
