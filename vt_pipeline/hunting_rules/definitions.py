"""OpenCTI's YARA Indicators as VirusTotal Livehunt rulesets: a sensor on the live stream and
the `hunting_rulesets` asset (what VT holds for the deployment).

`hunting_rules_sensor` reads the live stream (`CONNECTOR_LIVE_STREAM_ID`) in bounded ticks
(at most `VT_PIPELINE_HUNTING_RULES_MAX_EVENTS` events or `_TICK_SECONDS` seconds), with the
stream position as its cursor, as pycti keeps its state. Each YARA Indicator event brings VT in
line (see `sync`); the cursor saves the position after the last event handled, the managed
rulesets and what OpenCTI has not been told yet, in one write: a crash before it re-reads the
same events and, VT being looked up first, creates nothing twice. When a tick changed something
it records `hunting_rulesets` as a runless materialization: the table of managed rulesets
(Indicator, ruleset, state on VT, last change, reason), as the quota sensor does.

OpenCTI is told through the Livehunt connector identity: the ruleset's link on its Indicator
(an external reference), and a Note on an Indicator whose rule does not compile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import dagster as dg

from vt_pipeline.config import env_int
from vt_pipeline.hunting_rules.settings import HuntingRulesSettings
from vt_pipeline.hunting_rules.sync import (
    Managed,
    Outcome,
    RulesetSync,
    dump_state,
    load_state,
)
from vt_pipeline.opencti.live_stream import StreamPosition, StreamRead, read_stream
from vt_pipeline.opencti.resource import OpenCTIError, OpenCTIResource
from vt_pipeline.stix import common
from vt_pipeline.virustotal.resource import CallLog, VirusTotalError, VirusTotalResource

log = logging.getLogger(__name__)

INTERVAL_ENV = "VT_PIPELINE_HUNTING_RULES_INTERVAL_SECONDS"
# How often the sensor reads the stream (Dagster's minimum interval between two ticks).
INTERVAL_SECONDS = env_int(INTERVAL_ENV, 30, minimum=5, maximum=3600)
IDLE_SECONDS = 2.0
TELL_SECONDS = 15.0  # longest wait for OpenCTI to take the links and notes, per tick
# Longest time a tick spends on VT calls: with the stream read and OpenCTI's part it stays
# inside Dagster's 60 s sensor limit. An event cut short is handled again next tick (VT is
# looked up before anything is created).
APPLY_SECONDS = 20.0
WORK_NAME = "VirusTotal Livehunt rulesets"
_COLUMNS = (
    ("indicator", "string"),
    ("indicator_id", "string"),
    ("ruleset_id", "string"),
    ("ruleset_name", "string"),
    ("state", "string"),
    ("changed", "string"),
    ("reason", "string"),
)

hunting_rulesets = dg.AssetSpec(
    "hunting_rulesets",
    group_name="hunting",
    kinds={"virustotal", "opencti"},
    description="The VirusTotal Livehunt rulesets this deployment manages, one per YARA "
    "Indicator of OpenCTI whose detection is on: its Indicator, the ruleset on VT, its state "
    "(active, disabled, deleted, or rejected: a rule that does not compile, never sent) and "
    "the last change. Recorded by hunting_rules_sensor from OpenCTI's live stream.",
)


def load_cursor(text: str | None) -> dict[str, Any]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def rulesets_metadata(state: dict[str, Managed], outcome: Outcome, calls: CallLog) -> dict:
    """What the UI shows of a tick: the managed rulesets, counts per state, the changes."""
    rows = sorted(state.values(), key=lambda m: (m.state, m.indicator_name))
    table = dg.MetadataValue.table(
        [
            dg.TableRecord(
                {
                    "indicator": m.indicator_name[:80],
                    "indicator_id": m.indicator_id,
                    "ruleset_id": m.ruleset_id,
                    "ruleset_name": m.ruleset_name[:120],
                    "state": m.state,
                    "changed": m.changed,
                    "reason": m.reason[:200],
                }
            )
            for m in rows
        ],
        schema=dg.TableSchema(columns=[dg.TableColumn(n, t) for n, t in _COLUMNS]),
    )
    out: dict[str, Any] = {"rulesets": table}
    for name in ("active", "disabled", "deleted", "rejected"):
        out[f"{name}_rulesets"] = dg.MetadataValue.int(sum(m.state == name for m in rows))
    if outcome.changes:
        out["changes"] = dg.MetadataValue.text("\n".join(outcome.changes))
    if outcome.dropped:
        out["dropped_events"] = dg.MetadataValue.text("\n".join(outcome.dropped))
    out.update(calls.as_metadata())
    return out


async def _apply(
    read: StreamRead,
    start: str,
    state: dict[str, Managed],
    settings: HuntingRulesSettings,
    virustotal: VirusTotalResource,
) -> tuple[Outcome, str, CallLog, str]:
    """Apply the events in order; the position after the last one handled, and the error
    that stopped the batch ("" when all were handled)."""
    handled, error = start, ""
    if not read.events:  # heartbeats only: no VT session (no budget read, no quota check)
        return Outcome(), read.position, CallLog.empty(), ""
    async with virustotal.session(kind="auto") as session:
        sync = RulesetSync(session, settings, state, virustotal.api_url)
        deadline = time.monotonic() + APPLY_SECONDS
        for event in read.events:
            try:
                await asyncio.wait_for(sync.apply(event), max(0.1, deadline - time.monotonic()))
            except VirusTotalError as exc:  # read again next tick: nothing lost
                error = f"VirusTotal: {exc}"
                break
            except TimeoutError:  # the tick's time is spent: the rest next tick
                error = f"VirusTotal calls took the tick's {APPLY_SECONDS:.0f} s"
                break
            except Exception as exc:  # one unreadable event never blocks the stream
                sync.outcome.dropped.append(f"event {event.id}: {type(exc).__name__}: {exc}")
                log.exception("hunting rules: event %s dropped", event.id)
            handled = event.id
        else:
            handled = read.position
        return sync.outcome, handled, session.log, error


def _tell_opencti(opencti: OpenCTIResource, objects: list[dict[str, Any]], deadline: float) -> str:
    """Send the pending objects in one work and close it; "" once OpenCTI has them queued.

    The tick does not wait for OpenCTI to ingest them (its worker does, as for any connector):
    a sensor tick must end well inside Dagster's limit. `deadline` bounds the registration."""
    try:
        with opencti.connector("livehunt", deadline=deadline) as connector:
            work_id = connector.initiate_work(WORK_NAME)
            connector.send_into_work(common.make_bundle(objects), work_id)
            connector.close_work(work_id, "Livehunt rulesets' links and notes")
    except OpenCTIError as exc:
        return str(exc)
    return ""


@dg.sensor(
    name="hunting_rules_sensor",
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[hunting_rulesets.key],
    description="Reads OpenCTI's live stream (CONNECTOR_LIVE_STREAM_ID) and keeps one VT "
    "Livehunt ruleset per YARA Indicator whose detection is on; records hunting_rulesets "
    "without a run when something changed. Off while CONNECTOR_LIVE_STREAM_ID is unset.",
)
def hunting_rules_sensor(
    context: dg.SensorEvaluationContext,
    opencti: OpenCTIResource,
    virustotal: VirusTotalResource,
    hunting_rules_settings: HuntingRulesSettings,
) -> dg.SensorResult | dg.SkipReason:
    settings = hunting_rules_settings
    if not settings.enabled:
        return dg.SkipReason("Off: CONNECTOR_LIVE_STREAM_ID is not set.")
    if not opencti.configured:
        return dg.SkipReason("Off: OpenCTI is not configured (OPENCTI_URL, OPENCTI_TOKEN).")
    cursor = load_cursor(context.cursor)
    position = StreamPosition.from_state(cursor.get("stream"))
    try:
        read = read_stream(
            opencti.url,
            opencti.token,
            position,
            live_stream_id=settings.live_stream_id,
            listen_delete=settings.listen_delete,
            no_dependencies=settings.no_dependencies,
            max_events=settings.max_events,
            max_seconds=settings.tick_seconds,
            idle_seconds=IDLE_SECONDS,
        )
    except OpenCTIError as exc:
        return dg.SkipReason(f"Live stream not read: {exc}")
    state = load_state(cursor.get("rulesets"))
    outcome, handled, calls, error = asyncio.run(
        _apply(read, position.start_from, state, settings, virustotal)
    )
    pending = [*(cursor.get("pending") or []), *outcome.feedback]
    told = ""
    if pending:
        told = _tell_opencti(opencti, pending, time.monotonic() + TELL_SECONDS)
        if told:
            context.log.warning(f"OpenCTI not told yet (next tick retries): {told}")
        else:
            pending = []
    new_cursor = {
        "stream": StreamPosition(handled, position.recover_until).to_state(),
        "rulesets": dump_state(state),
        "pending": pending,
    }
    summary = (
        f"{len(read.events)} stream events read ({read.stopped}), {len(outcome.changes)} "
        f"ruleset changes, {calls.total} VT calls"
        + (f"; stopped: {error}" if error else "")
        + (f"; {len(outcome.dropped)} events dropped" if outcome.dropped else "")
    )
    context.log.info(summary)
    for line in outcome.changes:
        context.log.info(line)
    events = []
    if outcome.changes or outcome.dropped or context.cursor is None:
        metadata = rulesets_metadata(state, outcome, calls)
        events.append(dg.AssetMaterialization(asset_key=hunting_rulesets.key, metadata=metadata))
    return dg.SensorResult(
        asset_events=events, cursor=json.dumps(new_cursor, sort_keys=True), skip_reason=summary
    )


defs = dg.Definitions(assets=[hunting_rulesets], sensors=[hunting_rules_sensor])
