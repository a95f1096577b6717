"""What became of the requests of an enrichment run that ended: answered, or to answer again.

The sensor acknowledges a message once its run exists, so from then on the run is what holds the
request. The job records each request it has answered (its work closed, enriched or in error; its
playbook step answered) as an engine event on its run, with the metadata key `ANSWERED_KEY`,
right after OpenCTI took the answer. When a run ends without having answered every request (its
process was killed, the daemon or the machine died, it failed before its op ran, OpenCTI was
unreachable when it tried to report), the enrichment sensor finds those requests here and:

- a request whose OpenCTI work is already complete counts as answered (the run died between the
  answer and its record): never answered twice;
- the others are carried by ONE new run (run key `vt_enrichment_retry:{dead run id}`, so a
  resumed tick never makes two), tagged with its attempt (`vt_pipeline/attempt`) and the run it
  replaces (`vt_pipeline/retry_of`), as long as they have been tried fewer than `MAX_ATTEMPTS`
  times;
- after that, their works are closed in error with the reason (a playbook step passes its bundle
  on unchanged): a request that kills its run twice is not tried a third time.
- an operator who re-executed the dead run from the UI first has made that re-execution its
  retry: the sensor watches it instead of launching one of its own.

The dead run gets the tag `vt_pipeline/requests_outcome` saying which of these happened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEventType, EngineEventData

from vt_pipeline.enrichment.requests import (
    ENRICHMENT_OP,
    EnrichmentRequest,
    InvalidRequest,
    printable,
)
from vt_pipeline.opencti.resource import OpenCTIConnector, OpenCTIError, OpenCTIUnavailable
from vt_pipeline.stix.common import moment_timestamp

ANSWERED_KEY = "vt_pipeline/answered_request"
ATTEMPT_TAG = "vt_pipeline/attempt"
RETRY_OF_TAG = "vt_pipeline/retry_of"
OUTCOME_TAG = "vt_pipeline/requests_outcome"
RETRY_KEY_PREFIX = "vt_enrichment_retry:"
MAX_ATTEMPTS = 2
ENDED_BADLY = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


def record_answered(
    instance: dg.DagsterInstance, run: dg.DagsterRun, request_id: str, outcome: str
) -> None:
    """The run has answered this request: an engine event the sensor reads if the run dies."""
    instance.report_engine_event(
        f"enrichment request {request_id} answered on OpenCTI: {outcome}",
        dagster_run=run,
        engine_event_data=EngineEventData(
            metadata={ANSWERED_KEY: dg.MetadataValue.text(request_id), "outcome": outcome}
        ),
    )


def answered_requests(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The request ids the run recorded as answered."""
    found: set[str] = set()
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        data = getattr(event, "event_specific_data", None) if event else None
        value = (getattr(data, "metadata", None) or {}).get(ANSWERED_KEY)
        if value is not None:
            found.add(str(getattr(value, "value", value)))
    return found


def request_configs(run: dg.DagsterRun) -> list[Mapping[str, Any]]:
    """The requests a run's config carries, as configs (what a new run would carry)."""
    config = (run.run_config or {}).get("ops", {}).get(ENRICHMENT_OP, {}).get("config", {})
    return [item for item in config.get("requests", []) if isinstance(item, Mapping)]


def unanswered(instance: dg.DagsterInstance, run: dg.DagsterRun) -> list[EnrichmentRequest]:
    """The requests of an ended run that it did not record as answered (invalid configs, which
    the run refused itself, excluded)."""
    done = answered_requests(instance, run.run_id)
    left = []
    for config in request_configs(run):
        try:
            request = EnrichmentRequest.from_config(config)
        except (InvalidRequest, TypeError):
            continue
        if request.request_id not in done:
            left.append(request)
    return left


def attempt_of(run: dg.DagsterRun) -> int:
    """How many runs have carried this run's requests, this one included."""
    try:
        return max(1, int(run.tags.get(ATTEMPT_TAG, "1")))
    except ValueError:
        return 1


def retry_key(run_id: str) -> str:
    return f"{RETRY_KEY_PREFIX}{run_id}"


def retry_tags(dead: dg.DagsterRun, requests: Sequence[EnrichmentRequest]) -> dict[str, str]:
    """The retry run's tags: the dead run's own (kind, request count...) plus the attempt."""
    keep = {k: v for k, v in dead.tags.items() if k.startswith("vt_pipeline/")}
    keep.pop(OUTCOME_TAG, None)
    return {
        **keep,
        "vt_pipeline/enrichment_requests": str(len(requests)),
        ATTEMPT_TAG: str(attempt_of(dead) + 1),
        RETRY_OF_TAG: dead.run_id,
    }


def death_reason(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """Why the run ended, in one line: its step's error (what the op raised), else the run's
    failure message (the dead-run sweep's, a launcher's), else its status."""
    kinds = {
        DagsterEventType.STEP_FAILURE,
        DagsterEventType.RUN_FAILURE,
        DagsterEventType.RUN_CANCELED,
    }
    step_error, run_message = "", ""
    for record in instance.get_records_for_run(run.run_id, of_type=kinds).records:
        entry = record.event_log_entry
        event = entry.dagster_event
        if event is not None and event.event_type == DagsterEventType.STEP_FAILURE:
            error = getattr(event.event_specific_data, "error", None)
            cause = getattr(error, "cause", None) or error
            step_error = step_error or str(getattr(cause, "message", "") or "")
        elif entry.message:
            run_message = entry.message
    text = (step_error or run_message).strip().splitlines()
    return printable(text[0], 300) if text else f"it ended {run.status.value}"


def answered_on_opencti(cti: OpenCTIConnector, request: EnrichmentRequest) -> bool:
    """Whether OpenCTI says the request's work is complete (a work it no longer knows: no)."""
    if not request.work_id:
        return False
    try:
        return cti.work_status(request.work_id) == "complete"
    except OpenCTIUnavailable:
        raise
    except OpenCTIError:
        return False


def end_request(
    cti: OpenCTIConnector,
    request: EnrichmentRequest | None,
    work_id: str | None,
    reason: str,
    log: Any,
) -> str:
    """End a request vt_pipeline will not enrich: a playbook step gets its bundle passed on
    unchanged, anything else its work closed in error with the reason. Returns what happened:
    "passed through", "closed", "no work" (nothing to report on), or "refused" (OpenCTI
    answered and refused, e.g. a work it no longer knows: retrying would never succeed; logged).
    OpenCTIUnavailable propagates: OpenCTI is down or restarting, try again later."""
    try:
        if request is not None and request.playbook is not None and request.bundle is not None:
            execution_start = moment_timestamp(datetime.now(UTC))
            cti.answer_playbook(request.pycti_playbook(execution_start), request.bundle)
            return "passed through"
        if not work_id:
            return "no work"
        cti.close_work(work_id, reason, in_error=True)
        return "closed"
    except OpenCTIUnavailable:
        raise
    except Exception as exc:
        which = work_id or (request.request_id if request is not None else "")
        log.warning(
            f"OpenCTI refused to end enrichment request {printable(which, 120)} "
            f"({printable(exc, 300)}): {reason}"
        )
        return "refused"
