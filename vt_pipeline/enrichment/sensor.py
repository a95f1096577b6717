"""`opencti_enrichment_sensor`: OpenCTI enrichment requests -> batched `vt_enrichment_job` runs.

Never loses and never doubles a request, whatever crashes when:
- messages are read from the enrichment connector's listen queue WITHOUT acknowledging;
- new requests go into batches (one kind per batch, up to the batch size); each batch gets a
  run key derived from its request ids, and the cursor remembers, per run key, which requests
  it carries (`pending`);
- on a later tick, a pending run key whose run exists in the instance moves its requests to
  `done` (those the run's config really carries); a message whose request is done is then
  acknowledged - a duplicate delivery included, so it never gets a second run;
- a re-read message whose run does not exist yet re-requests the SAME run key (the daemon
  creates a run key once, so a tick that was resumed or half-done gives no second run); a
  request of a run key whose run exists without it is batched again, under a new key;
- from then on the run holds the request: the cursor keeps the run (`running`) until it has
  ended; a run that ended without answering every request (killed, its daemon or machine dead,
  OpenCTI unreachable at the end) has them answered again by one new run, or closed in error
  after `recovery.MAX_ATTEMPTS` runs (see `recovery.py`);
- a malformed message, an entity type vt_pipeline cannot enrich, an entity outside the
  connector's scope, an auto-enrichment with CONNECTOR_AUTO off are reported on their work
  (in error, with the reason) - a playbook step gets its bundle passed through unchanged -
  and acknowledged; the sensor goes on with the rest. OpenCTI refusing that report (a work it
  no longer knows) is logged and the message acknowledged too; only an unreachable OpenCTI
  leaves the message queued for a later tick.

The daemon stores a tick's cursor with the run requests it reserved and resumes an interrupted
tick, and the cursor is lost when a tick raises: nothing here relies on more than that.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from vt_pipeline.config import env_int, invalid, one_of, parse_list
from vt_pipeline.enrichment import recovery
from vt_pipeline.enrichment.drain import DrainLimits, drain_run_config
from vt_pipeline.enrichment.requests import (
    DRAIN_JOB,
    ENRICHMENT_JOB,
    EnrichmentRequest,
    InvalidRequest,
    enrichment_run_config,
    parse_request,
    printable,
    refusal,
    stamped,
)
from vt_pipeline.opencti.listen_queue import ListenQueue, QueueMessage
from vt_pipeline.opencti.resource import (
    OpenCTIConnector,
    OpenCTIResource,
    OpenCTIUnavailable,
)

SENSOR_NAME = "opencti_enrichment_sensor"
DRAIN_SENSOR_NAME = "opencti_enrichment_drain_sensor"
# Below the daemon's 5 s loop, so every loop evaluates it: a click at idle is read within
# about 5 s (with 5 here, a loop landing just short of it would wait for the next: 10 s).
MINIMUM_INTERVAL_SECONDS = 3
RUN_KEY_TAG = "dagster/run_key"
PARENT_RUN_TAG = "dagster/parent_run_id"  # set on a re-execution from the UI
TAG_REQUESTS = "vt_pipeline/enrichment_requests"
TAG_KIND = "vt_pipeline/kind"
CURSOR_VERSION = 1
# A pending run key whose messages were not seen for this long is forgotten (longer than the
# daemon's 24 h window for resuming an interrupted tick, so no resumed run can still follow).
PENDING_TTL_SECONDS = 3 * 24 * 3600


MODE_DRAIN = "drain"
MODE_BATCH = "batch"
DRAIN_KEY_PREFIX = "vt_enrichment_drain:"
# A drain run's successor is launched this long before the run stops taking requests, so that
# one is always reading: the successor's process starts while the old one still answers.
HANDOVER_SECONDS = 60.0
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class SensorSettings:
    """How much one tick does, and how requests become runs. From `VT_PIPELINE_ENRICHMENT_*`
    with `from_env`.

    `mode`: `drain` (default) keeps one `vt_enrichment_drain_job` run reading the queue and
    answering as requests arrive (`drain.py`): a click is answered in about a second instead of
    a tick plus a run start. `batch` is the earlier design: each tick reads the queue and makes
    runs of up to `batch_size` requests each (one process start per batch).
    """

    tick_seconds: float = 20.0  # well inside Dagster's 60 s evaluation limit
    batch_size: int = 20  # requests per run
    max_messages: int = 1000  # messages read per tick
    done_memory: int = 2000  # finished request ids remembered (duplicate deliveries)
    mode: str = MODE_DRAIN
    drain: DrainLimits = field(default_factory=DrainLimits)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SensorSettings:
        """`VT_PIPELINE_ENRICHMENT_TICK_SECONDS` (1-50), `..._BATCH_SIZE` (1-500), `..._MODE`
        (drain, batch), `..._DRAIN_MAX_SECONDS` (120-86400), `..._DRAIN_IDLE_SECONDS` (0, or
        10-86400), `..._CONCURRENCY` (1-200), `..._BACKLOG` (10-20000)."""
        source = os.environ if env is None else env
        raw_mode = source.get("VT_PIPELINE_ENRICHMENT_MODE", "").strip() or MODE_DRAIN
        idle = env_int("VT_PIPELINE_ENRICHMENT_DRAIN_IDLE_SECONDS", 0, env, 0, 86400)
        if 0 < idle < 10:
            raise invalid(
                "VT_PIPELINE_ENRICHMENT_DRAIN_IDLE_SECONDS",
                str(idle),
                "0 (never idle out) or 10-86400",
            )
        return cls(
            tick_seconds=env_int("VT_PIPELINE_ENRICHMENT_TICK_SECONDS", 20, env, 1, 50),
            batch_size=env_int("VT_PIPELINE_ENRICHMENT_BATCH_SIZE", 20, env, 1, 500),
            mode=one_of("VT_PIPELINE_ENRICHMENT_MODE", raw_mode, (MODE_DRAIN, MODE_BATCH)),
            drain=DrainLimits(
                max_seconds=env_int(
                    "VT_PIPELINE_ENRICHMENT_DRAIN_MAX_SECONDS", 3600, env, 120, 86400
                ),
                idle_seconds=idle,
                concurrency=env_int("VT_PIPELINE_ENRICHMENT_CONCURRENCY", 16, env, 1, 200),
                backlog=env_int("VT_PIPELINE_ENRICHMENT_BACKLOG", 2000, env, 10, 20000),
            ),
        )


@dataclass
class EnrichmentCursor:
    """What the sensor remembers between ticks (JSON in the sensor's cursor)."""

    pending: dict[str, list[str]] = field(default_factory=dict)  # run key -> request ids
    seen: dict[str, float] = field(default_factory=dict)  # run key -> when last requested
    done: list[str] = field(default_factory=list)  # oldest first
    running: dict[str, float] = field(default_factory=dict)  # run id -> when found; not ended

    @classmethod
    def parse(cls, raw: str | None) -> EnrichmentCursor:
        """An unreadable cursor starts afresh: messages stay queued until their run exists."""
        if not raw:
            return cls()
        try:
            data = json.loads(raw)
            pending = {str(k): [str(i) for i in v] for k, v in data["pending"].items()}
            seen = {str(k): float(v) for k, v in data.get("seen", {}).items()}
            running = {str(k): float(v) for k, v in data.get("running", {}).items()}
            done = [str(i) for i in data["done"]]
            return cls(pending=pending, seen=seen, done=done, running=running)
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": CURSOR_VERSION,
                "pending": self.pending,
                "seen": self.seen,
                "done": self.done,
                "running": self.running,
            },
            separators=(",", ":"),
        )

    def request(self, key: str, request_ids: Sequence[str], now: float) -> None:
        self.pending.setdefault(key, list(request_ids))
        self.seen[key] = now

    def forget(self, key: str) -> None:
        self.pending.pop(key, None)
        self.seen.pop(key, None)

    def forget_stale(self, requested: set[str], now: float) -> None:
        """Pending keys neither requested this tick nor for `PENDING_TTL_SECONDS`: their
        messages left the queue some other way (purged); if one comes back it is new again."""
        for key in list(self.pending):
            if key not in requested and now - self.seen.get(key, now) > PENDING_TTL_SECONDS:
                self.forget(key)

    def key_of(self) -> dict[str, str]:
        return {rid: key for key, ids in self.pending.items() for rid in ids}

    def finish(self, request_ids: Sequence[str], memory: int) -> None:
        known = set(self.done)
        self.done.extend(rid for rid in request_ids if rid not in known)
        del self.done[: max(0, len(self.done) - memory)]


@dataclass
class TickReport:
    """What one tick did, for the tick log and the skip reason."""

    read: int = 0
    new: int = 0
    rerequested: int = 0
    already_run: int = 0
    refused: int = 0
    passed_through: int = 0
    acknowledged: int = 0
    left: int = 0
    retried: int = 0  # requests of ended runs sent again in a new run
    abandoned: int = 0  # requests of ended runs closed in error (tried too often)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"read {self.read} message(s)",
            f"{self.new} new request(s)",
            f"{self.rerequested} re-requested",
            f"{self.already_run} already run",
            f"{self.refused} refused",
            f"{self.passed_through} playbook pass-through",
            f"{self.acknowledged} acknowledged",
        ]
        if self.left:
            parts.append(f"{self.left} left for the next tick")
        if self.retried:
            parts.append(f"{self.retried} request(s) of ended runs sent again")
        if self.abandoned:
            parts.append(f"{self.abandoned} request(s) of ended runs closed in error")
        text = ", ".join(parts)
        return text + ("; " + "; ".join(self.problems[:5]) if self.problems else "")


def run_key(requests: Sequence[EnrichmentRequest]) -> str:
    """Unique forever per set of requests: the first request id, the count and a digest."""
    ids = [r.request_id for r in requests]
    digest = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
    return f"vt_enrichment:{ids[0]}+{len(ids) - 1}:{digest}"


def run_request(key: str, requests: Sequence[EnrichmentRequest]) -> dg.RunRequest:
    kinds = sorted({r.kind for r in requests})
    return dg.RunRequest(
        run_key=key,
        job_name=ENRICHMENT_JOB,
        run_config=enrichment_run_config(requests),
        tags={TAG_REQUESTS: str(len(requests)), TAG_KIND: ",".join(kinds)},
    )


def batches(requests: Sequence[EnrichmentRequest], size: int) -> Iterator[list[EnrichmentRequest]]:
    """Arrival order, one kind per batch (the UI filters runs by kind), at most `size` each."""
    by_kind: dict[str, list[EnrichmentRequest]] = {}
    for request in requests:
        by_kind.setdefault(request.kind, []).append(request)
    for same_kind in by_kind.values():
        for start in range(0, len(same_kind), size):
            yield same_kind[start : start + size]


def requests_in_run(run: dg.DagsterRun) -> set[str]:
    """The request ids a run's config carries (what it will answer)."""
    return {
        str(item["request_id"]) for item in recovery.request_configs(run) if item.get("request_id")
    }


def resolve_pending(instance: dg.DagsterInstance, cursor: EnrichmentCursor, memory: int) -> None:
    """Pending run keys whose run exists: their requests are done (or batched again), and the
    run is watched until it ends."""
    now = time.time()
    for key in list(cursor.pending):
        runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: key}))
        if not runs:
            continue
        carried = set().union(*(requests_in_run(run) for run in runs))
        cursor.finish([rid for rid in cursor.pending[key] if rid in carried], memory)
        cursor.forget(key)  # the others (not in the run) are new again when re-read
        for run in runs:
            cursor.running.setdefault(run.run_id, now)


def recover_ended_runs(
    instance: dg.DagsterInstance,
    cursor: EnrichmentCursor,
    cti: OpenCTIConnector,
    deadline: float,
    report: TickReport,
    log: Any,
) -> list[dg.RunRequest]:
    """Runs the cursor watches that ended: forget those that answered everything; the others'
    unanswered requests go to one retry run, or are closed in error (see `recovery.py`).
    A run is forgotten only once that is done, so a crash at any point repeats it harmlessly."""
    requests: list[dg.RunRequest] = []
    todo = list(cursor.running)
    while todo:
        found = {r.run_id: r for r in instance.get_runs(filters=dg.RunsFilter(run_ids=todo))}
        todo, later = [], todo
        for run_id in later:
            run = found.get(run_id)
            if run is None or run.status == dg.DagsterRunStatus.SUCCESS:
                cursor.running.pop(run_id, None)  # deleted, or every request answered
                continue
            if run.status not in recovery.ENDED_BADLY:
                continue  # queued or still running
            if time.monotonic() > deadline:
                report.left += 1
                continue
            existing = instance.get_runs(
                filters=dg.RunsFilter(tags={RUN_KEY_TAG: recovery.retry_key(run_id)}), limit=1
            ) or instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_TAG: run_id}), limit=1)
            if existing:  # its retry run (or an operator's re-execution) is watched now
                retry_run = existing[0]
                if retry_run.run_id not in cursor.running:
                    cursor.running[retry_run.run_id] = time.time()
                    todo.append(retry_run.run_id)  # judged in this tick too
                outcome = (
                    f"the requests it had not answered were sent again in run "
                    f"{retry_run.run_id} (attempt {recovery.attempt_of(retry_run)} of "
                    f"{recovery.MAX_ATTEMPTS})"
                )
            else:
                try:
                    outcome, retry = _recover(instance, run, cti, report, log)
                except OpenCTIUnavailable as exc:  # cannot check or close works now
                    report.problems.append(
                        f"run {run_id}: OpenCTI unreachable: {printable(exc, 200)}"
                    )
                    continue
                except Exception as exc:  # one run's trouble never sinks the tick
                    report.problems.append(f"run {run_id}: {printable(exc, 200)}")
                    log.exception(f"{SENSOR_NAME}: could not settle ended run {run_id}")
                    continue
                if retry is not None:
                    requests.append(retry)  # asked (again) until its run exists
                    continue
            if recovery.OUTCOME_TAG not in run.tags:
                instance.add_run_tags(run_id, {recovery.OUTCOME_TAG: outcome})
                log.warning(
                    f"{SENSOR_NAME}: enrichment run {run_id} ended {run.status.value}: {outcome}"
                )
            cursor.running.pop(run_id, None)
    return requests


def _recover(
    instance: dg.DagsterInstance,
    run: dg.DagsterRun,
    cti: OpenCTIConnector,
    report: TickReport,
    log: Any,
) -> tuple[str, dg.RunRequest | None]:
    """What to do with one ended run's unanswered requests: (its outcome, None) when they are
    settled (answered, or closed in error now), ("", the retry's run request) otherwise."""
    left = [
        r for r in recovery.unanswered(instance, run) if not recovery.answered_on_opencti(cti, r)
    ]
    if not left:
        return "every request was answered", None
    attempt = recovery.attempt_of(run)
    if attempt < recovery.MAX_ATTEMPTS:
        key = recovery.retry_key(run.run_id)
        report.retried += len(left)
        retry = dg.RunRequest(
            run_key=key,
            job_name=ENRICHMENT_JOB,
            run_config=enrichment_run_config(left),
            tags=recovery.retry_tags(run, left),
        )
        return "", retry  # the outcome is said once the retry run exists
    reason = printable(
        f"vt_pipeline: this request was not answered: {attempt} enrichment runs ended before "
        f"answering it (last: run {run.run_id}, {recovery.death_reason(instance, run)}); not "
        "tried again. Ask for the enrichment again if it is still wanted.",
        1500,
    )
    for request in left:
        recovery.end_request(cti, request, request.work_id, reason, log)
    report.abandoned += len(left)
    return f"{len(left)} request(s) it had not answered were closed in error: {reason}", None


def evaluate(
    context: dg.SensorEvaluationContext, opencti: OpenCTIResource, settings: SensorSettings
) -> dg.SensorResult:
    """One tick: bounded by `settings.tick_seconds`."""
    deadline = time.monotonic() + settings.tick_seconds
    if not opencti.configured:
        return dg.SensorResult(
            skip_reason="OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN",
            cursor=context.cursor,
        )
    cursor = EnrichmentCursor.parse(context.cursor)
    resolve_pending(context.instance, cursor, settings.done_memory)
    report = TickReport()
    requests: list[dg.RunRequest] = []
    scope = {t.lower() for t in parse_list(opencti.enrichment_connector_scope)}
    if settings.mode == MODE_DRAIN:
        return _settle_only(context, opencti, settings, cursor, report, deadline)
    with (
        opencti.connector("enrichment", deadline=deadline) as cti,
        ListenQueue.of(cti) as queue,
    ):
        # pycti waits up to 300 s per call by default: no call may outlive the tick.
        cti.api.session_requests_timeout = max(0.2, deadline - time.monotonic())
        # Half of what is left for reading; the rest for reports, acks and run requests.
        messages = queue.read(settings.max_messages, max(0.0, deadline - time.monotonic()) / 2)
        report.read = len(messages)
        plan = _sort(messages, cursor, scope, opencti.connector_auto, report)
        to_ack = list(plan.finished)
        margin = settings.tick_seconds / 10  # for the acks and the run requests
        for message, request, reason, work_id in plan.refusals:
            remaining = deadline - margin - time.monotonic()
            if remaining <= 0:
                report.left += 1  # stays queued: reported on a later tick
                continue
            cti.api.session_requests_timeout = max(0.2, remaining)
            if _report_refusal(cti, request, reason, work_id, report, context.log):
                to_ack.append(message)
                if request is not None:
                    cursor.finish([request.request_id], settings.done_memory)
        report.acknowledged = queue.ack(to_ack)
        cti.api.session_requests_timeout = max(0.2, deadline - margin - time.monotonic())
        requests += recover_ended_runs(
            context.instance, cursor, cti, deadline - margin, report, context.log
        )
    now = time.time()
    stamp = datetime.now(UTC)
    for key, carried in plan.rerequest.items():
        order = {rid: i for i, rid in enumerate(cursor.pending[key])}
        requests.append(run_request(key, sorted(carried, key=lambda r: order[r.request_id])))
        cursor.request(key, cursor.pending[key], now)
    new = [stamped(r, stamp) for r in plan.new]
    for batch in batches(new, settings.batch_size):
        key = run_key(batch)
        cursor.request(key, [r.request_id for r in batch], now)
        requests.append(run_request(key, batch))
    cursor.forget_stale({r.run_key for r in requests if r.run_key}, now)
    summary = report.summary()
    context.log.info(f"{SENSOR_NAME}: {summary}; {len(requests)} run request(s)")
    if not requests:
        return dg.SensorResult(skip_reason=summary, cursor=cursor.to_json())
    return dg.SensorResult(run_requests=requests, cursor=cursor.to_json())


def _settle_only(
    context: dg.SensorEvaluationContext,
    opencti: OpenCTIResource,
    settings: SensorSettings,
    cursor: EnrichmentCursor,
    report: TickReport,
    deadline: float,
) -> dg.SensorResult:
    """Drain mode: the drain run reads the queue (`opencti_enrichment_drain_sensor` keeps one
    alive); this sensor only settles the batch runs it still watches (their retries)."""
    requests: list[dg.RunRequest] = []
    if cursor.running:
        margin = settings.tick_seconds / 10
        with opencti.connector("enrichment", deadline=deadline) as cti:
            cti.api.session_requests_timeout = max(0.2, deadline - margin - time.monotonic())
            requests = recover_ended_runs(
                context.instance, cursor, cti, deadline - margin, report, context.log
            )
    summary = f"drain mode: {DRAIN_SENSOR_NAME} keeps a {DRAIN_JOB} run reading the queue"
    if report.problems or report.retried or report.abandoned:
        summary += "; " + report.summary()
    if not requests:
        return dg.SensorResult(skip_reason=summary, cursor=cursor.to_json())
    context.log.info(f"{SENSOR_NAME}: {summary}")
    return dg.SensorResult(run_requests=requests, cursor=cursor.to_json())


def evaluate_drain(
    context: dg.SensorEvaluationContext, opencti: OpenCTIResource, settings: SensorSettings
) -> dg.SensorResult:
    """One tick of the drain sensor: a drain run when none is reading (see `drain_wait_reason`)."""
    if settings.mode != MODE_DRAIN:
        return dg.SensorResult(skip_reason=f"batch mode: {SENSOR_NAME} makes the runs")
    if not opencti.configured:
        return dg.SensorResult(
            skip_reason="OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN"
        )
    why_not = drain_wait_reason(context.instance, settings.drain, time.time())
    deadline = time.monotonic() + settings.tick_seconds
    # Registering on every tick (as the batch sensor does) keeps the connector known to
    # OpenCTI, its queue included, whether or not a drain run is up: clicks are never refused.
    with opencti.connector("enrichment", deadline=deadline) as cti:
        if why_not is None and settings.drain.idle_seconds:
            with ListenQueue.of(cti) as queue:  # idled out: the next starts when one waits
                if not queue.depth():
                    why_not = "no drain run is reading and the queue is empty"
    if why_not is not None:
        return dg.SensorResult(skip_reason=why_not)
    return dg.SensorResult(run_requests=[drain_run_request(settings.drain, time.time())])


def drain_run_request(limits: DrainLimits, now: float) -> dg.RunRequest:
    """A new drain run; its run key is unique per tick second (a resumed tick gives no second)."""
    return dg.RunRequest(
        run_key=f"{DRAIN_KEY_PREFIX}{int(now)}",
        job_name=DRAIN_JOB,
        run_config=drain_run_config(limits),
        # The run queue starts it before Livehunt and backfill runs waiting for a slot.
        tags={TAG_KIND: "drain", "dagster/priority": "10"},
    )


def drain_wait_reason(instance: dg.DagsterInstance, limits: DrainLimits, now: float) -> str | None:
    """Why no drain run should be launched now (None: launch one): one is waiting to start or
    is reading and not near its end; or the last ones failed one after the other (a back-off of
    10 s doubling per failure, at most 5 minutes, so a broken deployment is not relaunched
    every tick)."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=DRAIN_JOB, statuses=ACTIVE), limit=5
    )
    for record in records:
        started = record.start_time
        if started is None or now < started + limits.max_seconds - HANDOVER_SECONDS:
            return f"drain run {record.dagster_run.run_id} is reading the queue"
    recent = instance.get_run_records(filters=dg.RunsFilter(job_name=DRAIN_JOB), limit=5)
    failures = 0
    for record in recent:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    if failures and recent[0].end_time is not None:
        wait = min(300.0, 10.0 * 2 ** (failures - 1))
        if now < recent[0].end_time + wait:
            return (
                f"the last {failures} drain run(s) failed; the next starts after "
                f"{int(recent[0].end_time + wait - now)} s"
            )
    return None


@dataclass
class _Plan:
    finished: list[QueueMessage] = field(default_factory=list)  # ack: their run exists
    rerequest: dict[str, list[EnrichmentRequest]] = field(default_factory=dict)
    new: list[EnrichmentRequest] = field(default_factory=list)
    refusals: list[tuple[QueueMessage, EnrichmentRequest | None, str, str | None]] = field(
        default_factory=list
    )


def _sort(
    messages: Sequence[QueueMessage],
    cursor: EnrichmentCursor,
    scope: set[str],
    auto_allowed: bool,
    report: TickReport,
) -> _Plan:
    plan = _Plan()
    done = set(cursor.done)
    pending = cursor.key_of()
    seen: set[str] = set()
    for message in messages:
        try:
            request = parse_request(message.body)
        except InvalidRequest as exc:
            plan.refusals.append(
                (message, None, f"malformed enrichment request: {exc}", exc.work_id)
            )
            continue
        rid = request.request_id
        if rid in done or rid in seen:  # its run exists, or a second copy in this read
            plan.finished.append(message)
            report.already_run += 1
            continue
        seen.add(rid)
        if rid in pending:
            plan.rerequest.setdefault(pending[rid], []).append(request)
            report.rerequested += 1
            continue
        reason = refusal(request, scope, auto_allowed)
        if reason is not None:
            plan.refusals.append((message, request, reason, request.work_id))
            continue
        plan.new.append(request)
        report.new += 1
    return plan


def _report_refusal(
    cti: OpenCTIConnector,
    request: EnrichmentRequest | None,
    reason: str,
    work_id: str | None,
    report: TickReport,
    log: Any,
) -> bool:
    """Tell OpenCTI (work in error, or the playbook bundle passed through). True: the message
    can go (reported, or refused by OpenCTI: a work it no longer knows); False: OpenCTI is
    unreachable, the message stays queued for a later tick."""
    reason = printable(reason, 2000)
    try:
        ended = recovery.end_request(cti, request, work_id, reason, log)
    except OpenCTIUnavailable as exc:  # down or restarting: reported on a later tick
        report.problems.append(f"OpenCTI unreachable, will report later: {printable(exc, 200)}")
        return False
    if ended == "passed through":
        report.passed_through += 1
        step = request.request_id if request is not None else ""
        log.info(f"playbook step {printable(step, 200)}: bundle passed through ({reason})")
        return True
    if ended == "no work":
        log.warning(f"enrichment message dropped, no work to report it on: {reason}")
    report.refused += 1  # reported on its work, or refused by OpenCTI (logged): it can go
    return True


def build_enrichment_sensor(
    settings: SensorSettings | None = None,
    default_status: dg.DefaultSensorStatus | None = None,
    name: str = SENSOR_NAME,
) -> dg.SensorDefinition:
    """The sensor with these settings (default: from the environment).

    Default status: RUNNING when `OPENCTI_URL` is set (what an enrichment connector does),
    else STOPPED; started without OpenCTI it skips, saying so.
    """
    settings = settings or SensorSettings.from_env()
    default_status = default_status or _running_with_opencti()

    @dg.sensor(
        name=name,
        job_name=ENRICHMENT_JOB,
        minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
        default_status=default_status,
        description=_description(settings),
    )
    def _sensor(context: dg.SensorEvaluationContext, opencti: OpenCTIResource) -> dg.SensorResult:
        return evaluate(context, opencti, settings)

    return _sensor


def build_drain_sensor(
    settings: SensorSettings | None = None,
    default_status: dg.DefaultSensorStatus | None = None,
    name: str = DRAIN_SENSOR_NAME,
) -> dg.SensorDefinition:
    """The sensor that keeps one drain run reading the queue (drain mode); its default status
    is the enrichment sensor's (RUNNING when `OPENCTI_URL` is set)."""
    settings = settings or SensorSettings.from_env()
    default_status = default_status or _running_with_opencti()
    idle = settings.drain.idle_seconds

    @dg.sensor(
        name=name,
        job_name=DRAIN_JOB,
        minimum_interval_seconds=MINIMUM_INTERVAL_SECONDS,
        default_status=default_status,
        description=(
            f"Keeps one {DRAIN_JOB} run reading OpenCTI's enrichment requests and answering "
            f"them as they arrive: each run lives {int(settings.drain.max_seconds)} s"
            + (
                f" or until idle {int(idle)} s (the next starts when a request waits)"
                if idle
                else ""
            )
            + f"; its successor starts {int(HANDOVER_SECONDS)} s before it ends. Batch mode: "
            "skips."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext, opencti: OpenCTIResource) -> dg.SensorResult:
        return evaluate_drain(context, opencti, settings)

    return _sensor


def _running_with_opencti() -> dg.DefaultSensorStatus:
    """RUNNING when `OPENCTI_URL` is set (what an enrichment connector does), else STOPPED."""
    if os.environ.get("OPENCTI_URL", "").strip():
        return dg.DefaultSensorStatus.RUNNING
    return dg.DefaultSensorStatus.STOPPED


def _description(settings: SensorSettings) -> str:
    what = "OpenCTI enrichment requests (clicks, auto-enrichment, playbook steps)"
    if settings.mode == MODE_DRAIN:
        return (
            f"{what}: drain mode, {DRAIN_SENSOR_NAME} keeps a {DRAIN_JOB} run reading the "
            "queue; this sensor settles the batch runs that died (their retries)."
        )
    return (
        f"{what} from the enrichment connector's queue, up to {settings.batch_size} per run; a "
        "request leaves the queue once its run exists."
    )


opencti_enrichment_sensor = build_enrichment_sensor()
opencti_enrichment_drain_sensor = build_drain_sensor()
