"""The OpenCTI emulator's platform side: connectors, works, knowledge, enrichment requests.

It does on a real RabbitMQ what the OpenCTI platform does: `registerConnector` declares the
connector's listen and push queues on the platform's two exchanges and hands the broker's
address to the connector; a worker thread consumes the push queues as OpenCTI's workers do
(base64 bundle, work id, applicant) and ingests the bundles; an enrichment request publishes
the message `ListenQueue._data_handler` reads to the connector's listen queue.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

from vt_pipeline.emulators.opencti.amqp import (
    CONNECTOR_EXCHANGE,
    WORKER_EXCHANGE,
    PushWorker,
    declare_connector_queues,
    listen_queue,
    listen_routing,
    push_queue,
    push_routing,
)
from vt_pipeline.emulators.opencti.graphql import GraphQLFault, Resolver
from vt_pipeline.emulators.opencti.store import (
    IngestResult,
    Node,
    Record,
    Store,
    file_hashes,
    now_iso,
)
from vt_pipeline.emulators.opencti.views import Views
from vt_pipeline.emulators.rabbitmq import AMQPConnectionInfo

log = logging.getLogger(__name__)


@dataclass
class Work:
    """An OpenCTI work: what a connector did for one run, with its messages and errors."""

    id: str
    name: str
    connector_id: str
    is_multipart: bool = False
    status: str = "wait"
    event_source_id: str | None = None
    timestamp: str = field(default_factory=now_iso)
    received_time: str | None = None
    processed_time: str | None = None
    completed_time: str | None = None
    expected: int = 0
    processed: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    draft_context: str | None = None

    def add_message(self, message: str | None, error: bool = False, source: str = "") -> None:
        if not message:
            return
        target = self.errors if error else self.messages
        target.append(
            {
                "timestamp": now_iso(),
                "message": message,
                "sequence": len(self.messages) + len(self.errors),
                "source": source,
            }
        )

    def check_complete(self, processed_reported: bool = False) -> None:
        """OpenCTI's rule (`domain/work.js`, `redis.ts` `isWorkCompleted`): complete when the
        processed count EQUALS the expectations, checked on each `reportExpectation` and on
        `toProcessed`; `toProcessed` also completes a work that never announced any. So a work
        whose expectations were announced and never all reported stays in progress, even after
        `toProcessed(inError: true)`; one reported beyond its expectations never completes."""
        if self.status == "complete":
            return
        met = self.expected > 0 and self.processed == self.expected
        if met or (processed_reported and self.expected == 0):
            self.status = "complete"
            self.completed_time = now_iso()

    @property
    def in_error(self) -> bool:
        """Whether the connector (or the worker) reported an error on this work."""
        return bool(self.errors)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "connector_id": self.connector_id,
            "status": self.status,
            "expected": self.expected,
            "processed": self.processed,
            "messages": [m["message"] for m in self.messages],
            "errors": [e["message"] for e in self.errors],
            "in_error": self.in_error,
        }


@dataclass(frozen=True)
class PlaybookStep:
    """One `playbookStepExecution` a connector sent: the bundle it hands to the next step."""

    execution_id: str
    event_id: str
    playbook_id: str
    data_instance_id: str
    step_id: str
    previous_step_id: str
    execution_start: str
    bundle: dict[str, Any]
    previous_bundle: dict[str, Any] | None


class Platform:
    """Connectors, works, knowledge and the GraphQL resolvers over them."""

    def __init__(self, amqp: AMQPConnectionInfo | None = None) -> None:
        self.store = Store()
        self.lock = self.store.lock
        self.amqp = amqp
        self.user: dict[str, Any] = {
            "id": "88ec0c6a-13ce-5e39-b486-354fe4a7084f",  # OpenCTI's admin user id
            "name": "admin",
            "user_email": "admin@opencti.io",
            "firstname": "Admin",
            "lastname": "OpenCTI",
            "language": "auto",
            "api_token": None,
        }
        self.views = Views(self.store, self.user)
        self.connectors: dict[str, dict[str, Any]] = {}
        self.works: dict[str, Work] = {}
        self.playbook_steps: list[PlaybookStep] = []
        self.operations: Counter[str] = Counter()
        self.paused = threading.Event()  # set during a simulated outage: workers stop too
        self._resolvers: dict[str, Resolver] | None = None
        self._worker = (
            PushWorker(amqp, self._handle_pushed_bundle, self.paused) if amqp is not None else None
        )

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is not None:
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()

    # -- AMQP ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _channel(self) -> Iterator[Any]:
        """A short-lived channel: pika connections are not thread-safe, these are cheap."""
        if self.amqp is None:
            raise GraphQLFault(
                "vt_pipeline OpenCTI emulator: no RabbitMQ configured "
                "(start the emulator with amqp=...)",
                "UNSUPPORTED",
            )
        conn = pika.BlockingConnection(self.amqp.connection_parameters(connection_attempts=3))
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _declare_connector_queues(self, connector_id: str, new: bool) -> None:
        """The connector's queues; emptied when this platform has never seen the connector.
        A platform that starts empty has no queue for it yet, but the broker may outlive the
        emulator (tests share one RabbitMQ): a bundle or request a previous emulator left
        there names works this one never had, and must not be ingested here."""
        with self._channel() as channel:
            declare_connector_queues(channel, connector_id)
            if new:
                channel.queue_purge(listen_queue(connector_id))
                channel.queue_purge(push_queue(connector_id))
        if self._worker is not None:
            self._worker.consume(push_queue(connector_id))

    def _handle_pushed_bundle(
        self, bundle: str, work_id: str | None, entities_types: list[str] | None
    ) -> None:
        self.ingest(bundle, work_id=work_id, entities_types=entities_types)

    def publish_to_connector(self, connector_id: str, message: Mapping[str, Any]) -> None:
        """Publish to a connector's listen queue, persistent, as the platform does."""
        with self._channel() as ch:
            ch.basic_publish(
                CONNECTOR_EXCHANGE,
                listen_routing(connector_id),
                json.dumps(message),
                pika.BasicProperties(delivery_mode=2, content_type="application/json"),
            )

    def queue_depth(self, queue_name: str) -> int | None:
        if self.amqp is None:
            return None
        try:
            with self._channel() as ch:
                return ch.queue_declare(queue_name, passive=True).method.message_count
        except pika.exceptions.AMQPError:
            return None

    # -- connectors ---------------------------------------------------------------------------
    def connector_config(self, connector_id: str) -> dict[str, Any]:
        amqp = self.amqp
        return {
            "connection": {
                "host": amqp.host if amqp else None,
                "vhost": amqp.vhost if amqp else None,
                "use_ssl": amqp.use_ssl if amqp else False,
                "port": amqp.port if amqp else None,
                "user": amqp.user if amqp else None,
                "pass": amqp.password if amqp else None,
            },
            # pycti reads every key of s3 (it would upload bundles there if told to).
            "s3": dict.fromkeys(
                (
                    "endpoint",
                    "port",
                    "use_ssl",
                    "bucket_name",
                    "bucket_region",
                    "access_key",
                    "secret_key",
                )
            ),
            "listen": listen_queue(connector_id),
            "listen_routing": listen_routing(connector_id),
            "listen_exchange": CONNECTOR_EXCHANGE,
            "listen_callback_uri": None,
            "push": push_queue(connector_id),
            "push_routing": push_routing(connector_id),
            "push_exchange": WORKER_EXCHANGE,
            "dead_letter_routing": None,
        }

    def register_connector(self, data: Mapping[str, Any]) -> dict[str, Any]:
        connector_id = str(data["id"])
        with self.lock:
            new = connector_id not in self.connectors
            existing = self.connectors.get(connector_id, {})
            connector = {
                **existing,
                **{
                    k: data.get(k)
                    for k in (
                        "name",
                        "type",
                        "scope",
                        "auto",
                        "auto_update",
                        "only_contextual",
                        "playbook_compatible",
                        "enrichment_resolution",
                        "listen_callback_uri",
                        "version",
                        "slug",
                    )
                },
                "id": connector_id,
                "state": existing.get("state"),
                "created_at": existing.get("created_at", now_iso()),
                "updated_at": now_iso(),
                "info": existing.get("info"),
            }
            self.connectors[connector_id] = connector
        if self.amqp is not None:
            self._declare_connector_queues(connector_id, new)
        return connector

    def connector(self, connector_id: str) -> dict[str, Any]:
        connector = self.connectors.get(str(connector_id))
        if connector is None:
            raise GraphQLFault(f"Connector {connector_id} not found", "NOT_FOUND")
        return connector

    def connector_node(self, connector: Mapping[str, Any]) -> Node:
        cid = connector["id"]
        return {
            "__typename": "Connector",
            "id": cid,
            "name": connector.get("name"),
            "active": True,
            "auto": bool(connector.get("auto")),
            "auto_update": bool(connector.get("auto_update")),
            "only_contextual": bool(connector.get("only_contextual")),
            "playbook_compatible": bool(connector.get("playbook_compatible")),
            "enrichment_resolution": connector.get("enrichment_resolution"),
            "connector_type": connector.get("type"),
            "connector_scope": list(connector.get("scope") or []),
            "connector_state": connector.get("state"),
            "connector_info": connector.get("info"),
            "connector_user_id": self.user["id"],
            "connector_user": {"id": self.user["id"], "name": self.user["name"], "api_tokens": []},
            "connector_priority_group": None,
            "connector_queue_details": lambda **_: {
                "messages_number": self.queue_depth(listen_queue(cid)) or 0,
                "messages_size": 0,
            },
            "jwks": _JWKS,
            "config": self.connector_config(cid),
            "built_in": False,
            "created_at": connector.get("created_at"),
            "updated_at": connector.get("updated_at"),
            "works": lambda **_: [
                self.work_node(w) for w in self.works.values() if w.connector_id == cid
            ],
        }

    # -- works --------------------------------------------------------------------------------
    def create_work(
        self,
        connector_id: str,
        name: str,
        is_multipart: bool = False,
        event_source_id: str | None = None,
    ) -> Work:
        with self.lock:
            self.connector(connector_id)
            work = Work(
                id=f"work_{connector_id}_{uuid.uuid4()}",
                name=name or "",
                connector_id=str(connector_id),
                is_multipart=bool(is_multipart),
                event_source_id=event_source_id,
            )
            self.works[work.id] = work
            return work

    def _work(self, work_id: str | None) -> Work:
        work = self.works.get(str(work_id))
        if work is None:
            raise GraphQLFault(f"Work {work_id} is no longer alive", "WORK_NOT_ALIVE")
        return work

    def work_node(self, work: Work) -> Node:
        connector = self.connectors.get(work.connector_id, {})
        return {
            "__typename": "Work",
            "id": work.id,
            "name": work.name,
            "status": work.status,
            "user": {"id": self.user["id"], "name": self.user["name"]},
            "connector": {"id": work.connector_id, "name": connector.get("name")},
            "timestamp": work.timestamp,
            "event_source_id": work.event_source_id,
            "received_time": work.received_time,
            "processed_time": work.processed_time,
            "completed_time": work.completed_time,
            "draft_context": work.draft_context,
            "tracking": {
                "import_expected_number": work.expected,
                "import_processed_number": work.processed,
            },
            "messages": list(work.messages),
            "errors": list(work.errors),
        }

    def work_edit(self, id: str) -> Node:
        work = self._work(id)

        def to_received(message: str | None = None, **_: Any) -> str:
            work.status = "progress"
            work.received_time = now_iso()
            work.add_message(message)
            return work.id

        def to_processed(message: str | None = None, inError: bool | None = False, **_: Any) -> str:
            work.processed_time = now_iso()
            if work.received_time is None:
                work.received_time = work.processed_time
            work.add_message(message, error=bool(inError))
            if work.status == "wait":
                work.status = "progress"
            work.check_complete(processed_reported=True)
            return work.id

        def report_expectation(error: Mapping[str, Any] | None = None, **_: Any) -> str:
            self.report_expectations(work, 1, error.get("error") if error else None)
            return work.id

        def add_expectations(expectations: int | None = 0, **_: Any) -> str:
            work.expected += int(expectations or 0)
            if work.status == "wait":
                work.status = "progress"
            return work.id

        def add_draft_context(draftContext: str | None = None, **_: Any) -> str:
            work.draft_context = draftContext
            return work.id

        def delete(**_: Any) -> str:
            self.works.pop(work.id, None)
            return work.id

        return {
            "__strict__": True,
            "toReceived": to_received,
            "toProcessed": to_processed,
            "reportExpectation": report_expectation,
            "addExpectations": add_expectations,
            "addDraftContext": add_draft_context,
            "ping": lambda **_: work.id,
            "delete": delete,
        }

    def report_expectations(self, work: Work, count: int, error: str | None = None) -> None:
        with self.lock:
            work.processed += count
            if error:
                work.add_message(error, error=True, source="worker")
            work.check_complete()

    # -- knowledge ----------------------------------------------------------------------------
    def ingest(
        self,
        bundle: Mapping[str, Any] | str,
        *,
        work_id: str | None = None,
        connector_id: str | None = None,
        entities_types: list[str] | None = None,
        expectations: bool = False,
    ) -> IngestResult:
        """Ingest a bundle for a work (worker or stixBundlePush) and report it on the work."""
        work = self.works.get(str(work_id)) if work_id else None
        with self.lock:
            try:
                result = self.store.ingest_bundle(bundle, entities_types)
            except GraphQLFault as fault:
                if work is not None:
                    self.report_expectations(work, 1, fault.message)
                raise
            if work is not None:
                count = max(result.count, 1)
                if expectations:
                    work.expected += count
                self.report_expectations(work, count if expectations else 1)
            source = connector_id or (work.connector_id if work else None)
            self._auto_enrich(result.created, source)
        return result

    def _auto_enrich(self, created: list[Record], source_connector: str | None) -> None:
        """OpenCTI's auto-enrichment: new entities go to `auto` connectors whose scope fits."""
        for connector in list(self.connectors.values()):
            if (
                connector.get("type") != "INTERNAL_ENRICHMENT"
                or not connector.get("auto")
                or connector["id"] == source_connector
                or self.amqp is None
            ):
                continue
            scope = {s.lower() for s in connector.get("scope") or ()}
            for record in created:
                if record.is_relationship or record.entity_type.lower() not in scope:
                    continue
                try:
                    self.ask_enrichment(
                        record.internal_id, connector["id"], mode="auto", trigger="create"
                    )
                except (GraphQLFault, pika.exceptions.AMQPError) as error:
                    log.warning("auto enrichment of %s failed: %s", record.standard_id, error)

    def ask_enrichment(
        self, entity_id: str, connector_id: str, mode: str = "manual", trigger: str = "update"
    ) -> Work:
        """Create a work and publish the enrichment request to the connector's listen queue.

        The message is OpenCTI's: `internal.mode` is `manual` for a click (or the API's
        `askEnrichment`), `auto` for auto-enrichment, whose `internal.trigger` is `create` for
        a new entity; `applicant_id` is null in both.
        """
        if self.amqp is None:
            raise GraphQLFault(
                "vt_pipeline OpenCTI emulator: enrichment needs RabbitMQ "
                "(start the emulator with amqp=...)",
                "UNSUPPORTED",
            )
        with self.lock:
            record = self.store.get(entity_id)
            if record is None:
                raise GraphQLFault(f"Cannot find the element {entity_id}", "NOT_FOUND")
            connector = self.connector(connector_id)
            work = self.create_work(
                connector["id"],
                f"Enrichment ({record.standard_id})",
                event_source_id=record.standard_id,
            )
            stix_entity = self.store.export_stix(record)
            stix_objects = None
            if connector.get("enrichment_resolution") == "stix_bundle":
                stix_objects = [stix_entity, *self._dependencies(record)]
            message = {
                "internal": {
                    "work_id": work.id,
                    "applicant_id": None,  # OpenCTI sends null for both modes
                    "draft_id": None,
                    "trigger": trigger,
                    "mode": mode,
                },
                "event": {
                    "event_type": "INTERNAL_ENRICHMENT",
                    "entity_id": record.standard_id,
                    "entity_type": record.entity_type,
                    "stix_entity": json.dumps(stix_entity),
                    "stix_objects": json.dumps(stix_objects) if stix_objects else None,
                },
            }
        self.publish_to_connector(connector["id"], message)
        return work

    def ask_playbook_enrichment(
        self,
        entity_id: str,
        connector_id: str,
        bundle: Mapping[str, Any] | None = None,
        *,
        playbook_id: str | None = None,
    ) -> str:
        """What a playbook step "enrich with connector X" publishes; returns the execution id.

        No work (`work_id` null); `internal.playbook` says where the answer goes and
        `event.bundle` holds the data flowing through the playbook: `bundle`, or the entity
        with its author and markings. The connector answers with `playbookStepExecution`.
        """
        with self.lock:
            record = self.record(entity_id)
            self.connector(connector_id)
            if bundle is None:
                objects = [*self._dependencies(record), self.store.export_stix(record)]
                bundle = {"type": "bundle", "id": f"bundle--{uuid.uuid4()}", "objects": objects}
            execution_id = str(uuid.uuid4())
            message = {
                "internal": {
                    "work_id": None,
                    "applicant_id": None,
                    "draft_id": None,
                    "playbook": {
                        "execution_id": execution_id,
                        "event_id": f"{int(time.time() * 1000)}-0",
                        "playbook_id": playbook_id or str(uuid.uuid4()),
                        "data_instance_id": record.standard_id,
                        "step_id": str(uuid.uuid4()),
                        "previous_step_id": str(uuid.uuid4()),
                    },
                },
                "event": {
                    "event_type": "INTERNAL_ENRICHMENT",
                    "entity_id": record.standard_id,
                    "entity_type": record.entity_type,
                    "bundle": dict(bundle),
                },
            }
        self.publish_to_connector(connector_id, message)
        return execution_id

    def record_playbook_step(self, **arguments: Any) -> bool:
        """`playbookStepExecution`: keep what the connector handed to the next step."""

        def parse(value: Any) -> dict[str, Any] | None:
            if value in (None, ""):
                return None
            data = json.loads(value) if isinstance(value, str | bytes) else value
            if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
                raise GraphQLFault("playbookStepExecution needs a STIX bundle", "VALIDATION_ERROR")
            return data

        bundle = parse(arguments.get("bundle"))
        if bundle is None:
            raise GraphQLFault("playbookStepExecution needs a bundle", "VALIDATION_ERROR")
        step = PlaybookStep(
            execution_id=str(arguments["execution_id"]),
            event_id=str(arguments.get("event_id")),
            playbook_id=str(arguments.get("playbook_id")),
            data_instance_id=str(arguments.get("data_instance_id")),
            step_id=str(arguments.get("step_id")),
            previous_step_id=str(arguments.get("previous_step_id")),
            execution_start=str(arguments.get("execution_start")),
            bundle=bundle,
            previous_bundle=parse(arguments.get("previous_bundle")),
        )
        with self.lock:
            self.playbook_steps.append(step)
        return True

    def publish_raw(self, connector_id: str, body: bytes) -> None:
        """Put any bytes (a malformed message, say) on a connector's listen queue."""
        self.connector(connector_id)
        with self._channel() as ch:
            ch.basic_publish(
                CONNECTOR_EXCHANGE,
                listen_routing(connector_id),
                body,
                pika.BasicProperties(delivery_mode=2, content_type="application/json"),
            )

    def create_entity(
        self,
        stix: Mapping[str, Any],
        *,
        files: Sequence[tuple[str, bytes, str]] = (),
        extra_objects: Sequence[Mapping[str, Any]] = (),
    ) -> Record:
        """Test set-up: store one entity (and the markings it needs), attach `files`
        (name, bytes, mime type), then auto-enrich it as OpenCTI would a new entity."""
        with self.lock:
            for extra in extra_objects:
                self.store.upsert(extra)
            record, created = self.store.upsert(stix)
            for name, data, mime_type in files:
                self.store.add_file(record, name, data, mime_type)
            if created:
                self._auto_enrich([record], None)
            return record

    def _dependencies(self, record: Record) -> list[dict[str, Any]]:
        refs = [self.store.created_by_ref(record), *self.store.markings_of(record)]
        found = [self.store.get(ref) for ref in refs if ref]
        return [self.store.export_stix(r) for r in found if r is not None]

    def import_artifact(
        self,
        name: str,
        data: bytes,
        mime_type: str,
        *,
        description: str | None = None,
        created_by: str | None = None,
        markings: list[str] | None = None,
        labels: list[str] | None = None,
    ) -> Record:
        """`artifactImport`: an Artifact from uploaded bytes, merged by hash, file attached."""
        hashes = file_hashes(data)
        artifact: dict[str, Any] = {
            "type": "artifact",
            "spec_version": "2.1",
            "id": _sco_id("artifact", {"hashes": {"MD5": hashes["MD5"]}}),
            "mime_type": mime_type,
            "hashes": hashes,
            "x_opencti_additional_names": [name],
        }
        if description:
            artifact["x_opencti_description"] = description
        if created_by:
            author = self.store.get(created_by)
            artifact["x_opencti_created_by_ref"] = author.standard_id if author else created_by
        if markings:
            artifact["object_marking_refs"] = [
                getattr(self.store.get(m), "standard_id", m) for m in markings
            ]
        if labels:
            artifact["x_opencti_labels"] = list(labels)
        with self.lock:
            record, _ = self.store.upsert(artifact)
            self.store.add_file(record, name, data, mime_type)
            return record

    # -- GraphQL ------------------------------------------------------------------------------
    def resolvers(self) -> dict[str, Resolver]:
        """The GraphQL root fields this platform answers (built once)."""
        if self._resolvers is None:
            from vt_pipeline.emulators.opencti.resolvers import build_resolvers

            self._resolvers = build_resolvers(self)
        return self._resolvers

    def record(self, any_id: str) -> Record:
        """A record by any id, or the NOT_FOUND error OpenCTI gives."""
        record = self.store.get(any_id)
        if record is None:
            raise GraphQLFault(f"Cannot find the element {any_id}", "NOT_FOUND")
        return record


@dataclass
class UploadedFile:
    """A file part of a GraphQL multipart request, put where the spec's `map` says."""

    name: str
    data: bytes
    mime_type: str


def _sco_id(stix_type: str, contributing: Mapping[str, Any]) -> str:
    """STIX 2.1 deterministic SCO id (uuid5 over canonical JSON), as stix2 computes it."""
    from stix2.canonicalization.Canonicalize import canonicalize

    namespace = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
    return f"{stix_type}--{uuid.uuid5(namespace, canonicalize(dict(contributing), utf8=False))}"


# A JWKS for pycti's ListenQueue (it parses it at start; only its HTTP listen mode uses it).
_JWKS = json.dumps(
    {
        "keys": [
            {
                "kty": "oct",
                "kid": "vt-pipeline-emulator",
                "alg": "HS256",
                "k": base64.urlsafe_b64encode(b"vt-pipeline-emulator-jwks-key!!!")
                .decode()
                .rstrip("="),
            }
        ]
    }
)
