"""`vt_enrichment_drain_job`: one long-lived run that answers enrichment requests as they arrive.

Why: a run per batch costs a sensor tick (up to the daemon's 5 s loop) and a run process start
(3-9 s on a small machine) before any work; the work of a click is well under a second. A drain
run pays that once: it reads the enrichment connector's listen queue itself, every
`poll_seconds`, and answers each request as soon as it is read, like upstream's connector loop,
but concurrently and by priority. The sensor keeps one drain run alive (`sensor.py`).

Never lose, never double:
- a message is acknowledged only after OpenCTI took its answer and the run recorded it
  (`recovery.record_answered`): until then it is unacknowledged on this run's channel, and a
  run that dies (killed, its machine gone) gives it back to the queue, where the next drain run
  reads it again, flagged `redelivered` by RabbitMQ;
- a redelivered request is answered only if no earlier run recorded its answer and its OpenCTI
  work is not complete (the run died between the answer and the acknowledgement); a redelivered
  request is recorded as taken (`TAKEN_KEY`) before it is tried, and one that earlier runs took
  `recovery.MAX_ATTEMPTS` times without answering (a request that kills its run) is closed in
  error instead of being tried again;
- a second copy of a message in the same run is acknowledged at once: its first copy is the one
  being answered;
- RabbitMQ or OpenCTI unreachable stops the run (it ends failed, saying so) instead of holding
  requests it cannot answer: what it read and did not answer goes back
  to the queue when its channel closes, and the sensor's next drain run (after a back-off)
  takes over. A request OpenCTI answers and refuses (a work it deleted) is logged and dropped:
  asking again would never succeed.

Clicks first: the run reads ahead up to `backlog` messages (so a click behind 2,000 automatic
requests in the queue is seen within one poll) and starts the waiting requests by kind:
interactive, then playbook steps, then auto-enrichment, at most `concurrency` at a time. Each kind
has its own VirusTotal session, so the deployment's quota budget serves an analyst's click before
automatic work (`virustotal/budget.py`).

Visible and replayable: each request answered is an engine event in the run's log (its request
id and outcome) and a log line with its message; at the end the run's output has the per-request
table of `vt_enrichment_job` and `replay_config`, the run config with which `vt_enrichment_job`
answers the same requests again. Re-executing a drain run from the UI starts a new drain.
"""

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType, EngineEventData

from vt_pipeline.config import parse_list
from vt_pipeline.enrichment import recovery
from vt_pipeline.enrichment.job import (
    OUTCOME_FAILED,
    Enricher,
    Outcome,
    WaitNotices,
    outcome_counts,
    outcomes_metadata,
)
from vt_pipeline.enrichment.requests import (
    DRAIN_JOB,
    DRAIN_OP,
    KIND_AUTO,
    KIND_INTERACTIVE,
    KIND_PLAYBOOK,
    EnrichmentRequest,
    InvalidRequest,
    enrichment_run_config,
    parse_request,
    printable,
    refusal,
    stamped,
)
from vt_pipeline.enrichment.settings import EnrichmentSettings
from vt_pipeline.opencti.listen_queue import ListenQueue, ListenQueueError, QueueMessage
from vt_pipeline.opencti.resource import OpenCTIConnector, OpenCTIResource, OpenCTIUnavailable
from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.storage.store import StorageResource
from vt_pipeline.virustotal.resource import VirusTotalResource

TAKEN_KEY = "vt_pipeline/taken_request"
PRIORITY = {KIND_INTERACTIVE: 0, KIND_PLAYBOOK: 1, KIND_AUTO: 2}
# The output's table keeps the last requests only: a drain run may answer thousands.
TABLE_ROWS = 500
# Earlier drain runs read for what they answered, when a redelivered request comes.
HISTORY_RUNS = 20


@dataclass(frozen=True)
class DrainLimits:
    """How long a drain run lives and how much it holds (its op config)."""

    max_seconds: float = 3600.0  # stop taking requests after this long
    idle_seconds: float = 0.0  # stop after this long with nothing to do; 0: at max_seconds
    concurrency: int = 16  # requests answered at once
    backlog: int = 2000  # messages held at most (read ahead of what is being answered)
    poll_seconds: float = 0.1  # how often the queue is read

    def to_config(self) -> dict[str, Any]:
        return {
            "max_seconds": self.max_seconds,
            "idle_seconds": self.idle_seconds,
            "concurrency": self.concurrency,
            "backlog": self.backlog,
        }


def drain_run_config(limits: DrainLimits) -> dict[str, Any]:
    return {"ops": {DRAIN_OP: {"config": limits.to_config()}}}


@dataclass
class DrainReport:
    """What a drain run did, beyond its outcomes."""

    outcomes: list[Outcome] = field(default_factory=list)
    refused: int = 0
    duplicates: int = 0
    already_answered: int = 0
    abandoned: int = 0
    released: int = 0  # read but not started when the run stopped: back to the queue
    unreported: int = 0  # answered but OpenCTI did not take it: back to the queue
    stopped: str = ""  # why the run stopped early (OpenCTI or RabbitMQ unreachable)

    def counts(self) -> dict[str, int]:
        return {
            "requests_refused": self.refused,
            "duplicate_messages": self.duplicates,
            "already_answered": self.already_answered,
            "requests_abandoned": self.abandoned,
            "returned_to_queue": self.released + self.unreported,
        }


class History:
    """What earlier drain runs did with a request: answered it, or took it without answering.
    Read only when a redelivered message comes (after a crash), and cached per ended run."""

    def __init__(self, instance: dg.DagsterInstance | None, own_run_id: str) -> None:
        self.instance = instance
        self.own_run_id = own_run_id
        self._ended: dict[str, tuple[set[str], set[str]]] = {}

    def of(self, request_id: str) -> tuple[bool, int]:
        """(answered by an earlier run, how many earlier runs took it without answering)."""
        answered, taken = False, 0
        for run_answered, run_taken in self._runs():
            answered = answered or request_id in run_answered
            taken += request_id in run_taken and request_id not in run_answered
        return answered, taken

    def _runs(self) -> list[tuple[set[str], set[str]]]:
        if self.instance is None:
            return []
        runs = self.instance.get_runs(filters=dg.RunsFilter(job_name=DRAIN_JOB), limit=HISTORY_RUNS)
        found = []
        for run in runs:
            if run.run_id == self.own_run_id:
                continue
            events = self._ended.get(run.run_id) or _request_events(self.instance, run.run_id)
            if run.is_finished:
                self._ended[run.run_id] = events
            found.append(events)
        return found


def _request_events(instance: dg.DagsterInstance, run_id: str) -> tuple[set[str], set[str]]:
    answered: set[str] = set()
    taken: set[str] = set()
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        metadata = getattr(data, "metadata", None) or {}
        for key, into in ((recovery.ANSWERED_KEY, answered), (TAKEN_KEY, taken)):
            value = metadata.get(key)
            if value is not None:
                into.add(str(getattr(value, "value", value)))
    return answered, taken


class Drain:
    """Reads the queue and answers what it reads until told to stop (see the module)."""

    def __init__(
        self,
        queue: ListenQueue,
        cti: OpenCTIConnector,
        enrichers: dict[str, Enricher],
        limits: DrainLimits,
        scope: set[str],
        auto_allowed: bool,
        history: History,
        on_taken: Callable[[str], None],
        on_answered: Callable[[Outcome], None],
        log: Any,
        notices: WaitNotices | None = None,
    ) -> None:
        self.queue = queue
        self.cti = cti
        self.enrichers = enrichers
        self.limits = limits
        self.scope = scope
        self.auto_allowed = auto_allowed
        self.history = history
        self.on_taken = on_taken
        self.on_answered = on_answered
        self.log = log
        self.notices = notices
        self.report = DrainReport()
        self._waiting: list[tuple[int, int, EnrichmentRequest, QueueMessage]] = []
        self._order = itertools.count()
        self._held = 0  # messages read and not yet acknowledged
        self._seen: set[str] = set()
        self._refusals: list[tuple[QueueMessage, EnrichmentRequest | None, str, str | None]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def run(self) -> DrainReport:
        started = last_busy = time.monotonic()
        while True:
            now = time.monotonic()
            if now - started >= self.limits.max_seconds:
                break
            if self.limits.idle_seconds and now - last_busy >= self.limits.idle_seconds:
                break
            if self.report.stopped:  # the next drain run takes over once the trouble passes
                break
            read = self._read()
            if read or self._waiting or self._running or self._refusals:
                last_busy = time.monotonic()
            await self._end_refused()
            while self._waiting and len(self._running) < self.limits.concurrency:
                _, _, request, message = heapq.heappop(self._waiting)
                task = asyncio.create_task(self._answer(request, message))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            if self._running:  # read again as soon as one ends (or after a poll)
                await asyncio.wait(
                    set(self._running),
                    timeout=self.limits.poll_seconds,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            elif not read or self._refusals:
                await asyncio.sleep(self.limits.poll_seconds)
        if self._running:
            await asyncio.gather(*self._running)
        self.report.released = len(self._waiting) + len(self._refusals)
        return self.report

    def _read(self) -> int:
        room = self.limits.backlog - self._held
        if room <= 0:
            return 0
        try:
            messages = self.queue.read(min(room, 500), max_seconds=0.5)
        except ListenQueueError as exc:
            self.report.stopped = str(exc)
            return 0
        self._held += len(messages)
        for message in messages:
            self._take(message)
        return len(messages)

    def _take(self, message: QueueMessage) -> None:
        try:
            request = parse_request(message.body)
        except InvalidRequest as exc:
            reason = f"malformed enrichment request: {exc}"
            self._refusals.append((message, None, reason, exc.work_id))
            return
        if request.request_id in self._seen:
            self.report.duplicates += 1
            self._ack(message)
            return
        self._seen.add(request.request_id)
        reason = refusal(request, self.scope, self.auto_allowed)
        if reason is not None:
            self._refusals.append((message, request, reason, request.work_id))
            return
        if message.redelivered and not self._worth_answering(request, message):
            return
        if request.requested_at is None:
            request = stamped(request)
        heapq.heappush(
            self._waiting, (PRIORITY.get(request.kind, 3), next(self._order), request, message)
        )

    def _worth_answering(self, request: EnrichmentRequest, message: QueueMessage) -> bool:
        """A redelivered request: True to answer it; False when it was answered (acked) or has
        been tried too often (closed in error, then acked). Its first delivery counts as an
        attempt (it is not recorded: most requests are delivered once)."""
        answered, taken = self.history.of(request.request_id)
        try:
            answered = answered or recovery.answered_on_opencti(self.cti, request)
        except OpenCTIUnavailable:
            answered = False  # cannot check: the record of earlier runs decides
        if answered:
            self.report.already_answered += 1
            self.log.info(f"{request.request_id}: already answered by an earlier run")
            self._ack(message)
            return False
        if 1 + taken >= recovery.MAX_ATTEMPTS:
            reason = printable(
                f"vt_pipeline: this request was not answered: {1 + taken} enrichment runs ended "
                "while answering it; not tried again. Ask for the enrichment again if it is "
                "still wanted.",
                1500,
            )
            self._refusals.append((message, request, reason, request.work_id))
            self.report.abandoned += 1
            return False
        return True

    async def _end_refused(self) -> None:
        kept = []
        for message, request, reason, work_id in self._refusals:
            try:
                ended = await asyncio.to_thread(
                    recovery.end_request,
                    self.cti,
                    request,
                    work_id,
                    printable(reason, 2000),
                    self.log,
                )
            except OpenCTIUnavailable:
                kept.append((message, request, reason, work_id))  # tried again next poll
                continue
            self.report.refused += 1
            self.log.info(f"enrichment request {ended}: {printable(reason, 500)}")
            self._ack(message)
        self._refusals = kept

    async def _answer(self, request: EnrichmentRequest, message: QueueMessage) -> None:
        if self.notices is not None and request.work_id:
            self.notices.works[request.request_id] = request.work_id
        if message.redelivered:  # counted as an attempt from now on
            await asyncio.to_thread(self.on_taken, request.request_id)
        enricher = self.enrichers.get(request.kind) or self.enrichers[KIND_AUTO]
        outcome = await enricher.answer(request)
        self.report.outcomes.append(outcome)
        if not outcome.reported and outcome.unreachable:  # the next drain run answers it
            self.report.unreported += 1
            self.report.stopped = self.report.stopped or (
                f"OpenCTI unreachable when answering {request.request_id}: {outcome.message}"
            )
            return
        if not outcome.reported:  # OpenCTI answered and refused (a work it no longer knows)
            self.report.refused += 1
            self.log.warning(
                printable(f"{request.request_id}: dropped, OpenCTI refused it: {outcome.message}")
            )
            self._ack(message)
            return
        self.on_answered(outcome)
        self._ack(message)

    def _ack(self, message: QueueMessage) -> None:
        self._held -= self.queue.ack([message])


def drain_metadata(report: DrainReport, seconds: float) -> dict[str, Any]:
    """The run's output: the last requests' table, counts, and the config that replays them."""
    outcomes = report.outcomes
    metadata = outcomes_metadata(outcomes[-TABLE_ROWS:])
    for key in ("requests_passed_through", "cache_hits"):  # the table's; all runs' below
        metadata.pop(key, None)
    metadata.update(
        {
            **outcome_counts(outcomes),
            "drained_seconds": round(seconds, 1),
            **{key: value for key, value in report.counts().items() if value},
        }
    )
    if len(outcomes) > TABLE_ROWS:
        metadata["table_note"] = f"the table shows the last {TABLE_ROWS} of {len(outcomes)}"
    if outcomes:
        metadata["replay_config"] = dg.MetadataValue.json(
            enrichment_run_config([o.request for o in outcomes[-TABLE_ROWS:]])
        )
    return metadata


async def drain(
    limits: DrainLimits,
    virustotal: VirusTotalResource,
    cti: OpenCTIConnector,
    queue: ListenQueue,
    settings: EnrichmentSettings,
    responses: ResponseStore,
    history: History,
    on_taken: Callable[[str], None],
    on_answered: Callable[[Outcome], None],
    log: Any,
    scope: set[str],
    auto_allowed: bool,
    secrets: Sequence[str] = (),
) -> DrainReport:
    """One VirusTotal session per kind of request (its budget priority), then the drain."""
    notices = WaitNotices(cti, {})
    secrets = [virustotal.api_key, *secrets]
    sessions = {}
    try:
        enrichers = {}
        for kind in (KIND_INTERACTIVE, KIND_PLAYBOOK, KIND_AUTO):
            manager = virustotal.session(on_wait=notices.post, kind=kind)
            sessions[kind] = manager
            session = await manager.__aenter__()
            enrichers[kind] = Enricher(session, cti, settings, responses, log, secrets=secrets)
        runner = Drain(
            queue,
            cti,
            enrichers,
            limits,
            scope,
            auto_allowed,
            history,
            on_taken,
            on_answered,
            log,
            notices,
        )
        return await runner.run()
    finally:
        for manager in sessions.values():
            await manager.__aexit__(None, None, None)


@dg.op(
    name=DRAIN_OP,
    config_schema={
        "max_seconds": dg.Field(float, default_value=DrainLimits.max_seconds),
        "idle_seconds": dg.Field(float, default_value=DrainLimits.idle_seconds),
        "concurrency": dg.Field(int, default_value=DrainLimits.concurrency),
        "backlog": dg.Field(int, default_value=DrainLimits.backlog),
    },
    out=dg.Out(dg.Nothing),
)
def vt_enrichment_drain(
    context: dg.OpExecutionContext,
    virustotal: VirusTotalResource,
    opencti: OpenCTIResource,
    enrichment_settings: EnrichmentSettings,
    storage: StorageResource,
) -> Any:
    """Answer requests from the listen queue as they arrive until idle or `max_seconds`; fail
    at the end if any of them failed (their works are in error, each with its reason)."""
    config = context.op_config
    limits = DrainLimits(
        max_seconds=max(1.0, float(config["max_seconds"])),
        idle_seconds=max(0.0, float(config["idle_seconds"])),
        concurrency=max(1, int(config["concurrency"])),
        backlog=max(1, int(config["backlog"])),
    )
    instance, run = context.instance, context.dagster_run
    scope = {t.lower() for t in parse_list(opencti.enrichment_connector_scope)}

    def taken(request_id: str) -> None:
        instance.report_engine_event(
            f"enrichment request {request_id} taken again (redelivered)",
            dagster_run=run,
            engine_event_data=EngineEventData(
                metadata={TAKEN_KEY: dg.MetadataValue.text(request_id)}
            ),
        )

    def answered(outcome: Outcome) -> None:
        recovery.record_answered(instance, run, outcome.request.request_id, outcome.status)

    started = time.monotonic()
    with opencti.connector("enrichment") as cti, ListenQueue.of(cti) as queue:
        report = asyncio.run(
            drain(
                limits,
                virustotal,
                cti,
                queue,
                enrichment_settings,
                ResponseStore(storage.base_dir),
                History(instance, run.run_id),
                taken,
                answered,
                context.log,
                scope,
                opencti.connector_auto,
                secrets=[opencti.token],
            )
        )
    yield dg.Output(None, metadata=drain_metadata(report, time.monotonic() - started))
    if report.stopped:
        raise dg.Failure(
            description=printable(
                f"The drain run stopped early: {report.stopped}. The requests it had read and "
                "not answered are back in the queue; the next drain run answers them.",
                2000,
            ),
            metadata={"requests_answered": len(report.outcomes) - report.unreported},
        )
    failed = [o for o in report.outcomes if o.status == OUTCOME_FAILED]
    if failed:
        lines = [o.line for o in failed]
        raise dg.Failure(
            description=f"{len(failed)} of {len(report.outcomes)} enrichment request(s) failed; "
            "their OpenCTI works are in error.\n" + "\n".join(lines[:20]),
            metadata={"failed_requests": dg.MetadataValue.json(lines[:TABLE_ROWS])},
        )


@dg.job(
    name=DRAIN_JOB,
    description=(
        "Answer OpenCTI enrichment requests as they arrive, from the connector's queue, until "
        "idle or the run's lifetime (the sensor keeps one running)."
    ),
    executor_def=dg.in_process_executor,
    tags={"vt_pipeline/domain": "enrichment", "vt_pipeline/mode": "drain"},
)
def vt_enrichment_drain_job() -> None:
    vt_enrichment_drain()
