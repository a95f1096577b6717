"""OpenCTI, through pycti: connector identity, works, bundles, artifacts.

`OpenCTIResource` is configuration (the upstream connector's variable names: `OPENCTI_URL`,
`OPENCTI_TOKEN`, `CONNECTOR_ID`, `CONNECTOR_NAME`, `CONNECTOR_SCOPE`,
`CONNECTOR_CONFIDENCE_LEVEL`, `CONNECTOR_LOG_LEVEL`, `CONNECTOR_QUEUE_PROTOCOL`). Inside a step,
`with resource.connector() as cti:` registers the connector through pycti's own
`OpenCTIConnectorHelper` and yields an `OpenCTIConnector`: the operations vt_pipeline needs,
each failing with an `OpenCTIError` that says what went wrong and never contains the token.

Two identities: `connector()` is the Livehunt connector (EXTERNAL_IMPORT, `CONNECTOR_ID`...),
`connector("enrichment")` the enrichment one (INTERNAL_ENRICHMENT, playbook-compatible,
`VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID/NAME/SCOPE`, `CONNECTOR_AUTO`); the configuration passed to
pycti wins over the same names in the environment, which pycti would otherwise prefer.

Bundles travel as pycti sends them: split, then through RabbitMQ (`amqp`, the connector's push
queue) or the GraphQL API (`api`, `stixBundlePush`). A delivery counts as accepted only when the
OpenCTI work that carries it is complete without errors.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
from pydantic import Field

LIVEHUNT_CONNECTOR_ID = "325cbb22-ee42-4898-9d99-302ca216671b"  # upstream's default id
LIVEHUNT_SCOPE = "StixFile,Indicator,Incident,Artifact,Domain-Name,Url,IPv4-Addr,IPv6-Addr"
# The enrichment connector: its own identity, so OpenCTI sees two connectors.
ENRICHMENT_CONNECTOR_ID = "8a4f2b6e-3c1d-4e5f-9a7b-1c2d3e4f5a6b"
ENRICHMENT_CONNECTOR_NAME = "VirusTotal"
ENRICHMENT_SCOPE = "StixFile,Artifact,IPv4-Addr,Domain-Name,Hostname,Url,Indicator"
ConnectorKind = Literal["livehunt", "enrichment"]


class OpenCTIError(Exception):
    """OpenCTI unreachable, refusing a request, or failing to ingest what was sent."""


class OpenCTIResource(dg.ConfigurableResource):
    """OpenCTI platform access and the identity vt_pipeline registers as a connector."""

    url: str = Field(default="", description="OPENCTI_URL; empty = OpenCTI not configured.")
    token: str = Field(default="", description="OPENCTI_TOKEN. A secret: set it with EnvVar.")
    connector_id: str = Field(default=LIVEHUNT_CONNECTOR_ID, description="CONNECTOR_ID (UUIDv4)")
    connector_name: str = "VirusTotal Livehunt Notifications"
    connector_scope: str = LIVEHUNT_SCOPE
    connector_confidence_level: int = Field(default=100, description="CONNECTOR_CONFIDENCE_LEVEL")
    connector_log_level: str = Field(default="error", description="CONNECTOR_LOG_LEVEL")
    queue_protocol: str = Field(
        default="amqp", description="CONNECTOR_QUEUE_PROTOCOL: amqp (RabbitMQ) or api (GraphQL)"
    )
    enrichment_connector_id: str = Field(
        default=ENRICHMENT_CONNECTOR_ID, description="VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID (UUIDv4)"
    )
    enrichment_connector_name: str = Field(
        default=ENRICHMENT_CONNECTOR_NAME, description="VIRUSTOTAL_ENRICHMENT_CONNECTOR_NAME"
    )
    enrichment_connector_scope: str = Field(
        default=ENRICHMENT_SCOPE, description="VIRUSTOTAL_ENRICHMENT_CONNECTOR_SCOPE"
    )
    connector_auto: bool = Field(
        default=False, description="CONNECTOR_AUTO: OpenCTI auto-enriches new entities in scope"
    )
    work_timeout_seconds: float = Field(
        default=600.0, description="How long to wait for OpenCTI to ingest one delivery."
    )

    @property
    def configured(self) -> bool:
        return bool(self.url.strip())

    def helper_config(self, kind: ConnectorKind = "livehunt") -> dict[str, Any]:
        """The `OpenCTIConnectorHelper` configuration of one identity, in pycti's own shape."""
        if self.queue_protocol not in {"amqp", "api"}:
            raise OpenCTIError(
                f"CONNECTOR_QUEUE_PROTOCOL must be amqp or api, not {self.queue_protocol!r}"
            )
        if kind == "livehunt":
            identity = {
                "id": self.connector_id,
                "type": "EXTERNAL_IMPORT",
                "name": self.connector_name,
                "scope": self.connector_scope,
                "auto": False,
            }
        elif kind == "enrichment":
            identity = {
                "id": self.enrichment_connector_id,
                "type": "INTERNAL_ENRICHMENT",
                "name": self.enrichment_connector_name,
                "scope": self.enrichment_connector_scope,
                "auto": self.connector_auto,
            }
        else:
            raise OpenCTIError(f"unknown connector kind {kind!r}: livehunt or enrichment")
        return {
            "opencti": {"url": self.url.rstrip("/"), "token": self.token},
            "connector": {
                **identity,
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
    def connector(self, kind: ConnectorKind = "livehunt") -> Iterator[OpenCTIConnector]:
        """Register one identity with OpenCTI and yield the connector; its threads stop on exit."""
        if not self.configured:
            raise OpenCTIError("OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN")
        from pycti import OpenCTIConnectorHelper

        config = self.helper_config(kind)
        # pycti installs a sys.excepthook that SIGTERMs the process on any uncaught exception:
        # right for a connector container, wrong inside a Dagster run or a test session.
        excepthook = sys.excepthook
        try:
            with _config_over_environment():
                # The enrichment connector answers playbook steps too, as upstream's does.
                helper = OpenCTIConnectorHelper(config, playbook_compatible=kind == "enrichment")
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


_shielded = threading.local()


@contextlib.contextmanager
def _config_over_environment() -> Iterator[None]:
    """While pycti builds a helper in this thread, the config we pass wins over os.environ.

    pycti reads `CONNECTOR_ID`, `CONNECTOR_NAME`, `CONNECTOR_SCOPE`, `CONNECTOR_TYPE`,
    `CONNECTOR_AUTO`... from the environment before its config. Those variables configure the
    Livehunt connector here, so without this the enrichment connector would register under the
    Livehunt connector's id. Keys we do not set (MQ_*, OPENCTI_SSL_VERIFY...) still come from
    the environment. Thread-local: other threads' pycti calls are untouched.
    """
    from pycti.connector import opencti_connector_helper as module

    original = getattr(module.get_config_variable, "__wrapped__", module.get_config_variable)
    if module.get_config_variable is original:

        def get_config_variable(
            env_var: str, yaml_path: Any, config: Any = None, *args: Any, **kwargs: Any
        ) -> Any:
            section, key = [*(yaml_path or ()), None, None][:2]
            if (
                getattr(_shielded, "active", False)
                and isinstance(config, dict)
                and key in (config.get(section) or {})
            ):
                env_var = "VT_PIPELINE_UNSET_"  # never set: pycti falls back to the config
            return original(env_var, yaml_path, config, *args, **kwargs)

        get_config_variable.__wrapped__ = original  # type: ignore[attr-defined]
        module.get_config_variable = get_config_variable
    _shielded.active = True
    try:
        yield
    finally:
        _shielded.active = False


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
