"""An emulator of the OpenCTI platform, good enough for the real pycti to run against it.

A real HTTP server (aiohttp) answering, at `/graphql`, the GraphQL operations pycti 7 sends for
this project (connector registration and pings, works, bundle push, artifact upload, entity
reads, enrichment requests), serving uploaded files at `/storage/get/{id}`, and standing in for
OpenCTI's workers on a real RabbitMQ (see `platform`). Operations it does not know are
GraphQL errors naming them. Tests, the demo and the benchmarks inspect it through Python
accessors or `GET /_emulator/state`, and simulate an outage with `set_outage` or
`POST /_emulator/outage`.

    with RabbitMQ() as mq, OpenCTIEmulator(amqp=mq) as opencti:
        OpenCTIApiClient(opencti.url, opencti.token)

Enrichment tests set the platform up and read the outcome from Python:

    file_id = opencti.create_observable("StixFile", hashes={"SHA-256": sha}, markings=["TLP:AMBER"])
    work_id = opencti.ask_enrichment(file_id, connector_id)        # an analyst's click
    execution_id = opencti.ask_playbook_enrichment(file_id, connector_id)   # a playbook step
    opencti.publish_raw(connector_id, b"not json")                 # a malformed request
    opencti.work(work_id).in_error, opencti.score_of(file_id), opencti.notes_about(file_id)
    opencti.indicators_based_on(file_id), opencti.playbook_results(execution_id)

Requests carry OpenCTI's `internal.mode`: `manual` (click / API) or `auto` (auto-enrichment of
a new entity, `internal.trigger` = `create`); playbook requests carry `internal.playbook`.

Modules: `graphql` (schema-less executor), `store` (STIX upsert store),
`views` (GraphQL shapes), `platform` (connectors, works, queues, resolvers),
`entities` (STIX builders for the test set-up).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from vt_pipeline.emulators.opencti import pages
from vt_pipeline.emulators.opencti.entities import indicator_stix, marking_stix, observable_stix
from vt_pipeline.emulators.opencti.graphql import (
    EMULATOR,
    GraphQLFault,
    execute,
    parse_request,
)
from vt_pipeline.emulators.opencti.live_stream import LiveStream
from vt_pipeline.emulators.opencti.platform import Platform, PlaybookStep, UploadedFile, Work
from vt_pipeline.emulators.opencti.store import Record, Store, StoredFile, file_hashes
from vt_pipeline.emulators.processes import Service, interrupt_on_sigterm
from vt_pipeline.emulators.rabbitmq import AMQPConnectionInfo, RabbitMQ

log = logging.getLogger(__name__)

DEFAULT_TOKEN = "5e8a1e38-8b6a-4e6f-9d6e-0f7a3c1d2b4a"
MAX_REQUEST_BYTES = 512 * 1024 * 1024  # artifacts up to VT's 32-650 MB files, big bundles
_AUTH_ERROR = {
    "errors": [
        {
            "message": "You must be logged in to do this.",
            "name": "AUTH_REQUIRED",
            "extensions": {"code": "AUTH_REQUIRED"},
        }
    ],
    "data": None,
}


@dataclass
class Outage:
    """A simulated outage: `/graphql` and `/storage` answer `status`, or refuse connections."""

    mode: str  # "error" | "refuse"
    status: int = 503
    until: float | None = None  # time.monotonic() deadline, None = until cleared

    @classmethod
    def parse(cls, mode: str | int, seconds: float | None = None) -> Outage:
        """From `set_outage` / `POST /_emulator/outage` arguments; ValueError if unknown."""
        if str(mode) == "refuse":
            outage = cls("refuse", 0)
        elif str(mode) in ("500", "502", "503", "504"):
            outage = cls("error", int(mode))
        else:
            raise ValueError(f"outage mode must be 500, 502, 503, 504 or 'refuse', not {mode!r}")
        if seconds is not None:
            outage.until = time.monotonic() + float(seconds)
        return outage

    def to_json(self) -> dict[str, Any]:
        remaining = None if self.until is None else max(0.0, self.until - time.monotonic())
        return {
            "enabled": True,
            "mode": self.mode,
            "status": self.status,
            "seconds_left": remaining,
        }


class OpenCTIEmulator(Service):
    """The emulated platform, served on 127.0.0.1 in a background thread.

    `amqp` is the RabbitMQ connectors are told to use (a `RabbitMQ`, connection info or an
    amqp:// URL); without one only `queue_protocol: api` works and enrichment cannot be asked.
    """

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        amqp: AMQPConnectionInfo | RabbitMQ | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if isinstance(amqp, RabbitMQ):
            amqp = amqp.connection_info
        elif isinstance(amqp, str):
            amqp = AMQPConnectionInfo.from_url(amqp)
        self.token = token
        self.host = host
        self.port = port
        self.platform = Platform(amqp)
        self.live_stream = LiveStream(self.platform.store)  # `/stream/{id}`: see live_stream
        self._outage: Outage | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._expiry: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the OpenCTI emulator is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def store(self) -> Store:
        return self.platform.store

    @property
    def amqp(self) -> AMQPConnectionInfo | None:
        return self.platform.amqp

    def start(self) -> OpenCTIEmulator:
        """Serve in a daemon thread; returns once the socket listens."""
        if self._loop is not None:
            raise RuntimeError("already started")
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="opencti-emulator")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="opencti-emulator-http", daemon=True
        )
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start_server(), self._loop).result(timeout=15)
        self.platform.start()
        return self

    def stop(self) -> None:
        """Stop serving, stop the worker, release the port."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop_server(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=15)
        loop.close()
        self._loop = self._thread = None
        self.platform.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        """Context manager yielding the URL (same shape as the VirusTotal emulator)."""
        with self:
            yield self.url

    def api_client(self, **kwargs: Any) -> Any:
        """A real `pycti.OpenCTIApiClient` on this emulator (quiet unless told otherwise)."""
        from pycti import OpenCTIApiClient

        kwargs.setdefault("log_level", "error")
        return OpenCTIApiClient(self.url, self.token, **kwargs)

    def helper_config(
        self,
        connector_type: str = "EXTERNAL_IMPORT",
        queue_protocol: str = "amqp",
        **connector: Any,
    ) -> dict[str, Any]:
        """A `pycti.OpenCTIConnectorHelper` config dict pointing at this emulator.

        `connector` overrides or adds keys of the `connector` section (id, name, scope, auto,
        log_level, duration_period...); a random id is used unless one is given.
        """
        scope = "StixFile,Artifact" if connector_type == "INTERNAL_ENRICHMENT" else "vt"
        return {
            "opencti": {"url": self.url, "token": self.token},
            "connector": {
                "id": str(uuid.uuid4()),
                "type": connector_type,
                "name": f"vt_pipeline {connector_type.lower()}",
                "scope": scope,
                "log_level": "error",
                "queue_protocol": queue_protocol,
                **connector,
            },
        }

    # -- introspection (tests, demo, benchmarks) ----------------------------------------------
    def objects(self, entity_type: str | None = None) -> list[dict[str, Any]]:
        """Stored objects as STIX (with OpenCTI's extension ids), optionally of one type.

        `entity_type` is OpenCTI's (`StixFile`, `Incident`) or STIX's (`file`, `incident`).
        """
        return [self.store.export_stix(r) for r in self._records(entity_type)]

    def _records(self, entity_type: str | None) -> list[Record]:
        if entity_type is None:
            return self.store.records()
        wanted = entity_type.lower()
        return self.store.records(
            lambda r: (
                wanted in (r.entity_type.lower(), r.stix_type.lower())
                or wanted in (p.lower() for p in r.parent_types)
            )
        )

    def get(self, any_id: str) -> dict[str, Any] | None:
        """One object by internal id, standard id or merged-in id; None if unknown."""
        record = self.store.get(any_id)
        return self.store.export_stix(record) if record else None

    def record(self, any_id: str) -> Record | None:
        return self.store.get(any_id)

    def find_by_hash(self, algorithm: str, value: str) -> dict[str, Any] | None:
        record = self.store.find_by_hash(algorithm, value)
        return self.store.export_stix(record) if record else None

    def relationships(self, of: str | None = None) -> list[dict[str, Any]]:
        return [self.store.export_stix(r) for r in self.store.relationships(of)]

    def works(self, connector_id: str | None = None) -> list[Work]:
        with self.platform.lock:
            return [
                w
                for w in self.platform.works.values()
                if connector_id is None or w.connector_id == connector_id
            ]

    def work(self, work_id: str) -> Work | None:
        return self.platform.works.get(work_id)

    def artifacts(self) -> list[StoredFile]:
        """Every uploaded file (Artifact `importFiles`), bytes included."""
        return self.store.files()

    @property
    def connectors(self) -> dict[str, dict[str, Any]]:
        return dict(self.platform.connectors)

    def counts(self) -> dict[str, int]:
        return self.store.counts_by_type()

    def state(self) -> dict[str, Any]:
        """What `GET /_emulator/state` returns: counts, works, connectors, calls, outage."""
        with self.platform.lock:
            return {
                "url": self.url if self.port else None,
                "objects": len(self.store),
                "counts_by_type": self.counts(),
                "relationships": len(self.store.relationships()),
                "files": [
                    {"id": f.id, "name": f.name, "size": len(f.data)} for f in self.store.files()
                ],
                "connectors": [
                    {
                        "id": c["id"],
                        "name": c.get("name"),
                        "type": c.get("type"),
                        "scope": c.get("scope"),
                    }
                    for c in self.platform.connectors.values()
                ],
                "works": [w.summary() for w in self.platform.works.values()],
                "playbook_steps": len(self.platform.playbook_steps),
                "operations": dict(self.platform.operations),
                "outage": self._outage.to_json() if self._outage else {"enabled": False},
            }

    def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05
    ) -> bool:
        """Poll `predicate` (AMQP ingestion is asynchronous) until true or `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            with self.platform.lock:
                if predicate():
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(interval)

    def wait_for_work(self, work_id: str, timeout: float = 10.0) -> Work:
        """Wait until a work is complete and its connector reported it processed (OpenCTI may
        complete a work on its last expectation, before the connector's closing message);
        TimeoutError with its state otherwise."""

        def done() -> bool:
            work = self.work(work_id)
            return work is not None and work.status == "complete" and bool(work.processed_time)

        if not self.wait_until(done, timeout):
            work = self.work(work_id)
            raise TimeoutError(
                f"work {work_id} not complete after {timeout} s: "
                f"{work.summary() if work else 'unknown work'}"
            )
        work = self.work(work_id)
        assert work is not None
        return work

    def ask_enrichment(self, entity_id: str, connector_id: str) -> str:
        """What an analyst's "enrich" click does; returns the new work id."""
        return self.platform.ask_enrichment(entity_id, connector_id).id

    def ingest(self, bundle: dict[str, Any] | str) -> None:
        """Seed knowledge directly (test set-up), bypassing connectors and works."""
        self.platform.ingest(bundle)

    # -- enrichment test set-up ---------------------------------------------------------------
    def create_observable(
        self,
        entity_type: str,
        value: str | None = None,
        *,
        hashes: Mapping[str, str] | None = None,
        name: str | None = None,
        markings: Sequence[str] = (),
        labels: Sequence[str] = (),
        score: int | None = None,
        description: str | None = None,
        created_by: str | None = None,
    ) -> str:
        """Create an observable as OpenCTI holds it; returns its standard (STIX) id.

        `entity_type`: `StixFile` (give `hashes` and/or `name`), `IPv4-Addr`, `Domain-Name`,
        `Hostname`, `Url`... (give `value`); use `create_artifact` for an Artifact.
        `markings`: TLP names (`TLP:CLEAR` .. `TLP:RED`, several allowed), other
        `TYPE:VALUE` markings (`PAP:RED`, created on the fly) or marking-definition ids.
        `score`: the entity's existing OpenCTI score. A connector registered with auto=true
        whose scope has this type gets an enrichment request (`internal.mode` = "auto").
        """
        stix = observable_stix(
            entity_type,
            value,
            hashes=hashes,
            name=name,
            markings=markings,
            labels=labels,
            score=score,
            description=description,
            created_by=created_by,
        )
        return self._create(stix, markings)

    def create_artifact(
        self,
        data: bytes,
        name: str = "sample.bin",
        mime_type: str = "application/octet-stream",
        *,
        with_file: bool = True,
        markings: Sequence[str] = (),
        labels: Sequence[str] = (),
        score: int | None = None,
        description: str | None = None,
    ) -> str:
        """Create an Artifact whose file holds `data` (as an upload would); standard id back.

        `with_file=False` keeps only the hashes (an Artifact nothing was uploaded to): pycti 7
        reads it with `importFiles == []` and exports it without `payload_bin` (older pycti
        raised IndexError there), so there are no bytes to upload to VirusTotal.
        """
        hashes = file_hashes(data)
        stix = observable_stix(
            "Artifact",
            hashes=hashes,
            mime_type=mime_type,
            markings=markings,
            labels=labels,
            score=score,
            description=description,
        )
        stix["x_opencti_additional_names"] = [name]
        files = [(name, data, mime_type)] if with_file else []
        return self._create(stix, markings, files)

    def create_indicator(
        self,
        pattern: str,
        *,
        observable_values: Sequence[Mapping[str, Any]] = (),
        name: str | None = None,
        pattern_type: str = "stix",
        main_observable_type: str | None = None,
        markings: Sequence[str] = (),
        labels: Sequence[str] = (),
        score: int | None = None,
        description: str | None = None,
        detection: bool | None = None,
    ) -> str:
        """Create an Indicator with its `x_opencti_observable_values`
        (`[{"type": "Domain-Name", "value": "example.com"}]`, files with `hashes`); its id."""
        stix = indicator_stix(
            pattern,
            observable_values=observable_values,
            name=name,
            pattern_type=pattern_type,
            main_observable_type=main_observable_type,
            markings=markings,
            labels=labels,
            score=score,
            description=description,
        )
        if detection is not None:
            stix["x_opencti_detection"] = detection
        return self._create(stix, markings)

    def edit_entity(self, entity_id: str, **changes: Any) -> str:
        """An analyst's edit in the UI (None removes a field): the live stream sends an update;
        an Indicator's new pattern gives it a new standard id, returned."""
        return self.store.edit(entity_id, changes).standard_id

    def delete_entity(self, entity_id: str) -> None:
        """An analyst deletes the entity: the live stream sends a delete."""
        self.store.delete(entity_id)

    def _create(
        self,
        stix: dict[str, Any],
        markings: Sequence[str],
        files: Sequence[tuple[str, bytes, str]] = (),
    ) -> str:
        extra = [m for m in (marking_stix(d) for d in markings) if m is not None]
        return self.platform.create_entity(stix, files=files, extra_objects=extra).standard_id

    def ask_playbook_enrichment(
        self,
        entity_id: str,
        connector_id: str,
        bundle: Mapping[str, Any] | None = None,
        *,
        playbook_id: str | None = None,
    ) -> str:
        """What a playbook step asking `connector_id` to enrich does; returns the execution id.

        The message has `internal.playbook` (execution_id, event_id, playbook_id,
        data_instance_id, step_id, previous_step_id), `internal.work_id` null, and
        `event.bundle`: `bundle`, or the entity with its markings and author.
        """
        return self.platform.ask_playbook_enrichment(
            entity_id, connector_id, bundle, playbook_id=playbook_id
        )

    def playbook_results(self, execution_id: str | None = None) -> list[dict[str, Any]]:
        """The bundles connectors answered playbook steps with (`playbookStepExecution`),
        oldest first, for one execution or all."""
        with self.platform.lock:
            return [
                step.bundle
                for step in self.platform.playbook_steps
                if execution_id is None or step.execution_id == execution_id
            ]

    def playbook_steps(self, execution_id: str | None = None) -> list[PlaybookStep]:
        """Every recorded `playbookStepExecution` call, with all its arguments."""
        with self.platform.lock:
            return [
                step
                for step in self.platform.playbook_steps
                if execution_id is None or step.execution_id == execution_id
            ]

    def publish_raw(self, connector_id: str, body: bytes) -> None:
        """Put arbitrary bytes (a malformed request, say) on a connector's listen queue."""
        self.platform.publish_raw(connector_id, body)

    # -- enrichment outcome accessors ---------------------------------------------------------
    def score_of(self, entity_id: str) -> int | None:
        """The entity's OpenCTI score (None when it has none); KeyError if unknown."""
        record = self._known(entity_id)
        score = record.prop("x_opencti_score")
        return None if score is None else int(score)

    def labels_of(self, entity_id: str) -> list[str]:
        return self.store.labels_of(self._known(entity_id))

    def markings_of(self, entity_id: str) -> list[str]:
        """Marking definitions of an entity, by name (`TLP:AMBER`)."""
        return [
            str(self.platform.views.marking_node(m)["definition"])
            for m in self.store.markings_of(self._known(entity_id))
        ]

    def external_references_of(self, entity_id: str) -> list[dict[str, Any]]:
        return self.store.external_references_of(self._known(entity_id))

    def notes_about(self, entity_id: str) -> list[dict[str, Any]]:
        """Notes whose `object_refs` name the entity (by any of its ids), as STIX."""
        return self.containers_of(entity_id, "Note")

    def containers_of(self, entity_id: str, entity_type: str = "Report") -> list[dict[str, Any]]:
        """Containers of one type (Report, Note...) whose `object_refs` name the entity (by any
        of its ids), as STIX: what contains an entity is not a relationship in OpenCTI."""
        ids = set(self._known(entity_id).all_ids())

        def contains(record: Record) -> bool:
            refs = record.stix.get("object_refs") or ()
            return record.entity_type == entity_type and bool(ids.intersection(refs))

        return [self.store.export_stix(r) for r in self.store.records(contains)]

    def relationships_of(
        self, entity_id: str, relationship_type: str | None = None, direction: str = "any"
    ) -> list[dict[str, Any]]:
        """Relationships touching the entity, optionally of one type and direction
        (`from`: the entity is the source, `to`: the target), as STIX."""
        ids = set(self._known(entity_id).all_ids())
        found = []
        for record in self.store.relationships(of=entity_id):
            stix = record.stix
            if relationship_type and stix.get("relationship_type") != relationship_type:
                continue
            if direction == "from" and stix.get("source_ref") not in ids:
                continue
            if direction == "to" and stix.get("target_ref") not in ids:
                continue
            found.append(self.store.export_stix(record))
        return found

    def related(
        self, entity_id: str, relationship_type: str, direction: str = "from"
    ) -> list[dict[str, Any]]:
        """The entities at the other end of the entity's `relationship_type` relationships
        (`from`: entity -> them, `to`: them -> entity), as STIX."""
        ends = []
        key = "target_ref" if direction == "from" else "source_ref"
        for rel in self.relationships_of(entity_id, relationship_type, direction):
            found = self.get(str(rel[key]))
            if found is not None:
                ends.append(found)
        return ends

    def indicators_based_on(self, entity_id: str) -> list[dict[str, Any]]:
        """Indicators with a `based-on` relationship to the entity (an observable), as STIX."""
        return [e for e in self.related(entity_id, "based-on", "to") if e["type"] == "indicator"]

    def entity_summary(self, entity_id: str) -> dict[str, Any]:
        """What OpenCTI holds about an entity, for a person (the demo) or another process
        (`GET /_emulator/entities/{id}`): its STIX form, score, labels, markings, external
        references, notes, relationships and the indicators based on it."""
        record = self._known(entity_id)
        return {
            "id": record.standard_id,
            "entity_type": record.entity_type,
            "observable_value": self.store.observable_value(record),
            "score": self.score_of(entity_id),
            "labels": self.labels_of(entity_id),
            "markings": self.markings_of(entity_id),
            "external_references": self.external_references_of(entity_id),
            "notes": self.notes_about(entity_id),
            "relationships": self.relationships_of(entity_id),
            "indicators": self.indicators_based_on(entity_id),
            "stix": self.store.export_stix(record),
        }

    def create_from_spec(self, spec: Mapping[str, Any]) -> str:
        """`create_observable` / `create_artifact` / `create_indicator` from a JSON object
        (`POST /_emulator/entities`): `entity_type` plus their keyword arguments; an
        Artifact's bytes as `data_base64`. ValueError on a bad spec."""
        args = dict(spec)
        entity_type = str(args.pop("entity_type", ""))
        if entity_type == "Artifact":
            data = base64.b64decode(str(args.pop("data_base64", "")), validate=True)
            return self.create_artifact(data, **args)
        if entity_type == "Indicator":
            return self.create_indicator(str(args.pop("pattern", "")), **args)
        return self.create_observable(entity_type, **args)

    def _known(self, entity_id: str) -> Record:
        record = self.store.get(entity_id)
        if record is None:
            raise KeyError(f"no entity {entity_id} in the OpenCTI emulator")
        return record

    # -- fault injection ----------------------------------------------------------------------
    def set_outage(self, mode: str | int | None = 503, seconds: float | None = None) -> None:
        """Simulate an outage: 500/503 answers, or "refuse" (connections refused/dropped).

        The workers pause too (bundles wait in RabbitMQ). `seconds` ends it by itself; None
        lasts until `clear_outage()` (or `set_outage(None)`). Control endpoints keep working
        in the 500/503 modes; in "refuse" mode only Python (or the timer) can end it.
        """
        if mode is None:
            self.clear_outage()
        else:
            self._call(self._apply_outage(Outage.parse(mode, seconds)))

    def clear_outage(self) -> None:
        self._call(self._apply_outage(None))

    @property
    def outage(self) -> Outage | None:
        return self._outage

    def _call(self, coroutine: Any) -> Any:
        if self._loop is None:
            raise RuntimeError("the OpenCTI emulator is not started")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=15)

    async def _apply_outage(self, outage: Outage | None) -> None:
        previous, self._outage = self._outage, outage
        if outage is None:
            self.platform.paused.clear()
        else:
            self.platform.paused.set()
        refusing = previous is not None and previous.mode == "refuse"
        if outage is not None and outage.mode == "refuse" and not refusing:
            if self._site is not None:
                await self._site.stop()
                self._site = None
        elif refusing and (outage is None or outage.mode != "refuse"):
            await self._listen()
        if outage is not None and outage.until is not None:
            assert self._loop is not None
            delay = max(0.0, outage.until - time.monotonic())
            self._loop.call_later(delay, self._expire, outage)

    def _expire(self, outage: Outage) -> None:
        if self._outage is outage and self._loop is not None:
            self._expiry = self._loop.create_task(self._apply_outage(None))

    # -- HTTP ---------------------------------------------------------------------------------
    async def _start_server(self) -> None:
        app = web.Application(
            client_max_size=MAX_REQUEST_BYTES, middlewares=[self._outage_middleware]
        )
        app.router.add_post("/graphql", self._graphql)
        app.router.add_get("/storage/get/{file_id:.+}", self._storage_get)
        app.router.add_get("/health", self._health)
        app.router.add_get("/stream", self._stream)
        app.router.add_get("/stream/{id}", self._stream)
        app.router.add_get("/_emulator/state", self._state)
        app.router.add_post("/_emulator/outage", self._outage_endpoint)
        app.router.add_post("/_emulator/entities", self._entities_endpoint)
        app.router.add_get("/_emulator/entities/{id}", self._entity_endpoint)
        app.router.add_post("/_emulator/enrich", self._enrich_endpoint)
        # The frontend paths vt_pipeline links to from the Dagster UI (see `pages`).
        app.router.add_get("/dashboard/id/{id}", self._entity_page)
        app.router.add_get("/dashboard/data/ingestion/connectors/{id}", self._connector_page)
        app.router.add_get(
            "/dashboard/data/ingestion/connectors/{id}/{rest:.*}", self._connector_page
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._site = web.SockSite(self._runner, sock)
        await self._site.start()

    async def _stop_server(self) -> None:
        self.live_stream.close()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = self._site = None

    @web.middleware
    async def _outage_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        outage = self._outage
        if outage is not None and not request.path.startswith("/_emulator/"):
            if outage.mode == "refuse":
                # Keep-alive connections opened before the outage are dropped, like a crash.
                if request.transport is not None:
                    request.transport.abort()
                raise web.HTTPServiceUnavailable()
            return web.json_response(
                {
                    "errors": [
                        {
                            "message": f"{EMULATOR}: simulated outage ({outage.status})",
                            "name": "SIMULATED_OUTAGE",
                        }
                    ]
                },
                status=outage.status,
            )
        return await handler(request)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.token

    async def _graphql(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response(_AUTH_ERROR)
        try:
            body = await self._read_operations(request)
        except (ValueError, KeyError) as error:
            return web.json_response(
                {"errors": [{"message": f"Bad GraphQL request: {error}", "name": "BAD_REQUEST"}]},
                status=400,
            )
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self._executor, self._run_graphql, body)
        return web.json_response(response)

    def _run_graphql(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            graphql_request = parse_request(
                str(body.get("query") or ""), body.get("variables"), body.get("operationName")
            )
        except GraphQLFault as fault:
            return {"errors": [fault.to_json()], "data": None}
        with self.platform.lock:
            for name in graphql_request.root_fields:
                self.platform.operations[name] += 1
            response = execute(graphql_request, self.platform.resolvers())
        for error in response.get("errors", []):
            log.info("OpenCTI emulator: %s", error["message"])
        return response

    @staticmethod
    async def _read_operations(request: web.Request) -> dict[str, Any]:
        """A JSON body, or a GraphQL multipart request (files put where `map` says)."""
        if not request.content_type.startswith("multipart/"):
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("batched GraphQL requests are not supported")
            return body
        form = await request.post()
        operations = json.loads(str(form["operations"]))
        mapping = json.loads(str(form.get("map", "{}")))
        for part_name, paths in mapping.items():
            part = form[part_name]
            if not isinstance(part, web.FileField):
                raise ValueError(f"multipart part {part_name} is not a file")
            upload = UploadedFile(
                part.filename, part.file.read(), part.content_type or "application/octet-stream"
            )
            for path in paths:
                _set_path(operations, path.split("."), upload)
        return operations

    async def _storage_get(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"message": "Unauthorized"}, status=401)
        stored = self.store.file(request.match_info["file_id"])
        if stored is None:
            return web.json_response({"message": "File not found"}, status=404)
        return web.Response(
            body=stored.data,
            content_type=stored.mime_type,
            headers={"Content-Disposition": f'attachment; filename="{stored.name}"'},
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        return await self.live_stream.handle(request, self.token)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "success"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _outage_endpoint(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if body.get("enabled"):
            mode = body.get("mode") or body.get("status") or 503
            try:
                outage = Outage.parse(503 if mode == "error" else mode, body.get("seconds"))
            except ValueError as error:
                return web.json_response({"message": str(error)}, status=400)
            await self._apply_outage(outage)
        else:
            await self._apply_outage(None)
        return web.json_response(self._outage.to_json() if self._outage else {"enabled": False})

    # -- test set-up over HTTP (the demo, benchmarks and `ui` run the emulator elsewhere) ------
    async def _in_executor(self, call: Callable[[], Any]) -> web.Response:
        """Run a blocking set-up call off the event loop; errors as 400/404 JSON."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._executor, call)
        except KeyError as error:
            return web.json_response({"message": str(error)}, status=404)
        except (ValueError, TypeError, GraphQLFault, binascii.Error) as error:
            return web.json_response({"message": str(error)}, status=400)
        return web.json_response(result)

    async def _entity_page(self, request: web.Request) -> web.Response:
        """`GET /dashboard/id/{id}`: the entity's page, by any of its ids (as OpenCTI resolves)."""
        entity_id = request.match_info["id"]
        loop = asyncio.get_running_loop()
        try:
            summary = await loop.run_in_executor(
                self._executor, lambda: self.entity_summary(entity_id)
            )
        except KeyError:
            return _html(pages.not_found(f"No entity {entity_id} in this OpenCTI."), 404)
        return _html(pages.entity_page(summary))

    async def _connector_page(self, request: web.Request) -> web.Response:
        """`GET /dashboard/data/ingestion/connectors/{id}`: the connector and its works."""
        connector_id = request.match_info["id"]
        with self.platform.lock:
            connector = self.platform.connectors.get(connector_id)
            works = [
                {**w.summary(), "timestamp": w.timestamp}
                for w in self.platform.works.values()
                if w.connector_id == connector_id
            ]
        if connector is None:
            return _html(pages.not_found(f"No connector {connector_id} in this OpenCTI."), 404)
        return _html(pages.connector_page(connector, works))

    async def _entities_endpoint(self, request: web.Request) -> web.Response:
        """`POST /_emulator/entities` {"entity_type", "value" | "hashes" | "pattern" ...}."""
        try:
            spec = await request.json()
        except ValueError:
            return web.json_response({"message": "expected a JSON object"}, status=400)
        if not isinstance(spec, dict):
            return web.json_response({"message": "expected a JSON object"}, status=400)
        return await self._in_executor(lambda: {"id": self.create_from_spec(spec)})

    async def _entity_endpoint(self, request: web.Request) -> web.Response:
        entity_id = request.match_info["id"]
        return await self._in_executor(lambda: self.entity_summary(entity_id))

    async def _enrich_endpoint(self, request: web.Request) -> web.Response:
        """`POST /_emulator/enrich` {"entity_id", "connector_id", "playbook": false}: an
        enrichment request (work id back) or a playbook one (execution id back)."""
        try:
            body = await request.json()
            entity_id, connector_id = str(body["entity_id"]), str(body["connector_id"])
        except (ValueError, KeyError, TypeError):
            message = "expected {entity_id, connector_id, playbook?}"
            return web.json_response({"message": message}, status=400)

        def ask() -> dict[str, str]:
            if body.get("playbook"):
                return {"execution_id": self.ask_playbook_enrichment(entity_id, connector_id)}
            return {"work_id": self.ask_enrichment(entity_id, connector_id)}

        return await self._in_executor(ask)


def _set_path(target: Any, path: list[str], value: Any) -> None:
    """Put an upload at a `variables.file` / `variables.files.0` path of the operations."""
    *parents, last = path
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target.setdefault(key, {})
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


# -- CLI: vt-pipeline emulate opencti ---------------------------------------------------------
def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 = any free port")
    parser.add_argument("--token", default=DEFAULT_TOKEN, help="the API token clients must send")
    broker = parser.add_mutually_exclusive_group()
    broker.add_argument(
        "--amqp-url",
        help="RabbitMQ handed to connectors, e.g. amqp://guest:guest@127.0.0.1:5672/%%2F",
    )
    broker.add_argument(
        "--start-rabbitmq",
        action="store_true",
        help="start a private rabbitmq-server for the emulator's lifetime",
    )


def run(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Serve until interrupted (Ctrl-C, SIGTERM), or until `stop` is set (tests).

    SIGTERM unwinds like Ctrl-C, so the private broker stops and its files go; if this process is
    killed outright, the broker's watchdog stops it (see `emulators.processes`).
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with (
        contextlib.suppress(KeyboardInterrupt),
        interrupt_on_sigterm(),
        contextlib.ExitStack() as stack,
    ):
        amqp: AMQPConnectionInfo | str | None = args.amqp_url
        if args.start_rabbitmq:
            mq = stack.enter_context(RabbitMQ())
            print(
                f"RabbitMQ listening on {mq.amqp_url} (started in {mq.startup_seconds:.1f} s)",
                flush=True,
            )
            amqp = mq.connection_info
        emulator = stack.enter_context(
            OpenCTIEmulator(token=args.token, amqp=amqp, host=args.host, port=args.port)
        )
        print(f"OpenCTI emulator listening on {emulator.url}", flush=True)
        print(f"token: {emulator.token}", flush=True)
        (stop or threading.Event()).wait()
    return 0
