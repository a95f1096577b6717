"""The OpenCTI emulator's knowledge store: STIX objects in, OpenCTI-shaped GraphQL objects out.

What it keeps of OpenCTI's behaviour, because the pipeline relies on it:
- upsert: an object sent twice is one object; scalar properties take the newest value, lists
  (labels, markings, external references, observable values...) are unioned by what identifies
  their items (`merge_stix`), dicts merged;
- observables are deduplicated the way OpenCTI does it, by content and not only by id: Files,
  Artifacts and certificates by any shared hash, value observables (URL, domain, IP...) by
  value. A merged-in id stays readable (`x_opencti_stix_ids`);
- every object gets an internal id (uuid) besides its standard id, and reads accept either;
- Artifacts hold uploaded files (`importFiles`) served by `/storage/get/{file_id}`.
Not kept: confidence levels, access rights, inferences, history, drafts.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pycti import Indicator

from vt_pipeline.emulators.opencti import matrix
from vt_pipeline.emulators.opencti.graphql import GraphQLFault

Node = dict[str, Any]
OPENCTI_EXTENSION = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba"
OPENCTI_SCO_EXTENSION = "extension-definition--f93e2c80-4231-4f9a-af8b-95c9bd566a82"
_LABEL_NAMESPACE = uuid.UUID("8f4bd5a4-6d8e-4bd7-9d35-5f5b64bc4c30")

_SCO_ENTITY_TYPES = {
    "artifact": "Artifact",
    "autonomous-system": "Autonomous-System",
    "bank-account": "Bank-Account",
    "credential": "Credential",
    "cryptocurrency-wallet": "Cryptocurrency-Wallet",
    "cryptographic-key": "Cryptographic-Key",
    "directory": "Directory",
    "domain-name": "Domain-Name",
    "email-addr": "Email-Addr",
    "email-message": "Email-Message",
    "email-mime-part-type": "Email-Mime-Part-Type",
    "file": "StixFile",
    "hostname": "Hostname",
    "ipv4-addr": "IPv4-Addr",
    "ipv6-addr": "IPv6-Addr",
    "mac-addr": "Mac-Addr",
    "media-content": "Media-Content",
    "mutex": "Mutex",
    "network-traffic": "Network-Traffic",
    "payment-card": "Payment-Card",
    "persona": "Persona",
    "phone-number": "Phone-Number",
    "process": "Process",
    "software": "Software",
    "ssh-key": "SSH-Key",
    "text": "Text",
    "tracking-number": "Tracking-Number",
    "url": "Url",
    "user-account": "User-Account",
    "user-agent": "User-Agent",
    "windows-registry-key": "Windows-Registry-Key",
    "windows-registry-value-type": "Windows-Registry-Value-Type",
    "x509-certificate": "X509-Certificate",
}
_HASHED_TYPES = {"StixFile", "Artifact", "X509-Certificate"}
_CONTAINER_TYPES = {
    "Report",
    "Note",
    "Opinion",
    "Observed-Data",
    "Grouping",
    "Case-Incident",
    "Case-Rfi",
    "Case-Rft",
    "Feedback",
    "Task",
}
_IDENTITY_CLASSES = {
    "organization": "Organization",
    "individual": "Individual",
    "class": "Sector",
    "system": "System",
}
# OpenCTI's extension keys and the GraphQL fields they land in.
EXTENSION_FIELDS = {
    "score": "x_opencti_score",
    "description": "x_opencti_description",
    "additional_names": "x_opencti_additional_names",
    "main_observable_type": "x_opencti_main_observable_type",
    "detection": "x_opencti_detection",
    "labels": "labels",
    "created_by_ref": "created_by_ref",
    "external_references": "external_references",
}
# STIX property -> OpenCTI GraphQL field where they differ (reserved words in OpenCTI).
RENAMED_FIELDS = {
    "key": "attribute_key",
    "date": "attribute_date",
    "abstract": "attribute_abstract",
    "count": "attribute_count",
}
# The marking definitions OpenCTI creates at install.
TLP_MARKINGS = {
    "TLP:CLEAR": ("marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9", 1, "#ffffff"),
    "TLP:GREEN": ("marking-definition--34098fce-860f-48ae-8e50-ebd3cc5e41da", 2, "#2e7d32"),
    "TLP:AMBER": ("marking-definition--f88d31f6-486f-44da-b317-01333bde0b82", 3, "#d84315"),
    "TLP:AMBER+STRICT": ("marking-definition--826578e1-40ad-459f-bc73-ede076f81f37", 3, "#d84315"),
    "TLP:RED": ("marking-definition--5e57c739-391a-4eb3-b6be-7d15ca92d5ed", 4, "#c62828"),
}


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def label_id(value: str) -> str:
    """The (internal) id of a label: one per value, case-insensitive, stable."""
    return str(uuid.uuid5(_LABEL_NAMESPACE, value.lower()))


def graphql_type_name(entity_type: str) -> str:
    """OpenCTI entity type -> GraphQL type name: `IPv4-Addr` -> `IPv4Addr`."""
    return "".join(part[:1].upper() + part[1:] for part in entity_type.split("-"))


def normalize_hash_algorithm(name: str) -> str:
    upper = name.strip().upper().replace("_", "-")
    return {"SHA1": "SHA-1", "SHA256": "SHA-256", "SHA512": "SHA-512", "SHA3256": "SHA3-256"}.get(
        upper.replace("-", ""), upper
    )


def file_hashes(data: bytes) -> dict[str, str]:
    return {
        "MD5": hashlib.md5(data).hexdigest(),
        "SHA-1": hashlib.sha1(data).hexdigest(),
        "SHA-256": hashlib.sha256(data).hexdigest(),
        "SHA-512": hashlib.sha512(data).hexdigest(),
    }


def connection(nodes: Iterable[Any], first: int | None = None, after: str | None = None) -> Node:
    """A Relay connection (`edges { node }`, `pageInfo`) over nodes, offset cursors."""
    items = list(nodes)
    start = int(after) + 1 if after not in (None, "") else 0
    end = len(items) if not first or first < 0 else min(len(items), start + first)
    edges = [{"node": items[i], "cursor": str(i)} for i in range(start, end)]
    return {
        "edges": edges,
        "pageInfo": {
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasNextPage": end < len(items),
            "hasPreviousPage": start > 0,
            "globalCount": len(items),
        },
    }


@dataclass
class StoredFile:
    """A file attached to an entity (OpenCTI's `importFiles`), bytes kept in memory."""

    id: str
    name: str
    data: bytes
    mime_type: str
    entity_id: str
    uploaded_at: str = field(default_factory=now_iso)

    def node(self) -> Node:
        return {
            "__typename": "File",
            "id": self.id,
            "name": self.name,
            "size": len(self.data),
            "lastModified": self.uploaded_at,
            "uploadStatus": "complete",
            "metaData": {
                "mimetype": self.mime_type,
                "version": self.uploaded_at,
                "entity_id": self.entity_id,
                "file_markings": [],
            },
            "objectMarking": [],
        }


@dataclass
class Record:
    """One stored STIX object: its merged STIX form plus OpenCTI's bookkeeping."""

    internal_id: str
    standard_id: str
    entity_type: str
    parent_types: list[str]
    stix: dict[str, Any]
    created_at: str
    updated_at: str
    stix_ids: list[str] = field(default_factory=list)
    files: list[StoredFile] = field(default_factory=list)

    @property
    def stix_type(self) -> str:
        return self.stix["type"]

    @property
    def is_relationship(self) -> bool:
        return "basic-relationship" in self.parent_types

    @property
    def is_observable(self) -> bool:
        return "Stix-Cyber-Observable" in self.parent_types

    @property
    def is_domain_object(self) -> bool:
        return "Stix-Domain-Object" in self.parent_types

    def all_ids(self) -> list[str]:
        return [self.internal_id, self.standard_id, *self.stix_ids]

    def hashes(self) -> dict[str, str]:
        raw = self.stix.get("hashes") or {}
        return {normalize_hash_algorithm(k): str(v) for k, v in raw.items()}

    def prop(self, name: str) -> Any:
        """A property from the STIX object or, failing that, OpenCTI's extension."""
        if name in self.stix:
            return self.stix[name]
        extensions = self.stix.get("extensions") or {}
        # pycti writes observables' attributes in the SCO extension, others in the main one,
        # and reads both (`get_attribute_in_extension`).
        for extension in (extensions.get(OPENCTI_EXTENSION), extensions.get(OPENCTI_SCO_EXTENSION)):
            extension = extension or {}
            for ext_key, field_name in EXTENSION_FIELDS.items():
                if field_name == name and ext_key in extension:
                    return extension[ext_key]
            if name in extension:
                return extension[name]
        return None


@dataclass
class IngestResult:
    created: list[Record] = field(default_factory=list)
    updated: list[Record] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.created) + len(self.updated)


def classify(obj: Mapping[str, Any]) -> tuple[str, list[str]]:
    """OpenCTI's entity_type and parent_types of a STIX object."""
    stix_type = str(obj["type"])
    custom = obj.get("x_opencti_type") or (
        (obj.get("extensions") or {}).get(OPENCTI_EXTENSION) or {}
    ).get("type")
    base = ["Basic-Object", "Stix-Object"]
    if stix_type in ("relationship", "sighting"):
        rel_type = (
            "stix-sighting-relationship" if stix_type == "sighting" else "stix-core-relationship"
        )
        entity_type = rel_type if stix_type == "sighting" else str(obj.get("relationship_type"))
        return entity_type, ["basic-relationship", "stix-relationship", rel_type]
    if stix_type == "marking-definition":
        return "Marking-Definition", [*base, "Stix-Meta-Object"]
    sco_type = stix_type.removeprefix("x-opencti-")
    if sco_type in _SCO_ENTITY_TYPES:
        return _SCO_ENTITY_TYPES[sco_type], [*base, "Stix-Core-Object", "Stix-Cyber-Observable"]
    parents = [*base, "Stix-Core-Object", "Stix-Domain-Object"]
    if stix_type == "identity":
        entity_type = custom or _IDENTITY_CLASSES.get(
            str(obj.get("identity_class")), "Organization"
        )
        return entity_type, [*parents, "Identity"]
    if stix_type == "location":
        entity_type = (
            custom
            or obj.get("x_opencti_location_type")
            or next(
                (t.capitalize() for t in ("city", "country", "region") if obj.get(t)), "Position"
            )
        )
        return entity_type, [*parents, "Location"]
    if stix_type == "threat-actor":
        return custom or "Threat-Actor-Group", [*parents, "Threat-Actor"]
    name = stix_type.removeprefix("x-opencti-").removeprefix("x-mitre-")
    entity_type = "-".join(p.capitalize() for p in name.split("-"))
    if entity_type in _CONTAINER_TYPES:
        parents.append("Container")
    return entity_type, parents


def _json_key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _hash_map(hashes: Any) -> dict[str, str]:
    """Hashes in STIX's form (`{"SHA-256": h}`) from either that or GraphQL's
    `[{"algorithm", "hash"}]` (what pycti reads back and may send again)."""
    if isinstance(hashes, Mapping):
        return {str(a): str(h) for a, h in hashes.items() if h}
    if isinstance(hashes, list):
        return {
            str(item["algorithm"]): str(item["hash"])
            for item in hashes
            if isinstance(item, Mapping) and item.get("algorithm") and item.get("hash")
        }
    return {}


def observable_value_of(item: Mapping[str, Any]) -> str | None:
    """An observable value's `value`: the one given, else its SHA-256, else any hash (what
    OpenCTI shows for a file known by hashes only)."""
    hashes = _hash_map(item.get("hashes"))
    value = item.get("value") or hashes.get("SHA-256") or next(iter(hashes.values()), None)
    return None if value is None else str(value)


def _list_item_identity(key: str, item: Any) -> str:
    """What makes two items of the list `key` the same item when an object is merged.

    - `x_opencti_observable_values`: (type, value), the value as `observable_value_of` derives
      it, so `{"type": "Domain-Name", "value": "a.b", "hashes": null}` (pycti re-sending what it
      read) is the value already held, not a second one;
    - `external_references`: pycti's `ExternalReference.generate_id` inputs, the URL, else
      (source_name, external_id), as OpenCTI keys an external reference by its standard id;
    - other objects with an `id` or `standard_id` (refs): that id;
    - anything else: its JSON text, null members left out (absent and null are one value).
    OpenCTI's own list upsert was not found documented; these identities are the ids OpenCTI
    gives the same things elsewhere.
    """
    if isinstance(item, Mapping):
        if key == "x_opencti_observable_values":
            value = observable_value_of(item)
            if value is not None:
                return _json_key(["observable", item.get("type"), value])
        if key == "external_references":
            if item.get("url") is not None:
                return _json_key(["reference", item["url"]])
            if item.get("source_name") is not None and item.get("external_id") is not None:
                return _json_key(["reference", item["source_name"], item["external_id"]])
        for id_key in ("standard_id", "id"):
            if isinstance(item.get(id_key), str):
                return _json_key(["id", item[id_key]])
        return _json_key({k: v for k, v in item.items() if v is not None})
    return _json_key(item)


def _merge_list(key: str, old: list[Any], incoming: list[Any]) -> None:
    """Union `incoming` into `old` by item identity; an item already held is updated in place
    (its non-null members win), so a value sent again with more detail keeps one entry."""
    held = {_list_item_identity(key, item): item for item in old}
    for item in incoming:
        identity = _list_item_identity(key, item)
        current = held.get(identity)
        if current is None:
            held[identity] = copy.deepcopy(item)
            old.append(held[identity])
        elif isinstance(current, dict) and isinstance(item, Mapping):
            if key == "x_opencti_observable_values" and "hashes" in item:
                item = {**item, "hashes": _hash_map(item["hashes"]) or None}
            merge_stix(current, item)


def merge_stix(existing: dict[str, Any], incoming: Mapping[str, Any]) -> None:
    """OpenCTI-style upsert of one STIX object into another, in place: scalars take the
    incoming value unless it is null, dicts merge, lists are unioned by item identity
    (`_list_item_identity`), never by their JSON text."""
    for key, value in incoming.items():
        if key in ("id", "type", "spec_version", "created") and key in existing:
            continue
        old = existing.get(key)
        if isinstance(old, list) and isinstance(value, list):
            _merge_list(key, old, value)
        elif isinstance(old, dict) and isinstance(value, Mapping):
            merge_stix(old, value)
        elif value is not None:
            existing[key] = copy.deepcopy(value)


def incoming_score(obj: Mapping[str, Any]) -> int | None:
    """The score an object carries: OpenCTI's extension (pycti's `put_attribute_in_extension`
    writes it there) wins over a top-level `x_opencti_score`."""
    extension = (obj.get("extensions") or {}).get(OPENCTI_EXTENSION) or {}
    score = extension.get("score", obj.get("x_opencti_score"))
    return None if score is None else int(score)


def _artifact_payload(obj: Mapping[str, Any]) -> bytes | None:
    """The bytes of an Artifact sent with `payload_bin` (base64), None otherwise."""
    if obj.get("type") != "artifact" or not obj.get("payload_bin"):
        return None
    try:
        return base64.b64decode(str(obj["payload_bin"]), validate=True)
    except binascii.Error as error:
        message = f"Invalid payload_bin on {obj.get('id')}: {error}"
        raise GraphQLFault(message, "VALIDATION_ERROR") from error


def _sync_score(stix: dict[str, Any], incoming: Mapping[str, Any]) -> None:
    """One score per entity: the one just received, kept both where exports put it (the
    extension) and where older producers do (`x_opencti_score`), so reads see one value."""
    score = incoming_score(incoming)
    if score is None:
        return
    stix["x_opencti_score"] = score
    extensions = stix.setdefault("extensions", {})
    extension = extensions.setdefault(OPENCTI_EXTENSION, {"extension_type": "property-extension"})
    extension["score"] = score


class Store:
    """Objects keyed by internal id, indexed by every standard id and by content keys."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._records: dict[str, Record] = {}
        self._by_id: dict[str, str] = {}
        self._by_content: dict[tuple[str, str, str], str] = {}
        self._relationships_by_ref: dict[str, dict[str, None]] = {}
        self._files: dict[str, StoredFile] = {}
        # Told of every change (event type, record, its STIX before an update): the live stream.
        self.listeners: list[Callable[[str, Record, dict[str, Any] | None], None]] = []
        for definition, (marking_id, order, color) in TLP_MARKINGS.items():
            self.upsert(
                {
                    "type": "marking-definition",
                    "spec_version": "2.1",
                    "id": marking_id,
                    "created": "2017-01-20T00:00:00.000Z",
                    "definition_type": "TLP",
                    "name": definition,
                    "x_opencti_definition_type": "TLP",
                    "x_opencti_definition": definition,
                    "x_opencti_order": order,
                    "x_opencti_color": color,
                }
            )

    # -- writes -------------------------------------------------------------------------------
    def ingest_bundle(
        self, bundle: Mapping[str, Any] | str, entities_types: Iterable[str] | None = None
    ) -> IngestResult:
        """Upsert every object of a bundle, in order (as OpenCTI's worker does after split)."""
        data = json.loads(bundle) if isinstance(bundle, str | bytes) else bundle
        if not isinstance(data, Mapping) or not isinstance(data.get("objects"), list):
            raise GraphQLFault(
                "The bundle is not a STIX 2.1 bundle (no objects list)", "VALIDATION_ERROR"
            )
        wanted = {t.lower() for t in entities_types or ()}
        result = IngestResult()
        refused: list[str] = []  # relationships outside OpenCTI's matrix (matrix.py)
        with self.lock:
            for obj in data["objects"]:
                if not isinstance(obj, Mapping) or "id" not in obj or "type" not in obj:
                    raise GraphQLFault(
                        f"Invalid STIX object in bundle: {str(obj)[:200]}", "VALIDATION_ERROR"
                    )
                if wanted and not self._type_wanted(obj, wanted):
                    continue
                if (refusal := self._matrix_refusal(obj, data["objects"])) is not None:
                    refused.append(refusal)
                    continue
                record, created = self.upsert(obj)
                (result.created if created else result.updated).append(record)
        if refused:  # the rest of the bundle is stored, as OpenCTI's worker does per element
            raise GraphQLFault("; ".join(refused), "FUNCTIONAL_ERROR")
        return result

    def _matrix_refusal(self, obj: Mapping[str, Any], bundle: list[Any]) -> str | None:
        """OpenCTI's refusal of a core relationship outside its matrix, or None."""
        if obj.get("type") != "relationship":
            return None
        source = self._end_type(obj.get("source_ref"), bundle)
        target = self._end_type(obj.get("target_ref"), bundle)
        if source is None or target is None:
            return None  # an end OpenCTI would refuse anyway (missing reference)
        (from_type, _), (to_type, to_parents) = source, target
        relationship = str(obj.get("relationship_type"))
        observable = "Stix-Cyber-Observable" in to_parents
        if matrix.accepts(from_type, to_type, relationship, observable):
            return None
        return matrix.refusal(from_type, to_type, relationship)

    def _end_type(self, ref: Any, bundle: list[Any]) -> tuple[str, list[str]] | None:
        record = self.get(str(ref)) if ref else None
        if record is not None:
            return record.entity_type, record.parent_types
        for item in bundle:
            if isinstance(item, Mapping) and item.get("id") == ref and "type" in item:
                return classify(item)
        return None

    @staticmethod
    def _type_wanted(obj: Mapping[str, Any], wanted: set[str]) -> bool:
        entity_type, parents = classify(obj)
        return bool(
            {obj["type"].lower(), entity_type.lower(), *(p.lower() for p in parents)} & wanted
        )

    def upsert(self, obj: Mapping[str, Any]) -> tuple[Record, bool]:
        """Create or merge one STIX object; returns (record, created)."""
        payload = _artifact_payload(obj)
        if payload is not None:  # OpenCTI stores the bytes as the Artifact's file
            obj = {k: v for k, v in obj.items() if k != "payload_bin"}
            obj["hashes"] = {**file_hashes(payload), **(obj.get("hashes") or {})}
        if isinstance(obj.get("hashes"), Mapping):  # OpenCTI keeps hashes lowercase
            obj = {**obj, "hashes": {k: str(v).lower() for k, v in obj["hashes"].items()}}
        with self.lock:
            standard_id = str(obj["id"])
            entity_type, parents = classify(obj)
            record = self.get(standard_id)
            if record is None:
                for key in self._content_keys(entity_type, obj):
                    if key in self._by_content:
                        record = self._records[self._by_content[key]]
                        break
            stamp = now_iso()
            if record is None:
                record = Record(
                    internal_id=str(uuid.uuid4()),
                    standard_id=standard_id,
                    entity_type=entity_type,
                    parent_types=parents,
                    stix=copy.deepcopy(dict(obj)),
                    created_at=stamp,
                    updated_at=stamp,
                )
                self._records[record.internal_id] = record
                created = True
            else:
                before = copy.deepcopy(record.stix) if self.listeners else None
                merge_stix(record.stix, obj)
                record.updated_at = stamp
                if standard_id not in record.all_ids():
                    record.stix_ids.append(standard_id)
                created = False
            _sync_score(record.stix, obj)
            if payload is not None:
                names = record.stix.get("x_opencti_additional_names") or [
                    record.hashes()["SHA-256"]
                ]
                mime_type = str(record.stix.get("mime_type") or "application/octet-stream")
                self.add_file(record, str(names[0]), payload, mime_type)
            for known in record.all_ids():
                self._by_id[known] = record.internal_id
            for extra in record.stix.get("x_opencti_stix_ids") or ():
                self._by_id.setdefault(str(extra), record.internal_id)
            for key in self._content_keys(record.entity_type, record.stix):
                self._by_content.setdefault(key, record.internal_id)
            if record.is_relationship:
                for ref in self._relationship_ends(record):
                    self._relationships_by_ref.setdefault(ref, {})[record.internal_id] = None
            if created:
                self._changed("create", record, None)
            elif before is not None and before != record.stix:
                self._changed("update", record, before)
            return record, created

    def edit(self, any_id: str, changes: Mapping[str, Any]) -> Record:
        """An analyst's edit (`fieldPatch`): set fields (None removes one). An Indicator whose
        pattern changes gets the standard id of its new pattern, the old one kept in its
        stix_ids, as OpenCTI recomputes ids from contributing properties."""
        with self.lock:
            record = self.get(any_id)
            if record is None:
                raise GraphQLFault(f"Element {any_id} not found", "NOT_FOUND")
            before = copy.deepcopy(record.stix)
            for key, value in changes.items():
                if value is None:
                    record.stix.pop(key, None)
                else:
                    record.stix[key] = copy.deepcopy(value)
            if record.entity_type == "Indicator" and "pattern" in changes:
                new_id = Indicator.generate_id(str(record.stix["pattern"]))
                if new_id != record.standard_id:
                    record.stix_ids.append(record.standard_id)
                    record.standard_id = record.stix["id"] = new_id
                    self._by_id[new_id] = record.internal_id
            record.updated_at = now_iso()
            if before != record.stix:
                self._changed("update", record, before)
            return record

    def delete(self, any_id: str) -> Record:
        """Delete an entity (its relationships stay: the emulator does not cascade)."""
        with self.lock:
            record = self.get(any_id)
            if record is None:
                raise GraphQLFault(f"Element {any_id} not found", "NOT_FOUND")
            del self._records[record.internal_id]
            for known in [k for k, v in self._by_id.items() if v == record.internal_id]:
                del self._by_id[known]
            for key in [k for k, v in self._by_content.items() if v == record.internal_id]:
                del self._by_content[key]
            self._changed("delete", record, None)
            return record

    def _changed(self, event: str, record: Record, before: dict[str, Any] | None) -> None:
        for listener in self.listeners:
            listener(event, record, before)

    @staticmethod
    def _relationship_ends(record: Record) -> list[str]:
        stix = record.stix
        ends = [
            stix.get("source_ref"),
            stix.get("target_ref"),
            stix.get("sighting_of_ref"),
            *(stix.get("where_sighted_refs") or ()),
        ]
        return [str(e) for e in ends if e]

    @staticmethod
    def _content_keys(entity_type: str, obj: Mapping[str, Any]) -> list[tuple[str, str, str]]:
        """What makes two observables the same for OpenCTI besides their id."""
        if entity_type in _HASHED_TYPES:
            return [
                (entity_type, normalize_hash_algorithm(algo), str(value).lower())
                for algo, value in (obj.get("hashes") or {}).items()
                if value
            ]
        if "Stix-Cyber-Observable" in classify(obj)[1] and obj.get("value"):
            return [(entity_type, "value", str(obj["value"]))]
        return []

    def add_file(self, record: Record, name: str, data: bytes, mime_type: str) -> StoredFile:
        """Attach a file to an entity (replacing a file of the same name), like an upload."""
        with self.lock:
            file_id = f"import/{record.entity_type}/{record.internal_id}/{name}"
            stored = StoredFile(file_id, name, data, mime_type, record.internal_id)
            record.files = [f for f in record.files if f.id != file_id] + [stored]
            self._files[file_id] = stored
            return stored

    # -- reads --------------------------------------------------------------------------------
    def get(self, any_id: str | None) -> Record | None:
        """A record by internal id, standard id, or any id merged into it."""
        if not any_id:
            return None
        internal = self._by_id.get(str(any_id))
        return self._records.get(internal) if internal else None

    def find_by_hash(
        self, algorithm: str, value: str, entity_type: str | None = None
    ) -> Record | None:
        algo = normalize_hash_algorithm(algorithm)
        for etype in [entity_type] if entity_type else sorted(_HASHED_TYPES):
            internal = self._by_content.get((etype, algo, value.lower()))
            if internal:
                return self._records[internal]
        return None

    def file(self, file_id: str) -> StoredFile | None:
        return self._files.get(file_id)

    def files(self) -> list[StoredFile]:
        with self.lock:
            return list(self._files.values())

    def records(self, predicate: Callable[[Record], bool] | None = None) -> list[Record]:
        with self.lock:
            return [r for r in self._records.values() if predicate is None or predicate(r)]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records())

    def __len__(self) -> int:
        return len(self._records)

    def counts_by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self.records():
            counts[record.entity_type] = counts.get(record.entity_type, 0) + 1
        return dict(sorted(counts.items()))

    def relationships(self, of: str | None = None) -> list[Record]:
        """Relationships, optionally those whose source or target is `of` (any id)."""
        if of is None:
            return self.records(lambda r: r.is_relationship)
        with self.lock:
            target = self.get(of)
            if target is None:
                return []
            found: dict[str, None] = {}
            for known in target.all_ids():
                found.update(dict.fromkeys(self._relationships_by_ref.get(known, ())))
            return [self._records[i] for i in found]

    # -- filters (OpenCTI FilterGroup) --------------------------------------------------------
    def matches(self, record: Record, group: Mapping[str, Any] | None) -> bool:
        if not group:
            return True
        results = [self._match_filter(record, f) for f in group.get("filters") or ()]
        results += [self.matches(record, g) for g in group.get("filterGroups") or ()]
        if not results:
            return True
        return all(results) if str(group.get("mode", "and")).lower() == "and" else any(results)

    def _match_filter(self, record: Record, spec: Mapping[str, Any]) -> bool:
        keys = spec.get("key")
        keys = keys if isinstance(keys, list) else [keys]
        wanted = [str(v).lower() for v in spec.get("values") or ()]
        operator = str(spec.get("operator") or "eq")
        mode = str(spec.get("mode") or "or").lower()
        actual = {v.lower() for key in keys for v in self.field_values(record, str(key))}
        checks: dict[str, Callable[[str], bool]] = {
            "eq": lambda w: w in actual,
            "not_eq": lambda w: w not in actual,
            "contains": lambda w: any(w in a for a in actual),
            "not_contains": lambda w: all(w not in a for a in actual),
            "starts_with": lambda w: any(a.startswith(w) for a in actual),
            "ends_with": lambda w: any(a.endswith(w) for a in actual),
            "search": lambda w: any(w in a for a in actual),
        }
        if operator == "nil":
            return not actual
        if operator == "not_nil":
            return bool(actual)
        check = checks.get(operator)
        if check is None:
            raise GraphQLFault(
                f"vt_pipeline OpenCTI emulator: unsupported filter operator {operator}",
                "UNSUPPORTED",
            )
        if not wanted:
            return True
        results = [check(w) for w in wanted]
        negative = operator.startswith("not_")
        return all(results) if (mode == "and") != negative else any(results)

    def field_values(self, record: Record, key: str) -> list[str]:
        """The string values a filter key sees on a record."""
        stix = record.stix
        if key in ("ids", "id", "standard_id", "internal_id", "x_opencti_stix_ids"):
            return record.all_ids()
        if key.startswith("hashes."):
            value = record.hashes().get(normalize_hash_algorithm(key.split(".", 1)[1]))
            return [value] if value else []
        if key in ("entity_type", "parent_types"):
            return [record.entity_type, *record.parent_types]
        if key in ("fromId", "toId"):
            ref = stix.get("source_ref" if key == "fromId" else "target_ref")
            end = self.get(ref)
            return end.all_ids() if end else ([ref] if ref else [])
        if key == "objectLabel":  # OpenCTI filters by label id; values are accepted too
            labels = self.labels_of(record)
            return labels + [label_id(v) for v in labels]
        if key == "objectMarking":
            markings = [self.get(m) for m in self.markings_of(record)]
            return self.markings_of(record) + [m.internal_id for m in markings if m]
        if key == "createdBy":
            author = self.get(self.created_by_ref(record))
            return author.all_ids() if author else []
        if key == "observable_value":
            value = self.observable_value(record)
            return [value] if value else []
        value = record.prop(key)
        if value is None:
            return []
        if isinstance(value, list):
            return [str(v) for v in value]
        return [str(value).lower() if isinstance(value, bool) else str(value)]

    # -- derived properties -------------------------------------------------------------------
    def labels_of(self, record: Record) -> list[str]:
        values: list[str] = []
        for key in ("labels", "x_opencti_labels"):
            values += [str(v) for v in record.prop(key) or () if str(v) not in values]
        return values

    def markings_of(self, record: Record) -> list[str]:
        return [str(v) for v in record.stix.get("object_marking_refs") or ()]

    def created_by_ref(self, record: Record) -> str | None:
        return record.prop("created_by_ref") or record.stix.get("x_opencti_created_by_ref")

    def external_references_of(self, record: Record) -> list[dict[str, Any]]:
        refs = list(record.prop("external_references") or [])
        refs += list(record.stix.get("x_opencti_external_references") or [])
        return refs

    @staticmethod
    def observable_value(record: Record) -> str | None:
        stix = record.stix
        hashes = record.hashes()
        for algo in ("SHA-256", "SHA-1", "MD5", "SHA-512"):
            if hashes.get(algo):
                return hashes[algo]
        for key in (
            "value",
            "name",
            "number",
            "path",
            "url",
            "key",
            "subject",
            "card_number",
            "iban",
            "persona_name",
            "account_login",
            "user_id",
        ):
            if stix.get(key) not in (None, ""):
                return str(stix[key])
        return None

    def export_stix(self, record: Record) -> dict[str, Any]:
        """The object as OpenCTI exports it: its STIX form plus OpenCTI's extension ids."""
        stix = copy.deepcopy(record.stix)
        stix["id"] = record.standard_id
        extensions = stix.setdefault("extensions", {})
        extension = extensions.setdefault(
            OPENCTI_EXTENSION, {"extension_type": "property-extension"}
        )
        extension.update(
            {
                "id": record.internal_id,
                "type": record.entity_type,
                "created_at": record.created_at,
                "updated_at": record.updated_at,
                "stix_ids": list(record.stix_ids),
                "is_inferred": False,
            }
        )
        return stix
