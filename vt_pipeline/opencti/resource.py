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

Transient failures (HTTP 5xx or 429, refused, dropped or timed-out connections, a lost RabbitMQ
connection or channel) are waited out with bounded exponential backoff (`retry_attempts`,
`retry_backoff_seconds`, `retry_backoff_max_seconds`), then fail with what happened. A call is
retried in place when repeating it is harmless. Sending a bundle is not harmless as it is: pycti
adds the work's expectations before publishing, so a resend into the same work would leave it
expecting pieces that never come. Livehunt's delivery closes the failed work in error and starts
again in a new work (`deliver_bundle`); an enrichment request has exactly one work, OpenCTI's, so
`send_into_work` counts what each failed attempt registered and published, reports the pieces
that were never published back on the work (`reportExpectation`, as pycti does for an empty
bundle) and sends again into the same work. Real OpenCTI completes a work only once every
expectation is reported (`updateProcessedTime` in its `domain/work.js`: `to_processed`, even in
error, leaves a work with open expectations in progress), so this settling is what lets a work
end, in error or not. A refused token is said to be one, and never retried.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import dagster as dg
import pika.exceptions
import requests
from pydantic import Field, ValidationInfo, field_validator

from vt_pipeline.config import http_url, invalid, is_env_reference, one_of
from vt_pipeline.stix.common import clean_name

log = logging.getLogger(__name__)

LIVEHUNT_CONNECTOR_ID = "325cbb22-ee42-4898-9d99-302ca216671b"  # upstream's default id
LIVEHUNT_SCOPE = "StixFile,Indicator,Incident,Artifact,Domain-Name,Url,IPv4-Addr,IPv6-Addr"
# The enrichment connector: its own identity, so OpenCTI sees two connectors.
ENRICHMENT_CONNECTOR_ID = "8a4f2b6e-3c1d-4e5f-9a7b-1c2d3e4f5a6b"
ENRICHMENT_CONNECTOR_NAME = "VirusTotal"
ENRICHMENT_SCOPE = "StixFile,Artifact,IPv4-Addr,IPv6-Addr,Domain-Name,Hostname,Url,Indicator"
ConnectorKind = Literal["livehunt", "enrichment"]
QueueProtocol = Literal["amqp", "api"]
# pycti hands the level to `logging` upper-cased; these are the names logging knows.
LogLevel = Literal["debug", "info", "warning", "error", "critical"]


class OpenCTIError(Exception):
    """OpenCTI unreachable, refusing a request, or failing to ingest what was sent."""


class OpenCTIUnavailable(OpenCTIError):
    """A transient failure (5xx, lost connection, RabbitMQ down): worth trying again later."""


class _HTTPUnavailable(Exception):
    """Raised by the session hook for a 5xx/429 answer, so that it is told apart from a refusal
    (pycti turns every non-200 answer into a bare `ValueError(body)`)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} from {url}")
        self.status = status


class _Backoff:
    """Bounded exponential backoff: `attempts` tries, delays base, 2*base, ... capped at `cap`."""

    def __init__(self, attempts: int, base: float, cap: float) -> None:
        self.attempts = max(1, attempts)
        self.base = max(0.0, base)
        self.cap = max(self.base, cap)

    def delays(self) -> Iterator[float]:
        for n in range(self.attempts - 1):
            yield min(self.cap, self.base * 2**n)


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
        default=600.0, gt=0, description="How long to wait for OpenCTI to ingest one delivery."
    )
    retry_attempts: int = Field(
        default=8, description="Tries of a call failing transiently (5xx, lost connection)."
    )
    retry_backoff_seconds: float = Field(
        default=1.0, description="First wait before a retry; doubles each time."
    )
    retry_backoff_max_seconds: float = Field(
        default=30.0, description="Longest wait between two tries."
    )

    def _backoff(self) -> _Backoff:
        return _Backoff(
            self.retry_attempts, self.retry_backoff_seconds, self.retry_backoff_max_seconds
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

    @field_validator("connector_id", "enrichment_connector_id")
    @classmethod
    def _uuid_connector_id(cls, value: str, info: ValidationInfo) -> str:
        if is_env_reference(value):
            return value
        try:
            return str(uuid.UUID(value.strip()))
        except ValueError:
            livehunt = info.field_name == "connector_id"
            name = "CONNECTOR_ID" if livehunt else "VIRUSTOTAL_ENRICHMENT_CONNECTOR_ID"
            example = LIVEHUNT_CONNECTOR_ID if livehunt else ENRICHMENT_CONNECTOR_ID
            raise invalid(name, value, f"a UUID, e.g. {example}") from None

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

    def helper_config(self, kind: ConnectorKind = "livehunt") -> dict[str, Any]:
        """The `OpenCTIConnectorHelper` configuration of one identity, in pycti's own shape."""
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

        api = self._open(
            "connect to",
            lambda: OpenCTIApiClient(self.url.rstrip("/"), self.token, log_level="error"),
        )
        return OpenCTIConnector(api, self.token, self.work_timeout_seconds, backoff=self._backoff())

    @contextlib.contextmanager
    def connector(
        self, kind: ConnectorKind = "livehunt", deadline: float | None = None
    ) -> Iterator[OpenCTIConnector]:
        """Register one identity with OpenCTI and yield the connector; its threads stop on exit.

        `deadline` (a `time.monotonic()` value) stops waiting out an unreachable OpenCTI when
        the next retry would pass it: a sensor tick must end well inside Dagster's limit."""
        if not self.configured:
            raise OpenCTIError("OpenCTI is not configured: set OPENCTI_URL and OPENCTI_TOKEN")
        from pycti import OpenCTIConnectorHelper

        config = self.helper_config(kind)

        def register() -> Any:
            # pycti installs a sys.excepthook that SIGTERMs the process on any uncaught
            # exception: right for a connector container, wrong in a Dagster run or a test.
            excepthook = sys.excepthook
            try:
                with _config_over_environment():
                    # The enrichment connector answers playbook steps too, as upstream's does.
                    return OpenCTIConnectorHelper(config, playbook_compatible=kind == "enrichment")
            except SystemExit as exc:  # pycti exits on some registration failures
                raise RuntimeError(f"pycti exited ({exc})") from None
            finally:
                sys.excepthook = excepthook

        helper = self._open("register with", register, deadline)
        try:
            yield OpenCTIConnector(
                helper.api, self.token, self.work_timeout_seconds, helper, self._backoff()
            )
        finally:
            ping = getattr(helper, "ping", None)
            if ping is not None:
                with contextlib.suppress(Exception):
                    ping.stop()

    def _open(self, what: str, make: Callable[[], Any], deadline: float | None = None) -> Any:
        """Build a pycti client or helper, waiting out an OpenCTI that is down or restarting.

        pycti's constructors hide why they failed ("OpenCTI API is not reachable" for a refused
        token too), so a failure is explained by a probe of our own: the token refused is said
        and not retried, a transient failure is retried with backoff, anything else is final.
        """
        delays = self._backoff().delays()
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return make()
            except Exception as exc:
                problem = self._probe()
                if problem is None:  # OpenCTI answers and takes the token: pycti's own failure
                    raise OpenCTIError(
                        f"cannot {what} OpenCTI at {self.url}: {_describe(exc, self.token)}"
                    ) from None
                if not isinstance(problem, OpenCTIUnavailable):
                    raise problem from None
                delay = next(delays, None)
                if delay is None or (deadline is not None and time.monotonic() + delay > deadline):
                    raise OpenCTIUnavailable(
                        f"OpenCTI at {self.url} is not reachable ({problem}); gave up after "
                        f"{attempt} attempts over {time.monotonic() - started:.0f} s"
                    ) from None
                log.warning("OpenCTI at %s: %s; retrying in %.1f s", self.url, problem, delay)
                time.sleep(delay)

    def _probe(self) -> OpenCTIError | None:
        """Ask OpenCTI who we are: None if it answers and accepts the token, else the problem
        (an `OpenCTIUnavailable` when it is worth trying again)."""
        url = f"{self.url.rstrip('/')}/graphql"
        try:
            answer = requests.post(
                url,
                json={"query": "query { me { id } }"},
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=30,
            )
        except requests.RequestException as exc:
            return OpenCTIUnavailable(_describe(exc, self.token))
        if answer.status_code >= 500 or answer.status_code == 429:
            return OpenCTIUnavailable(f"HTTP {answer.status_code} from {url}")
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code in (401, 403) or _auth_refused(body):
            return OpenCTIError(
                f"OpenCTI at {self.url} refused the token (OPENCTI_TOKEN): it must be the API "
                "token of an OpenCTI user (Profile > API access); not retried"
            )
        if answer.status_code != 200 or not isinstance(body, dict):
            return OpenCTIError(
                f"{url} does not answer like OpenCTI (HTTP {answer.status_code}): is OPENCTI_URL "
                "the platform's base URL?"
            )
        return None


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
        self,
        api: Any,
        token: str,
        work_timeout_seconds: float,
        helper: Any | None = None,
        backoff: _Backoff | None = None,
    ) -> None:
        self.api = api
        self._helper = helper
        self._token = token
        self._timeout = work_timeout_seconds
        self._backoff = backoff or _Backoff(1, 0.0, 0.0)
        _watch_status(api)
        self._tally = _count_sends(helper) if helper is not None else _SendTally()
        # pycti keeps the applicant (the user a bundle is sent for) on the helper: whoever sets
        # it holds this lock until the send is done, so concurrent sends never swap users.
        self.applicant_lock = threading.Lock()

    @property
    def helper(self) -> Any:
        if self._helper is None:
            raise OpenCTIError("this OpenCTI session is read-only: use OpenCTIResource.connector()")
        return self._helper

    def _guard(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Call pycti, retrying transient failures in place (for calls safe to repeat)."""
        delays = self._backoff.delays()
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return self._once(what, call, *args, **kwargs)
            except OpenCTIUnavailable as exc:
                delay = next(delays, None)
                if delay is None:
                    if attempt == 1:
                        raise
                    raise OpenCTIUnavailable(
                        f"{exc}; gave up after {attempt} attempts over "
                        f"{time.monotonic() - started:.0f} s"
                    ) from None
                log.warning("%s; retrying in %.1f s", exc, delay)
                time.sleep(delay)

    def _once(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """Call pycti once; failures become OpenCTIError (OpenCTIUnavailable if transient)."""
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            text = _describe(exc, self._token)
            if _auth_refused(exc):
                raise OpenCTIError(
                    f"OpenCTI refused the token (OPENCTI_TOKEN) to {what}: {text}; not retried"
                ) from None
            kind = OpenCTIUnavailable if _transient(exc) else OpenCTIError
            raise kind(f"OpenCTI failed to {what}: {text}") from None

    def initiate_work(self, name: str) -> str:
        work_id = self._guard(
            "create a work", self.api.work.initiate_work, self.helper.connect_id, name
        )
        if not work_id:
            raise OpenCTIError("OpenCTI did not create a work")
        return str(work_id)

    def send_bundle(self, bundle: dict[str, Any], work_id: str) -> int:
        """Send a bundle as pycti does (split, with expectations); returns the pieces sent.

        Tried once: pycti adds the work's expectations before publishing, so sending again into
        the same work would leave it expecting pieces that never come (see `deliver_bundle`).
        """
        sent = self._once(
            "accept a bundle", self.helper.send_stix2_bundle, json.dumps(bundle), work_id=work_id
        )
        return len(sent or [])

    def send_into_work(self, bundle: dict[str, Any], work_id: str) -> int:
        """Send a bundle into an existing work, waiting out a RabbitMQ or OpenCTI blip in place.

        After each failed attempt, the pieces pycti announced but never published are reported
        back on the work, so that its figures stay true and it can complete; the last failure is
        reported with its reason (then `close_work(..., in_error=True)` ends the work)."""
        delays = self._backoff.delays()
        started, attempt = time.monotonic(), 0
        # What failed attempts announced and never published is settled only after the next
        # attempt has announced its own pieces: settled at once, it let the work's processed
        # count catch up with its expectations and complete before the retry was announced.
        owed = 0
        while True:
            attempt += 1
            self._tally.expected = self._tally.published = 0
            try:
                sent = self.send_bundle(bundle, work_id)
            except OpenCTIUnavailable as exc:
                owed += max(0, self._tally.expected - self._tally.published)
                delay = next(delays, None)
                if delay is None:
                    reason = (
                        f"{exc}; gave up after {attempt} attempts over "
                        f"{time.monotonic() - started:.0f} s"
                    )
                    self._settle(work_id, owed, f"vt_pipeline: bundle not sent: {reason}")
                    raise OpenCTIUnavailable(reason) from None
                log.warning("%s; sending again into work %s in %.1f s", exc, work_id, delay)
                time.sleep(delay)
                continue
            except OpenCTIError as exc:
                owed += max(0, self._tally.expected - self._tally.published)
                self._settle(work_id, owed, f"vt_pipeline: bundle not sent: {exc}")
                raise
            self._settle(work_id, owed, None)
            return sent

    def _settle(self, work_id: str, unsent: int, error: str | None) -> None:
        """Report `unsent` expectations of the work as done (the first with `error`)."""
        for index in range(unsent):
            variables: dict[str, Any] = {"id": work_id, "error": None}
            if error and index == 0:
                variables["error"] = {"error": error[:2000], "source": "vt_pipeline"}
            self._guard("settle a work's expectations", self.api.query, _REPORT, variables, True)

    def mark_received(self, work_id: str, message: str) -> None:
        self._guard("mark a work received", self.api.work.to_received, work_id, message)

    def close_work(self, work_id: str, message: str, in_error: bool = False) -> None:
        self._guard("close a work", self.api.work.to_processed, work_id, message, in_error)

    def answer_playbook(self, playbook: dict[str, Any], bundle: dict[str, Any]) -> None:
        """Answer a playbook step with a bundle (pycti's `playbook_step_execution`). Tried once:
        a step answered twice would run the rest of the playbook twice."""
        self._once(
            "answer a playbook step",
            self.api.playbook.playbook_step_execution,
            playbook,
            json.dumps(bundle),
        )

    def work_status(self, work_id: str) -> str | None:
        """The work's status (wait, progress, complete), or None if OpenCTI does not know it."""
        work = self._guard("read a work", self.api.work.get_work, work_id)
        return str(work.get("status")) if isinstance(work, dict) and work else None

    def fail_work(self, work_id: str, reason: str) -> bool:
        """Close a work in error with the reason (one try: OpenCTI may be what failed);
        False if it could not be closed (the next delivery of its window will)."""
        try:
            self._once(
                "close a work in error", self.api.work.to_processed, work_id, reason[:2000], True
            )
        except OpenCTIError as exc:
            log.warning("could not close OpenCTI work %s in error: %s", work_id, exc)
            return False
        return True

    def deliver_bundle(
        self, bundle: dict[str, Any], work_name: str, message: str
    ) -> tuple[str, int]:
        """Send a bundle in a new work, close it and wait until OpenCTI has ingested it.

        Returns (work id, pieces sent). A transient failure while sending closes that work in
        error and starts again in a new one, with backoff; any failure closes the work in error
        with the reason before it is raised, so no work is left in progress.
        """
        delays = self._backoff.delays()
        started, attempt = time.monotonic(), 0
        while True:
            attempt += 1
            work_id = self.initiate_work(work_name)
            try:
                pieces = self.send_bundle(bundle, work_id)
            except OpenCTIUnavailable as exc:
                delay = next(delays, None)
                if delay is None:
                    reason = (
                        f"{exc}; gave up after {attempt} attempts over "
                        f"{time.monotonic() - started:.0f} s"
                    )
                    self.fail_work(work_id, f"vt_pipeline: {reason}")
                    raise OpenCTIUnavailable(reason) from None
                self.fail_work(
                    work_id, f"vt_pipeline: {exc}; sending again in a new work in {delay:.1f} s"
                )
                log.warning("%s; sending again in a new work in %.1f s", exc, delay)
                time.sleep(delay)
                continue
            except OpenCTIError as exc:
                self.fail_work(work_id, f"vt_pipeline: {exc}")
                raise
            try:
                self.close_work(work_id, message)
                self.wait_for_work(work_id)
            except OpenCTIError as exc:
                self.fail_work(work_id, f"vt_pipeline: {exc}")
                raise
            return work_id, pieces

    def close_stale_works(self, work_name: str, older_than_seconds: float) -> list[str]:
        """Close in error the works named `work_name` that were never closed and are older than
        `older_than_seconds` (a live delivery closes its work right after sending): what a
        killed run, or an OpenCTI down when the failure was known, left in progress."""
        works = self._guard(
            "list the connector's works", self.api.work.get_connector_works, self.helper.connect_id
        )
        now = datetime.now(UTC)
        closed = []
        for work in works or []:
            if work.get("name") != work_name or work.get("processed_time"):
                continue
            if work.get("status") == "complete" or work.get("errors"):
                continue
            created = _parse_time(work.get("timestamp"))
            if created is None or (now - created).total_seconds() < older_than_seconds:
                continue
            reason = (
                "vt_pipeline: closed by a later delivery of the same window; the delivery that "
                "opened this work did not finish (its run failed or was killed)"
            )
            if self.fail_work(str(work["id"]), reason):
                closed.append(str(work["id"]))
        return closed

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


_REPORT = """
    mutation reportExpectation($id: ID!, $error: WorkErrorInput) {
        workEdit(id: $id) { reportExpectation(error: $error) }
    }
"""


class _SendTally(threading.local):
    """Per thread: the expectations pycti added and the pieces it published in one send."""

    expected: int = 0
    published: int = 0


def _count_sends(helper: Any) -> _SendTally:
    """The helper's tally (made once per helper, whoever asks again gets the same): per thread,
    what pycti's `send_stix2_bundle` announces (`add_expectations`) and publishes
    (`_send_bundle`, once per piece the broker confirmed), so a failed send can be settled on
    its work. pycti's `add_expectations` swallows its own errors: an announcement OpenCTI never
    received (OpenCTI down at that very call) is settled all the same, and OpenCTI's processed
    count then passes its expectations, so that work never completes. It takes OpenCTI and
    RabbitMQ failing together; the work's errors then say why."""
    existing = getattr(helper, "_vt_pipeline_tally", None)
    if isinstance(existing, _SendTally):
        return existing
    tally = _SendTally()
    send, work = helper._send_bundle, helper.api.work
    add = work.add_expectations

    def counted_send(*args: Any, **kwargs: Any) -> Any:
        result = send(*args, **kwargs)
        tally.published += 1
        return result

    def counted_add(work_id: str, expectations: int) -> Any:
        tally.expected += int(expectations or 0)
        return add(work_id, expectations)

    helper._send_bundle = counted_send
    work.add_expectations = counted_add
    helper._vt_pipeline_tally = tally
    return tally


def display_name(name: Any, fallback: str) -> str:
    """A name safe to show in OpenCTI: VT-supplied, so cleaned as every name put into STIX is
    (`stix.common.clean_name`), and without path parts."""
    text = clean_name(str(name) if name else "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1].strip().strip(".")
    return text or fallback


def _watch_status(api: Any) -> None:
    """Make pycti's HTTP session raise `_HTTPUnavailable` on 5xx/429 answers (once per session),
    so that they are retried rather than taken for a refusal."""
    session = getattr(api, "session", None)
    hooks = getattr(session, "hooks", None)
    if not isinstance(hooks, dict) or _raise_if_unavailable in hooks.get("response", []):
        return
    hooks.setdefault("response", []).append(_raise_if_unavailable)


def _raise_if_unavailable(response: requests.Response, *args: Any, **kwargs: Any) -> None:
    if response.status_code >= 500 or response.status_code == 429:
        raise _HTTPUnavailable(response.status_code, response.url.split("?", 1)[0])


_TRANSIENT: tuple[type[BaseException], ...] = (
    _HTTPUnavailable,
    requests.ConnectionError,  # refused, reset, dropped
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    pika.exceptions.AMQPConnectionError,  # RabbitMQ down, restarting, connection lost
    pika.exceptions.AMQPChannelError,
    ConnectionError,
    TimeoutError,
)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT)


def _auth_refused(error: Any) -> bool:
    """pycti's ValueError for a GraphQL AUTH_REQUIRED answer, or such an answer's body."""
    text = json.dumps(error) if isinstance(error, dict) else str(error)
    return "AUTH_REQUIRED" in text


def _describe(exc: BaseException, secret: str) -> str:
    """What happened, never empty (pika's errors often have no message) and without the token."""
    text = _clip(exc, secret)
    name = type(exc).__name__
    if isinstance(exc, pika.exceptions.AMQPError):
        what = "RabbitMQ connection or channel lost or refused"
        return f"{what} ({name}{': ' + text if text else ''}); is RabbitMQ down or restarting?"
    if isinstance(exc, _HTTPUnavailable):
        return f"{text} (OpenCTI unavailable)"
    if isinstance(exc, requests.ConnectionError):
        return f"connection refused or dropped ({name}: {text})"
    if isinstance(exc, requests.Timeout):
        return f"no answer in time ({name}: {text})"
    return f"{text} ({name})" if text else name


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _clip(exc: Any, secret: str, limit: int = 500) -> str:
    text = re.sub(r"\s+", " ", str(exc))
    if secret:
        text = text.replace(secret, "***")
    return text[:limit]
