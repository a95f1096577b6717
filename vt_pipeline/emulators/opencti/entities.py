"""STIX objects for the OpenCTI emulator's test set-up: observables, indicators, markings.

Pure builders (no store, no I/O): `Platform.create_entity` stores what they return. Ids are
deterministic (STIX 2.1 SCO ids over the same contributing properties stix2 uses, pycti's
`generate_id` for domain objects and markings), so a test that creates the same observable
twice gets the same entity, as in OpenCTI.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pycti import Indicator, MarkingDefinition
from stix2.canonicalization.Canonicalize import canonicalize

from vt_pipeline.emulators.opencti.store import OPENCTI_EXTENSION, TLP_MARKINGS

# The observable types an enrichment connector is scoped on, OpenCTI type -> STIX type.
OBSERVABLE_STIX_TYPES = {
    "StixFile": "file",
    "Artifact": "artifact",
    "IPv4-Addr": "ipv4-addr",
    "IPv6-Addr": "ipv6-addr",
    "Domain-Name": "domain-name",
    "Hostname": "hostname",
    "Url": "url",
    "Email-Addr": "email-addr",
}
_SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
_HASH_PREFERENCE = ("MD5", "SHA-1", "SHA-256", "SHA-512")
DEFAULT_CREATED = "2026-01-01T00:00:00.000Z"


def sco_id(stix_type: str, contributing: Mapping[str, Any]) -> str:
    """STIX 2.1 deterministic SCO id (uuid5 over canonical JSON), as stix2 computes it."""
    text = canonicalize(dict(contributing), utf8=False)
    return f"{stix_type}--{uuid.uuid5(_SCO_NAMESPACE, text)}"


def _one_hash(hashes: Mapping[str, str]) -> dict[str, str]:
    """stix2's choice of the hash that identifies a file (MD5 first)."""
    for algorithm in _HASH_PREFERENCE:
        if hashes.get(algorithm):
            return {algorithm: hashes[algorithm]}
    algorithm = next(iter(hashes))
    return {algorithm: hashes[algorithm]}


def marking_stix(definition: str) -> dict[str, Any] | None:
    """The marking-definition of a non-TLP `TYPE:VALUE` (e.g. `PAP:RED`); None for a TLP one."""
    if definition.upper() in TLP_MARKINGS or definition.startswith("marking-definition--"):
        return None
    definition_type, _, value = definition.partition(":")
    if not value:
        raise ValueError(
            f"a marking is a TLP name (TLP:CLEAR..TLP:RED), a marking-definition id or "
            f"TYPE:VALUE, not {definition!r}"
        )
    return {
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": MarkingDefinition.generate_id(definition_type, definition),
        "created": DEFAULT_CREATED,
        "definition_type": definition_type.lower(),
        "name": definition,
        "definition": {definition_type.lower(): value},
        "x_opencti_definition_type": definition_type,
        "x_opencti_definition": definition,
        "x_opencti_order": 1,
        "x_opencti_color": "#ffffff",
    }


def marking_ref(definition: str) -> str:
    """The marking-definition id of a TLP name, a `TYPE:VALUE` marking or an id."""
    tlp = TLP_MARKINGS.get(definition.upper())
    if tlp is not None:
        return tlp[0]
    if definition.startswith("marking-definition--"):
        return definition
    stix = marking_stix(definition)
    assert stix is not None
    return str(stix["id"])


def _common(
    stix: dict[str, Any],
    markings: Iterable[str],
    labels: Iterable[str],
    score: int | None,
    description: str | None,
    created_by: str | None,
    is_observable: bool,
) -> dict[str, Any]:
    """Markings, labels, score, description and author where OpenCTI's exports put them."""
    refs = [marking_ref(m) for m in markings]
    if refs:
        stix["object_marking_refs"] = refs
    extension: dict[str, Any] = {"extension_type": "property-extension"}
    if is_observable:
        if labels:
            extension["labels"] = list(labels)
        if description is not None:
            extension["description"] = description
        if created_by:
            extension["created_by_ref"] = created_by
    else:
        if labels:
            stix["labels"] = list(labels)
        if description is not None:
            stix["description"] = description
        if created_by:
            stix["created_by_ref"] = created_by
    if score is not None:
        extension["score"] = int(score)
    if len(extension) > 1:
        stix["extensions"] = {OPENCTI_EXTENSION: extension}
    return stix


def observable_stix(
    entity_type: str,
    value: str | None = None,
    *,
    hashes: Mapping[str, str] | None = None,
    name: str | None = None,
    mime_type: str | None = None,
    markings: Sequence[str] = (),
    labels: Sequence[str] = (),
    score: int | None = None,
    description: str | None = None,
    created_by: str | None = None,
) -> dict[str, Any]:
    """An observable of an OpenCTI type (`StixFile`, `IPv4-Addr`, `Hostname`...).

    Files and Artifacts take `hashes` (`{"SHA-256": ...}`), the others a `value`.
    """
    stix_type = OBSERVABLE_STIX_TYPES.get(entity_type)
    if stix_type is None:
        raise ValueError(
            f"unknown observable type {entity_type!r}; one of {sorted(OBSERVABLE_STIX_TYPES)}"
        )
    stix: dict[str, Any] = {"type": stix_type, "spec_version": "2.1"}
    if stix_type in ("file", "artifact"):
        clean = {k: v.lower() for k, v in (hashes or {}).items() if v}
        if clean:
            stix["hashes"] = clean
        if name and stix_type == "file":
            stix["name"] = name
        if mime_type:
            stix["mime_type"] = mime_type
        contributing: dict[str, Any] = {"hashes": _one_hash(clean)} if clean else {}
        if stix_type == "file" and name:
            contributing["name"] = name
        if not contributing:
            raise ValueError(f"a {entity_type} needs hashes (or, for a StixFile, a name)")
    else:
        if not value:
            raise ValueError(f"a {entity_type} needs a value")
        stix["value"] = value
        contributing = {"value": value}
    stix["id"] = sco_id(stix_type, contributing)
    return _common(stix, markings, labels, score, description, created_by, is_observable=True)


def indicator_stix(
    pattern: str,
    *,
    observable_values: Sequence[Mapping[str, Any]] = (),
    name: str | None = None,
    pattern_type: str = "stix",
    main_observable_type: str | None = None,
    valid_from: str = DEFAULT_CREATED,
    valid_until: str | None = None,
    markings: Sequence[str] = (),
    labels: Sequence[str] = (),
    score: int | None = None,
    description: str | None = None,
    created_by: str | None = None,
) -> dict[str, Any]:
    """An Indicator as OpenCTI holds it: `x_opencti_observable_values` lists what the
    pattern is about (`[{"type": "Domain-Name", "value": "example.com"}]`, files with
    `hashes`), which an enrichment connector enriches one by one."""
    stix: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": Indicator.generate_id(pattern),
        "created": valid_from,
        "modified": valid_from,
        "name": name or pattern,
        "pattern": pattern,
        "pattern_type": pattern_type,
        "valid_from": valid_from,
        "x_opencti_observable_values": [dict(v) for v in observable_values],
    }
    if valid_until:
        stix["valid_until"] = valid_until
    main = main_observable_type or (
        str(observable_values[0]["type"]) if observable_values else None
    )
    if main:
        stix["x_opencti_main_observable_type"] = main
    if score is not None:
        stix["x_opencti_score"] = int(score)
    return _common(stix, markings, labels, None, description, created_by, is_observable=False)
