"""Stored records seen through OpenCTI's GraphQL schema (the fields pycti's readers select).

Each node is a dict for `graphql.project`: plain values for properties, callables for
fields that take arguments or cost something to resolve (authors, markings, files, related
objects), computed only when a query selects them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from vt_pipeline.emulators.opencti.store import (
    EXTENSION_FIELDS,
    OPENCTI_EXTENSION,
    RENAMED_FIELDS,
    TLP_MARKINGS,
    Node,
    Record,
    Store,
    connection,
    graphql_type_name,
    label_id,
)

# Ids of things OpenCTI keeps as separate entities and we derive (phases, references).
_ID_NAMESPACE = uuid.UUID("3c0d2b1e-67a4-4f0e-9a59-0c1b6f8e2d47")
# Refs that become GraphQL relations, not plain fields.
_REF_KEYS = {
    "created_by_ref",
    "x_opencti_created_by_ref",
    "object_marking_refs",
    "labels",
    "x_opencti_labels",
    "external_references",
    "x_opencti_external_references",
    "kill_chain_phases",
    "object_refs",
    "hashes",
    "extensions",
    "granted_refs",
    "x_opencti_granted_refs",
    "source_ref",
    "target_ref",
}
_EXTRA_INTERFACES = {
    "StixFile": "HashedObservable",
    "Artifact": "HashedObservable",
    "X509-Certificate": "HashedObservable",
}


class Views:
    """Builds GraphQL nodes for records of a store, on behalf of one platform user."""

    def __init__(self, store: Store, user: Mapping[str, Any]) -> None:
        self.store = store
        self.user = user

    def node(self, record: Record | None) -> Node | None:
        if record is None:
            return None
        if record.entity_type == "Marking-Definition":
            return self.marking_node(record.standard_id)
        if record.is_relationship:
            return self._relationship_node(record)
        return self._entity_node(record)

    def nodes(self, records: Iterable[Record]) -> list[Node]:
        return [n for n in (self.node(r) for r in records) if n is not None]

    # -- pieces -------------------------------------------------------------------------------
    def _base(self, record: Record) -> Node:
        store = self.store
        types = {graphql_type_name(record.entity_type)}
        types |= {graphql_type_name(p) for p in record.parent_types}
        if record.entity_type in _EXTRA_INTERFACES:
            types.add(_EXTRA_INTERFACES[record.entity_type])
        node: Node = {
            "__typename": graphql_type_name(record.entity_type),
            "__types": types,
            "id": record.internal_id,
            "standard_id": record.standard_id,
            "entity_type": record.entity_type,
            "parent_types": list(record.parent_types),
            "spec_version": record.stix.get("spec_version", "2.1"),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "x_opencti_stix_ids": list(record.stix_ids),
            "is_inferred": False,
            "creators": [{"id": self.user["id"], "name": self.user["name"]}],
            "objectOrganization": [],
            "createdBy": lambda **_: self.node(store.get(store.created_by_ref(record))),
            "objectMarking": lambda **_: [self.marking_node(m) for m in store.markings_of(record)],
            "objectLabel": lambda **_: [self.label_node(v) for v in store.labels_of(record)],
            "externalReferences": lambda **kw: connection(
                [self.external_reference_node(r) for r in store.external_references_of(record)],
                kw.get("first"),
                kw.get("after"),
            ),
            "killChainPhases": lambda **_: self._kill_chain_phases(record),
            "importFiles": lambda **kw: connection(
                [f.node() for f in record.files], kw.get("first"), kw.get("after")
            ),
            "exportFiles": lambda **_: connection([]),
            "pendingFiles": lambda **_: connection([]),
            "stixCoreRelationships": lambda **kw: connection(
                self.nodes(store.relationships(of=record.internal_id)),
                kw.get("first"),
                kw.get("after"),
            ),
            "reports": lambda **kw: connection(self._containers(record, "Report")),
            "notes": lambda **kw: connection(self._containers(record, "Note")),
            "opinions": lambda **kw: connection(self._containers(record, "Opinion")),
            "observedData": lambda **kw: connection(self._containers(record, "Observed-Data")),
            "status": None,
            "workflowEnabled": False,
        }
        extension = (record.stix.get("extensions") or {}).get(OPENCTI_EXTENSION) or {}
        for key, value in extension.items():
            field_name = EXTENSION_FIELDS.get(key, "")
            if field_name.startswith("x_opencti_"):  # the others are relations (refs, labels)
                node[field_name] = value
        for key, value in record.stix.items():
            if key in _REF_KEYS or key in ("id", "type"):
                continue
            node[RENAMED_FIELDS.get(key, key)] = value
        return node

    def _entity_node(self, record: Record) -> Node:
        store = self.store
        node = self._base(record)
        if record.is_observable:
            node["observable_value"] = store.observable_value(record)
            node["indicators"] = lambda **kw: connection(self._indicators_of(record))
            if record.entity_type == "StixFile" and "x_opencti_additional_names" not in node:
                node["x_opencti_additional_names"] = []
        if "hashes" in record.stix or record.entity_type in (
            "StixFile",
            "Artifact",
            "X509-Certificate",
        ):
            node["hashes"] = [{"algorithm": a, "hash": h} for a, h in record.hashes().items()]
        if record.entity_type == "Indicator":
            node["observables"] = lambda **kw: connection(self._based_on(record))
            node["x_opencti_observable_values"] = _observable_values(
                record.stix.get("x_opencti_observable_values")
            )
        if "Container" in record.parent_types:
            refs = [store.get(ref) for ref in record.stix.get("object_refs") or ()]
            node["objects"] = lambda **kw: connection(self.nodes(r for r in refs if r))
        return node

    def _relationship_node(self, record: Record) -> Node:
        store = self.store
        node = self._base(record)
        source = record.stix.get("source_ref") or record.stix.get("sighting_of_ref")
        targets = [record.stix.get("target_ref"), *(record.stix.get("where_sighted_refs") or ())]
        target = next((t for t in targets if t), None)
        node.update(
            {
                "relationship_type": record.stix.get(
                    "relationship_type", "stix-sighting-relationship"
                ),
                "fromId": source,
                "toId": target,
                "fromType": getattr(store.get(source), "entity_type", None),
                "toType": getattr(store.get(target), "entity_type", None),
                "from": lambda **_: self.node(store.get(source)),
                "to": lambda **_: self.node(store.get(target)),
            }
        )
        return node

    @staticmethod
    def _kill_chain_phases(record: Record) -> list[Node]:
        phases = []
        for phase in record.stix.get("kill_chain_phases") or ():
            name = f"{phase.get('kill_chain_name')}:{phase.get('phase_name')}"
            phases.append(
                {
                    "id": str(uuid.uuid5(_ID_NAMESPACE, name)),
                    "standard_id": None,
                    "entity_type": "Kill-Chain-Phase",
                    "kill_chain_name": phase.get("kill_chain_name"),
                    "phase_name": phase.get("phase_name"),
                    "x_opencti_order": phase.get("x_opencti_order", 0),
                }
            )
        return phases

    def _indicators_of(self, record: Record) -> list[Node]:
        found = []
        for rel in self.store.relationships(of=record.internal_id):
            if rel.stix.get("relationship_type") != "based-on":
                continue
            source = self.store.get(rel.stix.get("source_ref"))
            if source is not None and source.entity_type == "Indicator":
                found.append(self.node(source))
        return found

    def _based_on(self, record: Record) -> list[Node]:
        found = []
        for rel in self.store.relationships(of=record.internal_id):
            target = self.store.get(rel.stix.get("target_ref"))
            if rel.stix.get("relationship_type") == "based-on" and target is not record:
                found.append(self.node(target))
        return [n for n in found if n]

    def _containers(self, record: Record, entity_type: str) -> list[Node]:
        ids = set(record.all_ids())
        return self.nodes(
            self.store.records(
                lambda r: (
                    r.entity_type == entity_type
                    and any(ref in ids for ref in r.stix.get("object_refs") or ())
                )
            )
        )

    def marking_node(self, marking_id: str) -> Node:
        record = self.store.get(marking_id)
        stix = record.stix if record else {}
        tlp = next((name for name, (mid, _, _) in TLP_MARKINGS.items() if mid == marking_id), None)
        definition = stix.get("x_opencti_definition") or stix.get("name") or tlp or marking_id
        definition_type = stix.get("x_opencti_definition_type") or (
            "TLP" if tlp else str(stix.get("definition_type") or "statement")
        )
        return {
            "__typename": "MarkingDefinition",
            "__types": {"MarkingDefinition", "BasicObject", "StixObject", "StixMetaObject"},
            "id": record.internal_id if record else marking_id,
            "standard_id": marking_id,
            "entity_type": "Marking-Definition",
            "parent_types": ["Basic-Object", "Stix-Object", "Stix-Meta-Object"],
            "spec_version": "2.1",
            "definition_type": definition_type,
            "definition": definition,
            "x_opencti_order": stix.get("x_opencti_order", 0),
            "x_opencti_color": stix.get("x_opencti_color"),
            "created": stix.get("created", "2017-01-20T00:00:00.000Z"),
            "modified": stix.get("modified", stix.get("created", "2017-01-20T00:00:00.000Z")),
            "created_at": record.created_at if record else None,
            "updated_at": record.updated_at if record else None,
        }

    @staticmethod
    def label_node(value: str) -> Node:
        internal_id = label_id(value)
        return {
            "__typename": "Label",
            "id": internal_id,
            "standard_id": f"label--{internal_id}",
            "entity_type": "Label",
            "value": value,
            "color": "#607d8b",
        }

    @staticmethod
    def external_reference_node(ref: Mapping[str, Any]) -> Node:
        key = "|".join(str(ref.get(k) or "") for k in ("source_name", "url", "external_id"))
        ref_id = str(uuid.uuid5(_ID_NAMESPACE, key))
        return {
            "__typename": "ExternalReference",
            "id": ref_id,
            "standard_id": f"external-reference--{ref_id}",
            "entity_type": "External-Reference",
            "source_name": ref.get("source_name"),
            "description": ref.get("description"),
            "url": ref.get("url"),
            "hash": ref.get("hash"),
            "external_id": ref.get("external_id"),
            "created": None,
            "modified": None,
            "importFiles": connection([]),
        }


def _observable_values(values: Any) -> list[Node] | None:
    """An Indicator's observable values in GraphQL's shape: `hashes` as a list of
    `{algorithm, hash}` (STIX keeps a dict), `value` defaulting to the best hash."""
    if values is None:
        return None
    nodes = []
    for value in values:
        hashes = value.get("hashes") or {}
        if isinstance(hashes, Mapping):
            hashes = [{"algorithm": a, "hash": h} for a, h in hashes.items()]
        best = next((h["hash"] for h in hashes if h.get("algorithm") == "SHA-256"), None)
        nodes.append(
            {
                "type": value.get("type"),
                "value": value.get("value") or best or (hashes[0]["hash"] if hashes else None),
                "hashes": hashes or None,
            }
        )
    return nodes
