"""OpenCTI, through pycti: connector identity, works, bundles, artifacts.

`OpenCTIResource` is configuration (the upstream connector's variable names: `OPENCTI_URL`,
`OPENCTI_TOKEN`, `CONNECTOR_ID`, `CONNECTOR_NAME`, `CONNECTOR_SCOPE`,
`CONNECTOR_CONFIDENCE_LEVEL`, `CONNECTOR_LOG_LEVEL`, `CONNECTOR_QUEUE_PROTOCOL`). Inside a step,
`with resource.connector() as cti:` registers the connector through pycti's own
`OpenCTIConnectorHelper` and yields an `OpenCTIConnector`: the operations vt_pipeline needs,
each failing with an `OpenCTIError` that says what went wrong and never contains the token.

Bundles travel as pycti sends them: split, then through RabbitMQ (`amqp`, the connector's push
queue) or the GraphQL API (`api`, `stixBundlePush`). A delivery counts as accepted only when the
OpenCTI work that carries it is complete without errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, Literal, get_args

import dagster as dg
from pydantic import Field, ValidationInfo, field_validator

from vt_pipeline.config import http_url, invalid, is_env_reference, one_of

LIVEHUNT_CONNECTOR_ID = "325cbb22-ee42-4898-9d99-302ca216671b"  # upstream's default id
LIVEHUNT_SCOPE = "StixFile,Indicator,Incident,Artifact,Domain-Name,Url,IPv4-Addr,IPv6-Addr"
QueueProtocol = Literal["amqp", "api"]
# pycti hands the level to `logging` upper-cased; these are the names logging knows.
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class OpenCTIError(Exception):
    """OpenCTI unreachable, refusing a request, or failing to ingest what was sent."""


class OpenCTIResource(dg.ConfigurableResource):
    """OpenCTI platform access and the identity vt_pipeline registers as a connector.

    Every field is checked when the resource is built (code location load, or run start for a
    launchpad value), with a message naming the upstream variable. No check ever puts the token
    in a message: only its absence is reported, by the token's own validator, whose input is then
    empty. (A model-level validator would show pydantic every field, the token included.)
    """

    url: str = Field(
        default="",
        description="OPENCTI_URL (http or https; a trailing /graphql is dropped); empty = "
        "OpenCTI not configured.",
    )
    token: str = Field(
        default="",
        description="OPENCTI_TOKEN, required with a URL. A secret: set it with EnvVar.",
    )
    connector_id: str = Field(default=LIVEHUNT_CONNECTOR_ID, description="CONNECTOR_ID (a UUID)")
    connector_name: str = Field(
        default="VirusTotal Livehunt Notifications", min_length=1, description="CONNECTOR_NAME"
    )
    connector_scope: str = Field(
        default=LIVEHUNT_SCOPE, min_length=1, description="CONNECTOR_SCOPE"
    )
    connector_confidence_level: int = Field(
        default=100, ge=0, le=100, description="CONNECTOR_CONFIDENCE_LEVEL (0-100)"
    )
    connector_log_level: LogLevel = Field(
        default="error", description="CONNECTOR_LOG_LEVEL: debug, info, warning, error, critical"
    )
    queue_protocol: QueueProtocol = Field(
        default="amqp", description="CONNECTOR_QUEUE_PROTOCOL: amqp (RabbitMQ) or api (GraphQL)"
    )
    work_timeout_seconds: float = Field(
        default=600.0, gt=0, description="How long to wait for OpenCTI to ingest one delivery."
    )

    @field_validator("url")
    @classmethod
    def _usable_url(cls, value: str) -> str:
        """Empty (not configured) or an http(s) URL with a host, without a trailing `/` or
        `/graphql` (pycti appends `/graphql` itself; links to the platform start here too)."""
        if is_env_reference(value):
            return value
        if not value.strip():
            return ""
        return http_url("OPENCTI_URL", value, "http://opencti:8080", strip_suffixes=("/graphql",))

    @field_validator("token")
    @classmethod
    def _token_with_url(cls, value: str, info: ValidationInfo) -> str:
        """A URL without a token would only fail inside a run, in pycti ("A TOKEN must be set").

        Raised only when the token is empty, so the message cannot contain it.
        """
        if info.data.get("url") and not value.strip():
            raise invalid(
                "OPENCTI_TOKEN",
                "",
                "the API token of an OpenCTI user: it is required when OPENCTI_URL is set "
                "(unset OPENCTI_URL to run without OpenCTI)",
            )
        return value

    @field_validator("connector_id")
    @classmethod
    def _uuid_connector_id(cls, value: str) -> str:
        if is_env_reference(value):
            return value
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            raise invalid(
                "CONNECTOR_ID", value, f"a UUID, e.g. {LIVEHUNT_CONNECTOR_ID} (upstream's)"
            ) from None

    @field_validator("connector_log_level", mode="before")
    @classmethod
    def _known_log_level(cls, value: Any) -> Any:
        """Upstream's spellings (any case, `warn`) made canonical before the Literal check."""
        if is_env_reference(value) or not isinstance(value, str):
            return value
        levels = get_args(LogLevel)
        return one_of("CONNECTOR_LOG_LEVEL", value, levels, aliases={"warn": "warning"})

    @field_validator("queue_protocol", mode="before")
    @classmethod
    def _known_queue_protocol(cls, value: Any) -> Any:
        if is_env_reference(value) or not isinstance(value, str):
            return value
        return one_of("CONNECTOR_QUEUE_PROTOCOL", value, get_args(QueueProtocol))

    @property
    def configured(self) -> bool:
        return bool(self.url.strip())

    def helper_config(self) -> dict[str, Any]:
        """The `OpenCTIConnectorHelper` configuration, in pycti's own shape."""
        return {
            "opencti": {"url": self.url.rstrip("/"), "token": self.token},
            "connector": {
                "id": self.connector_id,
                "type": "EXTERNAL_IMPORT",
                "name": self.connector_name,
                "scope": self.connector_scope,
                "confidence_level": self.connector_confidence_level,
                "log_level": self.connector_log_level,
                "queue_protocol": self.queue_protocol,
            },
        }

    def lookups(self) -> OpenCTIConnector:
        """A read-only session (no connector registration), e.g. to look samples up."""
        if not self.configured:
            raise OpenCTIError("OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN")
        from pycti import OpenCTIApiClient

        try:
            api = OpenCTIApiClient(self.url.rstrip("/"), self.token, log_level="error")
        except Exception as exc:
            raise OpenCTIError(
                f"OpenCTI at {self.url} is not reachable: {_clip(exc, self.token)}"
            ) from None
        return OpenCTIConnector(api, self.token, self.work_timeout_seconds)

    @contextlib.contextmanager
    def connector(self) -> Iterator[OpenCTIConnector]:
        """Register with OpenCTI and yield the connector; its threads stop on exit."""
        if not self.configured:
            raise OpenCTIError("OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN")
        from pycti import OpenCTIConnectorHelper

        # pycti installs a sys.excepthook that SIGTERMs the process on any uncaught exception:
        # right for a connector container, wrong inside a Dagster run or a test session.
        excepthook = sys.excepthook
        try:
            helper = OpenCTIConnectorHelper(self.helper_config())
        except Exception as exc:  # pycti raises bare ValueError/ConnectionError/SystemExit
            raise OpenCTIError(
                f"cannot register with OpenCTI at {self.url}: {_clip(exc, self.token)}"
            ) from None
        except SystemExit as exc:
            raise OpenCTIError(f"OpenCTI at {self.url} is not reachable ({exc})") from None
        finally:
            sys.excepthook = excepthook
        try:
            yield OpenCTIConnector(helper.api, self.token, self.work_timeout_seconds, helper)
        finally:
            ping = getattr(helper, "ping", None)
            if ping is not None:
                with contextlib.suppress(Exception):
                    ping.stop()


class OpenCTIConnector:
    """What vt_pipeline asks of OpenCTI: reads and uploads through the API client, works and
    bundles through the registered connector helper (absent for read-only lookups)."""

    def __init__(
        self, api: Any, token: str, work_timeout_seconds: float, helper: Any | None = None
    ) -> None:
        self.api = api
        self._helper = helper
        self._token = token
        self._timeout = work_timeout_seconds

    @property
    def helper(self) -> Any:
        if self._helper is None:
            raise OpenCTIError("this OpenCTI session is read-only: use OpenCTIResource.connector()")
        return self._helper

    def _guard(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            raise OpenCTIError(f"OpenCTI failed to {what}: {_clip(exc, self._token)}") from None

    def initiate_work(self, name: str) -> str:
        work_id = self._guard(
            "create a work", self.api.work.initiate_work, self.helper.connect_id, name
        )
        if not work_id:
            raise OpenCTIError("OpenCTI did not create a work")
        return str(work_id)

    def send_bundle(self, bundle: dict[str, Any], work_id: str) -> int:
        """Send a bundle as pycti does (split, with expectations); returns the pieces sent."""
        sent = self._guard(
            "accept a bundle", self.helper.send_stix2_bundle, json.dumps(bundle), work_id=work_id
        )
        return len(sent or [])

    def close_work(self, work_id: str, message: str, in_error: bool = False) -> None:
        self._guard("close a work", self.api.work.to_processed, work_id, message, in_error)

    def wait_for_work(self, work_id: str, poll_seconds: float = 0.2) -> dict[str, Any]:
        """Until OpenCTI has ingested everything the work carries; errors fail the delivery."""
        deadline = time.monotonic() + self._timeout
        while True:
            work = self._guard("report a work", self.api.work.get_work, work_id) or {}
            if work.get("errors"):
                first = work["errors"][0].get("message", "")
                raise OpenCTIError(
                    f"OpenCTI reported {len(work['errors'])} error(s) ingesting work {work_id}: "
                    f"{_clip(first, self._token)}"
                )
            if work.get("status") == "complete":
                return work
            if time.monotonic() > deadline:
                tracking = work.get("tracking") or {}
                raise OpenCTIError(
                    f"work {work_id} not complete after {self._timeout:.0f} s "
                    f"(status {work.get('status')}, processed "
                    f"{tracking.get('import_processed_number')} of "
                    f"{tracking.get('import_expected_number')})"
                )
            time.sleep(poll_seconds)

    def read_entity(self, entity_id: str) -> dict[str, Any] | None:
        """Any STIX core object (observable, indicator, incident...) by id, files included."""
        return self._guard(
            "read an entity", self.api.stix_core_object.read, id=entity_id, withFiles=True
        )

    def held_artifact(self, sha256: str) -> dict[str, Any] | None:
        """The Artifact OpenCTI holds for this sample (that hash AND its file), or None.

        A File observable or a bare Artifact object with the hash is not the sample itself
        (upstream looked up any observable and so never uploaded a sample it had seen as a File).
        """
        found = self._guard(
            "look up an artifact",
            self.api.stix_cyber_observable.list,
            filters={
                "mode": "and",
                "filters": [
                    {"key": "hashes.SHA-256", "values": [sha256]},
                    {"key": "entity_type", "values": ["Artifact"]},
                ],
                "filterGroups": [],
            },
            withFiles=True,
        )
        return next((item for item in found or [] if item.get("importFiles")), None)

    def upload_artifact(
        self,
        data: bytes,
        file_name: str,
        mime_type: str,
        description: str,
        author_id: str | None,
        marking_ids: list[str],
    ) -> str:
        """Upload a sample as an Artifact (OpenCTI computes its hashes); returns its id."""
        created = self._guard(
            "upload an artifact",
            self.api.stix_cyber_observable.upload_artifact,
            file_name=file_name,
            data=data,
            mime_type=mime_type,
            x_opencti_description=description,
            createdBy=author_id,
            objectMarking=marking_ids,
        )
        if not created or not created.get("id"):
            raise OpenCTIError(f"OpenCTI did not create the artifact {file_name!r}")
        return str(created["id"])


def display_name(name: Any, fallback: str) -> str:
    """A name safe to show in OpenCTI: VT-supplied, so no control characters, no path parts."""
    text = str(name or "")
    text = re.sub(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]", "", text)
    text = text.replace("\\", "/").rsplit("/", 1)[-1].strip().strip(".")
    return text[:255] or fallback


def _clip(exc: Any, secret: str, limit: int = 500) -> str:
    text = re.sub(r"\s+", " ", str(exc))
    if secret:
        text = text.replace(secret, "***")
    return text[:limit]
