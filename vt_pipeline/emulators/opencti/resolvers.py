"""The GraphQL root fields the OpenCTI emulator answers, by name (what pycti 7 sends).

Queries: about, me, settings, connector(s), connectorsForWorker, work, works, isWorkAlive,
stix, and reads/listings of observables, core/domain objects, relationships, indicators,
incidents, notes, reports, identities, markings... Mutations: registerConnector,
pingConnector, deleteConnector, resetStateConnector, workAdd, workEdit{toReceived,
toProcessed, reportExpectation, addExpectations, addDraftContext, ping, delete},
stixBundlePush, artifactImport, stixCoreObjectEdit{askEnrichment, askEnrichments},
playbookStepExecution (recorded, see `Platform.playbook_steps`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from pycti import __version__ as pycti_version

from vt_pipeline.emulators.opencti.graphql import GraphQLFault, Resolver
from vt_pipeline.emulators.opencti.store import Node, Record, Store, connection, now_iso

if TYPE_CHECKING:
    from vt_pipeline.emulators.opencti.platform import Platform, Work

# Single read / listing field names and the OpenCTI type they return.
_TYPED_FIELDS = (
    ("indicator", "indicators", "Indicator"),
    ("incident", "incidents", "Incident"),
    ("note", "notes", "Note"),
    ("report", "reports", "Report"),
    ("malware", "malwares", "Malware"),
    ("location", "locations", "Location"),
    ("vulnerability", "vulnerabilities", "Vulnerability"),
    ("observedData", "observedDatas", "Observed-Data"),
    ("opinion", "opinions", "Opinion"),
    ("grouping", "groupings", "Grouping"),
    ("identity", "identities", "Identity"),
    ("markingDefinition", "markingDefinitions", "Marking-Definition"),
    ("stixCyberObservable", "stixCyberObservables", "Stix-Cyber-Observable"),
    ("stixCoreObject", "stixCoreObjects", "Stix-Core-Object"),
    ("stixDomainObject", "stixDomainObjects", "Stix-Domain-Object"),
    ("stixCoreRelationship", "stixCoreRelationships", "stix-core-relationship"),
    ("stixSightingRelationship", "stixSightingRelationships", "stix-sighting-relationship"),
    ("stixObjectOrStixRelationship", "stixObjectOrStixRelationships", None),
)


def build_resolvers(platform: Platform) -> dict[str, Resolver]:
    """Root field name -> resolver, for `graphql.execute`."""
    r = _Resolvers(platform)
    resolvers: dict[str, Resolver] = {
        # platform
        "about": lambda **_: {"version": pycti_version, "dependencies": []},
        "me": lambda **_: {**platform.user, "__typename": "MeUser"},
        "settings": r.settings,
        # connectors
        "registerConnector": lambda input, **_: platform.connector_node(
            platform.register_connector(input)
        ),
        "pingConnector": r.ping_connector,
        "deleteConnector": r.delete_connector,
        "resetStateConnector": r.reset_state,
        "connector": r.connector,
        "connectors": r.connectors,
        "connectorsForWorker": r.connectors,
        # works
        "workAdd": r.work_add,
        "workEdit": lambda id, **_: platform.work_edit(id),
        "work": r.work,
        "works": r.works,
        "isWorkAlive": lambda id, **_: id in platform.works,
        # knowledge in
        "stixBundlePush": r.bundle_push,
        "artifactImport": r.artifact_import,
        "stixCoreObjectEdit": r.core_object_edit,
        "playbookStepExecution": lambda **arguments: platform.record_playbook_step(**arguments),
        # knowledge out
        "stix": lambda id, **_: json.dumps(platform.store.export_stix(platform.record(id))),
        "stixNestedRefRelationships": lambda **_: connection([]),
        "labels": r.labels,
    }
    for single, plural, entity_type in _TYPED_FIELDS:
        resolvers[single] = r.read(entity_type)
        resolvers[plural] = r.listing(entity_type)
    return resolvers


def _of_type(entity_type: str | None) -> Callable[[Record], bool]:
    if entity_type is None:
        return lambda record: True
    return lambda record: record.entity_type == entity_type or entity_type in record.parent_types


class _Resolvers:
    """Resolvers that need more than a line."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.store = platform.store
        self.views = platform.views

    def read(self, entity_type: str | None) -> Resolver:
        is_type = _of_type(entity_type)

        def resolve(id: str | None = None, **_: Any) -> Node | None:
            record = self.store.get(id)
            return self.views.node(record) if record is not None and is_type(record) else None

        return resolve

    def listing(self, entity_type: str | None) -> Resolver:
        is_type = _of_type(entity_type)
        store = self.store

        def resolve(
            filters: Mapping[str, Any] | None = None,
            search: str | None = None,
            types: list[str] | None = None,
            first: int | None = None,
            after: str | None = None,
            fromId: Any = None,
            toId: Any = None,
            relationship_type: Any = None,
            **_: Any,
        ) -> Node:
            wanted = {t.lower() for t in types or ()}
            rel_types = _as_list(relationship_type)
            from_ids, to_ids = set(_as_list(fromId)), set(_as_list(toId))

            def keep(record: Record) -> bool:
                if not is_type(record) or not store.matches(record, filters):
                    return False
                kinds = {record.entity_type.lower(), *(p.lower() for p in record.parent_types)}
                if wanted and not wanted & kinds:
                    return False
                if rel_types and record.stix.get("relationship_type") not in rel_types:
                    return False
                if from_ids and not from_ids & set(store.field_values(record, "fromId")):
                    return False
                if to_ids and not to_ids & set(store.field_values(record, "toId")):
                    return False
                return not search or _search_hit(store, record, search)

            return connection(self.views.nodes(store.records(keep)), first, after)

        return resolve

    def settings(self, **_: Any) -> Node:
        return {
            "id": "emulator-settings",
            "platform_title": "vt_pipeline OpenCTI emulator",
            "platform_url": None,
            "platform_enterprise_edition": {"license_enterprise": False},
            "platform_modules": [],
            "platform_theme": "dark",
        }

    def connector(self, id: str, **_: Any) -> Node | None:
        connector = self.platform.connectors.get(str(id))
        return self.platform.connector_node(connector) if connector else None

    def labels(
        self,
        filters: Mapping[str, Any] | None = None,
        first: int | None = None,
        after: str | None = None,
        **_: Any,
    ) -> Node:
        """The labels the store's objects carry (OpenCTI lists its Label entities), filtered
        on `value` (pycti's `label.read(filters=...)`); other filter keys are refused."""
        values = {v.lower(): v for record in self.store for v in self.store.labels_of(record)}
        wanted: set[str] | None = None
        for spec in (filters or {}).get("filters") or ():
            if spec.get("key") not in ("value", ["value"]):
                raise GraphQLFault(
                    f"vt_pipeline OpenCTI emulator: unsupported label filter {spec.get('key')}",
                    "UNSUPPORTED",
                )
            wanted = {str(v).lower() for v in spec.get("values") or ()}
        nodes = [
            self.views.label_node(value)
            for key, value in sorted(values.items())
            if wanted is None or key in wanted
        ]
        return connection(nodes, first, after)

    def connectors(self, **_: Any) -> list[Node]:
        return [self.platform.connector_node(c) for c in self.platform.connectors.values()]

    def ping_connector(
        self,
        id: str,
        state: str | None = None,
        connectorInfo: Mapping[str, Any] | None = None,
        **_: Any,
    ) -> Node:
        connector = self.platform.connector(id)
        # pycti sends json.dumps(state): "null" when it has none.
        connector["state"] = None if state in (None, "", "null") else state
        connector["info"] = dict(connectorInfo or {})
        connector["updated_at"] = now_iso()
        return {
            "id": connector["id"],
            "connector_state": connector["state"],
            "connector_info": connector["info"],
        }

    def delete_connector(self, id: str, **_: Any) -> str:
        self.platform.connectors.pop(str(id), None)
        return str(id)

    def reset_state(self, id: str, **_: Any) -> Node:
        connector = self.platform.connector(id)
        connector["state"] = None
        return self.platform.connector_node(connector)

    def work_add(
        self,
        connectorId: str,
        friendlyName: str | None = None,
        isMultiPartWork: bool | None = False,
        **_: Any,
    ) -> Node:
        work = self.platform.create_work(connectorId, friendlyName or "", bool(isMultiPartWork))
        return self.platform.work_node(work)

    def work(self, id: str, **_: Any) -> Node | None:
        work = self.platform.works.get(id)
        return self.platform.work_node(work) if work else None

    def works(
        self,
        filters: Mapping[str, Any] | None = None,
        first: int | None = None,
        after: str | None = None,
        **_: Any,
    ) -> Node:
        def values(work: Work, key: str) -> set[str]:
            fields = {
                "connector_id": work.connector_id,
                "id": work.id,
                "status": work.status,
                "event_source_id": work.event_source_id or "",
            }
            return {fields[key]} if key in fields else set()

        def keep(work: Work, group: Mapping[str, Any] | None) -> bool:
            if not group:
                return True
            results = [
                bool(values(work, str(f.get("key"))) & {str(v) for v in f.get("values") or ()})
                for f in group.get("filters") or ()
            ]
            results += [keep(work, g) for g in group.get("filterGroups") or ()]
            if not results:
                return True
            return all(results) if group.get("mode", "and") == "and" else any(results)

        works = sorted(
            (w for w in self.platform.works.values() if keep(w, filters)),
            key=lambda w: w.timestamp,
            reverse=True,
        )
        return connection([self.platform.work_node(w) for w in works], first, after)

    def bundle_push(
        self, connectorId: str, bundle: str, work_id: str | None = None, **_: Any
    ) -> bool:
        """API queue protocol: ingested at once, counted on the work like the workers do."""
        self.platform.connector(connectorId)
        self.platform.ingest(bundle, work_id=work_id, connector_id=connectorId, expectations=True)
        return True

    def artifact_import(
        self,
        file: Any = None,
        x_opencti_description: Any = None,
        createdBy: str | None = None,
        objectMarking: list[str] | None = None,
        objectLabel: list[str] | None = None,
        **_: Any,
    ) -> Node | None:
        from vt_pipeline.emulators.opencti.platform import UploadedFile

        if not isinstance(file, UploadedFile):
            raise GraphQLFault(
                "artifactImport needs a multipart upload in `file`", "VALIDATION_ERROR"
            )
        # pycti sends x_opencti_description=False when none is given.
        description = x_opencti_description if isinstance(x_opencti_description, str) else None
        record = self.platform.import_artifact(
            file.name,
            file.data,
            file.mime_type,
            description=description,
            created_by=createdBy,
            markings=objectMarking,
            labels=objectLabel,
        )
        return self.views.node(record)

    def core_object_edit(self, id: str, **_: Any) -> Node:
        record = self.platform.record(id)
        platform = self.platform

        def ask(connectorId: str, **_: Any) -> Node:
            return platform.work_node(platform.ask_enrichment(record.internal_id, connectorId))

        def ask_many(connectorIds: list[str], **_: Any) -> list[Node]:
            return [ask(c) for c in connectorIds]

        return {"__strict__": True, "askEnrichment": ask, "askEnrichments": ask_many}


def _as_list(value: Any) -> list[str]:
    if value in (None, "", []):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _search_hit(store: Store, record: Record, search: str) -> bool:
    needle = search.lower()
    fields = [store.observable_value(record)]
    fields += [record.stix.get(k) for k in ("name", "value", "pattern", "description")]
    return any(needle in str(f).lower() for f in fields if f)
