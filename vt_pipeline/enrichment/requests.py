"""Enrichment requests: OpenCTI's listen-queue message -> a request a run can carry as config.

The message format is pycti's (`ListenQueue._data_handler`):
`{"internal": {"work_id", "applicant_id", ["playbook": {...}], ["mode"]},
  "event": {"entity_id", "entity_type", ["bundle"], ["stix_entity"], ["stix_objects"]}}`.
A request keeps only what the job needs to answer it, and is JSON-able so that a run's config
repeats it exactly when the run is re-executed from the UI.

`request_id` is what makes a request unique, forever: the OpenCTI work id, or for a playbook
step (no work of its own) `playbook:{execution_id}:{step_id}`. The sensor derives its run keys
from it, so a re-delivered message never gives a second run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from vt_pipeline.stix.common import moment_timestamp

ENRICHMENT_JOB = "vt_enrichment_job"  # job name (the sensor targets it by name)
ENRICHMENT_OP = "vt_enrichment"  # the job's op that takes the requests as config
DRAIN_JOB = "vt_enrichment_drain_job"  # the long-lived run that reads the queue itself
DRAIN_OP = "vt_enrichment_drain"

# What the job knows how to enrich (OpenCTI entity types); anything else is refused.
SUPPORTED_TYPES = (
    "StixFile",
    "Artifact",
    "IPv4-Addr",
    "IPv6-Addr",
    "Domain-Name",
    "Hostname",
    "Url",
    "Indicator",
)

KIND_INTERACTIVE = "interactive"
KIND_AUTO = "auto"
KIND_PLAYBOOK = "playbook"


class InvalidRequest(ValueError):
    """A listen-queue message vt_pipeline cannot answer; the message says what is wrong.

    `work_id` is the message's OpenCTI work when it could be read, so the refusal can be
    reported on it.
    """

    def __init__(self, message: str, work_id: str | None = None) -> None:
        super().__init__(message)
        self.work_id = work_id


@dataclass(frozen=True)
class EnrichmentRequest:
    """One entity to enrich, as OpenCTI asked for it."""

    request_id: str  # OpenCTI work id; playbook messages: "playbook:{execution_id}:{step_id}"
    entity_id: str
    entity_type: str | None
    work_id: str | None = None
    playbook: dict[str, Any] | None = None  # message["internal"]["playbook"], as received
    bundle: dict[str, Any] | None = None  # message["event"]["bundle"] (playbook messages)
    applicant_id: str | None = None
    mode: str | None = None  # message["internal"]["mode"]: "manual" or "auto" (OpenCTI 6+)
    # When the request was made (ISO 8601 UTC): the sensor stamps it when it first batches the
    # request, so the run config carries it and a re-executed run rebuilds the same objects.
    requested_at: str | None = None

    @property
    def kind(self) -> str:
        """interactive (an analyst's click), auto (auto-enrichment) or playbook."""
        if self.playbook is not None:
            return KIND_PLAYBOOK
        return KIND_AUTO if self.mode == "auto" else KIND_INTERACTIVE

    def pycti_playbook(self, execution_start: str) -> dict[str, Any]:
        """pycti's playbook dict (`ListenQueue._data_handler`), what `playbook_step_execution`
        takes: set it as `helper.playbook` before `send_stix2_bundle`, or pass it directly."""
        if self.playbook is None or self.bundle is None:
            raise InvalidRequest(f"request {self.request_id} is not a playbook step")
        return {
            "event_id": self.playbook.get("event_id"),
            "execution_id": self.playbook.get("execution_id"),
            "execution_start": execution_start,
            "playbook_id": self.playbook.get("playbook_id"),
            "data_instance_id": self.playbook.get("data_instance_id"),
            "previous_step_id": self.playbook.get("previous_step_id"),
            "previous_bundle": json.dumps(self.bundle),
            "step_id": self.playbook.get("step_id"),
        }

    def to_config(self) -> dict[str, Any]:
        """JSON-able (run config); None fields left out to keep the launchpad readable."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @classmethod
    def from_config(cls, value: Mapping[str, Any]) -> EnrichmentRequest:
        """The inverse of `to_config`; unknown keys are refused (a typo in a re-executed run)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise InvalidRequest(f"unknown enrichment request field(s): {', '.join(unknown)}")
        for name in ("request_id", "entity_id"):
            if not isinstance(value.get(name), str) or not value[name]:
                raise InvalidRequest(f"enrichment request needs a non-empty string {name}")
        at = value.get("requested_at")
        if at is not None and (not isinstance(at, str) or parse_time(at) is None):
            raise InvalidRequest(f"requested_at is not an ISO 8601 time: {printable(at, 60)}")
        return cls(**{key: value[key] for key in known if key in value})

    @property
    def requested_time(self) -> datetime | None:
        """`requested_at` as an aware datetime (None when the request carries none)."""
        return parse_time(self.requested_at) if self.requested_at else None


def parse_request(body: bytes) -> EnrichmentRequest:
    """The listen-queue message -> request; `InvalidRequest` says what is wrong with it."""
    try:
        message = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"the message is not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise InvalidRequest(f"the message is a JSON {type(message).__name__}, not an object")
    internal = message.get("internal")
    if not isinstance(internal, dict):
        raise InvalidRequest("the message has no 'internal' object")
    work_id = _optional_str(internal, "work_id", "internal.work_id", None)
    event = message.get("event")
    if not isinstance(event, dict):
        raise InvalidRequest("the message has no 'event' object", work_id)
    entity_id = event.get("entity_id")
    if not isinstance(entity_id, str) or not entity_id.strip():
        raise InvalidRequest("the message names no entity (event.entity_id)", work_id)
    entity_type = _optional_str(event, "entity_type", "event.entity_type", work_id)
    applicant_id = _optional_str(internal, "applicant_id", "internal.applicant_id", work_id)
    mode = _optional_str(internal, "mode", "internal.mode", work_id)
    playbook = internal.get("playbook")
    if playbook is None:
        if not work_id:
            raise InvalidRequest("the message has neither a work id nor a playbook")
        return EnrichmentRequest(
            request_id=work_id,
            entity_id=entity_id,
            entity_type=entity_type,
            work_id=work_id,
            applicant_id=applicant_id,
            mode=mode,
        )
    if not isinstance(playbook, dict):
        raise InvalidRequest("internal.playbook is not an object", work_id)
    for key in ("execution_id", "step_id"):
        if not isinstance(playbook.get(key), str) or not playbook[key]:
            raise InvalidRequest(f"the playbook message has no internal.playbook.{key}", work_id)
    bundle = event.get("bundle")
    if not isinstance(bundle, dict) or not isinstance(bundle.get("objects"), list):
        raise InvalidRequest("the playbook message has no event.bundle with objects", work_id)
    return EnrichmentRequest(
        request_id=f"playbook:{playbook['execution_id']}:{playbook['step_id']}",
        entity_id=entity_id,
        entity_type=entity_type,
        work_id=work_id,
        playbook=playbook,
        bundle=bundle,
        applicant_id=applicant_id,
        mode=mode,
    )


def refusal(request: EnrichmentRequest, scope: set[str], auto_allowed: bool) -> str | None:
    """Why vt_pipeline will not enrich this, in words a person understands; None if it will."""
    entity_type = request.entity_type
    if entity_type is not None:
        if entity_type.lower() not in {t.lower() for t in SUPPORTED_TYPES}:
            return (
                f"VirusTotal enrichment cannot enrich a {entity_type}: it enriches "
                f"{', '.join(SUPPORTED_TYPES)}"
            )
        if entity_type.lower() not in scope:
            return (
                f"{entity_type} is outside this connector's scope "
                f"(VIRUSTOTAL_ENRICHMENT_CONNECTOR_SCOPE: {', '.join(sorted(scope))})"
            )
    if request.kind == "auto" and not auto_allowed:
        return "automatic enrichment is off for this connector (CONNECTOR_AUTO=false)"
    return None


def stamped(request: EnrichmentRequest, when: datetime | None = None) -> EnrichmentRequest:
    """The request with `requested_at` set (to `when`, default now), what the Indicators it
    makes are valid from; a request that carries a time keeps it."""
    if request.requested_at:
        return request
    return replace(request, requested_at=moment_timestamp(when or datetime.now(UTC)))


def parse_time(value: str) -> datetime | None:
    """ISO 8601 (a trailing Z allowed) -> aware UTC datetime; None if it is not one."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: Any, limit: int = 500) -> str:
    """Text for a log line or an OpenCTI work message: control characters that an entity value
    or a message may carry (NUL, terminal escapes, C1 codes) are shown escaped (`\\x1b`), never
    passed raw to a terminal or a UI; white space runs become one space; at most `limit`."""
    folded = re.sub(r"\s+", " ", str(text))
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", folded)[:limit]


def enrichment_run_config(requests: Sequence[EnrichmentRequest]) -> dict[str, Any]:
    """The run config of one batch: the requests as the job's op config."""
    return {"ops": {ENRICHMENT_OP: {"config": {"requests": [r.to_config() for r in requests]}}}}


def _optional_str(
    section: Mapping[str, Any], key: str, label: str, work_id: str | None
) -> str | None:
    value = section.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"{label} is a {type(value).__name__}, not a string", work_id)
    return value
