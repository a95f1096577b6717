"""Generic STIX 2.1 building blocks: ids, timestamps, markings, author, relationships, bundles.

Objects are plain dicts, not stix2 objects: building thousands of stix2 objects per partition is
several times slower, and stix2 stamps `created`/`modified` with the wall clock whenever they are
left out. stix2 stays the reference the tests check ids against, and the parser
`validation.validate_bundle` runs the output through. Every id is derived from content (pycti's
`generate_id` helpers for SDOs/SROs, STIX 2.1 deterministic ids for SCOs) and every timestamp
is passed in, so the same input always gives the same bytes. No I/O, no clock.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import stix2
from pycti import Identity, MarkingDefinition, Note
from pycti import Indicator as PyctiIndicator
from stix2.canonicalization.Canonicalize import canonicalize

StixObject = dict[str, Any]

# STIX 2.1 namespace for deterministic SCO ids (section 2.9), the one stix2 uses.
SCO_NAMESPACE = uuid.UUID("00abedb4-aa42-466c-9c01-fed23315a9b7")
# Our own namespace for bundle ids: a bundle id is a function of the ids it carries.
BUNDLE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:vt_pipeline:stix-bundle")
# `created`/`modified` of objects that describe no VT event (the author identity).
FIXED_TIMESTAMP = "2020-01-01T00:00:00.000Z"
# stix2's TLP objects are dated 2017-01-20; the OpenCTI-only TLP:AMBER+STRICT gets the same date.
TLP_TIMESTAMP = "2017-01-20T00:00:00.000Z"

# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59: what a STIX timestamp can spell.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799

# Hash order stix2 uses to choose the one hash that names an SCO.
_ID_HASH_ORDER = ("MD5", "SHA-1", "SHA-256", "SHA-512")

_STIX2_TLP: dict[str, stix2.MarkingDefinition] = {
    "clear": stix2.TLP_WHITE,
    "white": stix2.TLP_WHITE,
    "green": stix2.TLP_GREEN,
    "amber": stix2.TLP_AMBER,
    "red": stix2.TLP_RED,
}


def stix_timestamp(seconds: int | float) -> str:
    """STIX timestamp (`YYYY-MM-DDTHH:MM:SS.000Z`, UTC) of unix seconds; ValueError if unspellable.

    Millisecond precision with zero milliseconds: what stix2 and OpenCTI write, so ids that hash a
    date (pycti Incident) match the ones OpenCTI computes.
    """
    if isinstance(seconds, bool) or not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise ValueError(f"unix time {seconds!r} is outside the years 1-9999")
    moment = datetime.fromtimestamp(int(seconds), UTC)
    return f"{moment.year:04d}{moment.strftime('-%m-%dT%H:%M:%S')}.000Z"


def moment_timestamp(moment: datetime) -> str:
    """STIX timestamp of a timezone-aware datetime, to the millisecond (OpenCTI's precision).

    For times that are not VT's (an enrichment request's): two requests a few hundred
    milliseconds apart still give two versions in order. A naive datetime is a caller error
    (ValueError): its zone would be guessed from the machine, and the bytes with it.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment!r} has no time zone")
    try:
        utc = moment.astimezone(UTC)
    except OverflowError as error:  # year 1 at UTC+x, year 9999 at UTC-x
        raise ValueError(f"{moment!r} is outside the years 1-9999") from error
    return f"{utc.year:04d}{utc.strftime('-%m-%dT%H:%M:%S')}.{utc.microsecond // 1000:03d}Z"


def human_timestamp(seconds: int | float) -> str:
    """ISO UTC date with an explicit `Z`, for descriptions (upstream wrote naive local time)."""
    return stix_timestamp(seconds).replace(".000Z", "Z")


# Characters a VT-supplied name must not carry into STIX: C0/C1 controls (NUL, newlines, ESC),
# bidi embeddings/overrides/isolates and marks (they make `exe.pdf` display as `fdp.exe`),
# and lone surrogates (not encodable as UTF-8).
_UNSAFE_NAME_CHARS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
NAME_MAX_LENGTH = 255  # what file systems and OpenCTI's name fields hold


def clean_name(value: Any, max_length: int = NAME_MAX_LENGTH) -> str:
    """A VT-supplied name made safe for STIX: unsafe characters out (line breaks and tabs become
    spaces), whitespace collapsed, at most `max_length` characters. "" when nothing is left."""
    if not isinstance(value, str):
        return ""
    text = _UNSAFE_NAME_CHARS.sub(lambda m: " " if m.group() in "\t\n\r" else "", value)
    return " ".join(text.split())[:max_length].strip()


def normalize_label(label: str) -> str:
    """Upstream's label normalization: lowercase, anything but `[a-z0-9]` becomes `_`."""
    return re.sub("[^a-z0-9]", "_", label.lower())


def escape_pattern_value(value: str) -> str:
    """Escape a value for a single-quoted STIX pattern string literal (backslash, then quote)."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


def value_pattern(stix_type: str, value: str) -> str:
    """The STIX pattern matching an SCO by its `value` property, e.g. `[url:value = '...']`."""
    return f"[{stix_type}:value = '{escape_pattern_value(value)}']"


def unique(values: Iterable[str]) -> list[str]:
    """Drop empty strings and repeats, keep the first occurrence's order (labels, names)."""
    seen: dict[str, None] = {}
    for value in values:
        if value and value not in seen:
            seen[value] = None
    return list(seen)


def sco_id(stix_type: str, contributing: Mapping[str, Any]) -> str:
    """Deterministic SCO id, computed as stix2 does (uuid5 over the canonical JSON).

    `contributing` holds the type's ID-contributing properties that are set; `hashes` is reduced
    to the one hash stix2 chooses (MD5, then SHA-1, SHA-256, SHA-512).
    """
    data: dict[str, Any] = {}
    for key, value in contributing.items():
        if value is None:
            continue
        if key == "hashes":
            chosen = next((name for name in _ID_HASH_ORDER if name in value), None)
            chosen = chosen or next(iter(value), None)
            if chosen is None:
                raise ValueError(f"{stix_type}: hashes is empty")
            value = {chosen: value[chosen]}
        data[key] = value
    if not data:
        raise ValueError(f"{stix_type}: no ID-contributing property")
    return f"{stix_type}--{uuid.uuid5(SCO_NAMESPACE, canonical_json(data))}"


def canonical_json(data: Mapping[str, Any]) -> str:
    """RFC 8785 canonical JSON of `data`, as stix2's `canonicalize` writes it (ids hash it).

    For what ids hash here (strings and objects of strings, all ASCII) canonical JSON is what
    `json.dumps` writes with sorted keys, no spaces and no ASCII escaping: the same escapes of
    quotes, backslashes and control characters, and the code-point order of ASCII keys. That
    takes ~2 us where stix2's pure Python encoder takes ~40 (3,956 ids in a 1,000-notification
    run). Anything else (numbers, lists, non-ASCII text) goes to stix2's own encoder.
    """
    if _plain_ascii(data):
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return canonicalize(data, utf8=False)


def _plain_ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and k.isascii() and _plain_ascii(v) for k, v in value.items())
    return False


def relationship_id(relationship_type: str, source_ref: str, target_ref: str) -> str:
    """pycti's `StixCoreRelationship.generate_id` without start/stop time (the same uuid5 over
    the same canonical JSON), through the fast `canonical_json`."""
    data = {
        "relationship_type": relationship_type,
        "source_ref": source_ref,
        "target_ref": target_ref,
    }
    return f"relationship--{uuid.uuid5(SCO_NAMESPACE, canonical_json(data))}"


def author_identity(
    name: str, identity_class: str = "organization", created: str = FIXED_TIMESTAMP
) -> StixObject:
    """The author Identity; fixed dates so that re-sending it never changes it."""
    return {
        "type": "identity",
        "spec_version": "2.1",
        "id": Identity.generate_id(name, identity_class),
        "created": created,
        "modified": created,
        "name": name,
        "identity_class": identity_class,
    }


def tlp_marking(level: str) -> StixObject:
    """The TLP marking definition of a level (`clear`, `white`, `green`, `amber`,
    `amber+strict`, `red`; case and a `TLP:` prefix ignored). Unknown levels raise ValueError
    instead of falling back to green as upstream did."""
    key = level.strip().lower().removeprefix("tlp:").replace("_", "+")
    if key in _STIX2_TLP:
        return json.loads(_STIX2_TLP[key].serialize())
    if key == "amber+strict":
        return {
            "type": "marking-definition",
            "spec_version": "2.1",
            "id": MarkingDefinition.generate_id("TLP", "TLP:AMBER+STRICT"),
            "created": TLP_TIMESTAMP,
            "definition_type": "statement",
            "definition": {"statement": "custom"},
            "name": "TLP:AMBER+STRICT",
            "x_opencti_definition_type": "TLP",
            "x_opencti_definition": "TLP:AMBER+STRICT",
        }
    raise ValueError(f"unknown TLP level {level!r}")


def external_reference(source_name: str, url: str, description: str | None = None) -> StixObject:
    reference: StixObject = {"source_name": source_name, "url": url}
    if description:
        reference["description"] = description
    return reference


def relationship(
    relationship_type: str,
    source_ref: str,
    target_ref: str,
    *,
    created: str,
    created_by_ref: str,
    object_marking_refs: Sequence[str],
    description: str | None = None,
) -> StixObject:
    """A STIX relationship with pycti's id (type, source, target: no start/stop time).

    `created` must come from the data: stix2 would stamp the wall clock.
    """
    rel: StixObject = {
        "type": "relationship",
        "spec_version": "2.1",
        "id": relationship_id(relationship_type, source_ref, target_ref),
        "created": created,
        "modified": created,
        "relationship_type": relationship_type,
        "source_ref": source_ref,
        "target_ref": target_ref,
        "created_by_ref": created_by_ref,
        "object_marking_refs": list(object_marking_refs),
    }
    if description:
        rel["description"] = description
    return rel


def value_observable(
    stix_type: str,
    value: str,
    *,
    created_by_ref: str,
    object_marking_refs: Sequence[str],
    score: int | None = None,
    description: str | None = None,
    labels: Sequence[str] = (),
    external_references: Sequence[StixObject] = (),
) -> StixObject:
    """An SCO identified by its `value` (url, domain-name, ipv4-addr, ipv6-addr, hostname).

    OpenCTI's extras go in the `x_opencti_*` keys pycti reads on observables (score,
    description, labels, created-by, external references).
    """
    obj: StixObject = {
        "type": stix_type,
        "spec_version": "2.1",
        "id": sco_id(stix_type, {"value": value}),
        "value": value,
    }
    add_observable_extras(
        obj,
        created_by_ref=created_by_ref,
        object_marking_refs=object_marking_refs,
        score=score,
        description=description,
        labels=labels,
        external_references=external_references,
    )
    return obj


def add_observable_extras(
    obj: StixObject,
    *,
    created_by_ref: str,
    object_marking_refs: Sequence[str],
    score: int | None = None,
    description: str | None = None,
    labels: Sequence[str] = (),
    external_references: Sequence[StixObject] = (),
) -> StixObject:
    """Set the author, marking and OpenCTI extras on an SCO, leaving out the empty ones."""
    obj["object_marking_refs"] = list(object_marking_refs)
    obj["x_opencti_created_by_ref"] = created_by_ref
    if score is not None:
        obj["x_opencti_score"] = score
    if description:
        obj["x_opencti_description"] = description
    if labels:
        obj["x_opencti_labels"] = list(labels)
    if external_references:
        obj["x_opencti_external_references"] = list(external_references)
    return obj


def indicator(
    pattern: str,
    *,
    pattern_type: str,
    name: str,
    valid_from: str,
    created_by_ref: str,
    object_marking_refs: Sequence[str],
    main_observable_type: str,
    description: str | None = None,
    labels: Sequence[str] = (),
    created: str | None = None,
    modified: str | None = None,
) -> StixObject:
    """An Indicator with pycti's id (from the pattern); created/modified default to valid_from."""
    created = created or valid_from
    obj: StixObject = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": PyctiIndicator.generate_id(pattern),
        "created": created,
        "modified": modified or created,
        "name": name,
        "pattern": pattern,
        "pattern_type": pattern_type,
        "valid_from": valid_from,
        "created_by_ref": created_by_ref,
        "object_marking_refs": list(object_marking_refs),
        "x_opencti_main_observable_type": main_observable_type,
    }
    if description:
        obj["description"] = description
    if labels:
        obj["labels"] = list(labels)
    return obj


def note(
    content: str,
    *,
    abstract: str,
    object_refs: Sequence[str],
    created: str,
    created_by_ref: str,
    object_marking_refs: Sequence[str],
    created_in_id: bool = False,
) -> StixObject:
    """A Note whose id depends on its content only (pycti `Note.generate_id(None, content)`):
    the same content re-sent upserts one note instead of adding a copy, as upstream's
    clock-based ids did. `created_in_id` also hashes `created` (pycti's full id, what OpenCTI
    computes for a note that has a date): one note per dated event, such as a VT analysis."""
    return {
        "type": "note",
        "spec_version": "2.1",
        "id": Note.generate_id(created if created_in_id else None, content),
        "created": created,
        "modified": created,
        "abstract": abstract,
        "content": content,
        "object_refs": unique(object_refs),
        "created_by_ref": created_by_ref,
        "object_marking_refs": list(object_marking_refs),
    }


def merge_labels(existing: StixObject, incoming: StixObject) -> None:
    """Union the labels of two versions of one object (same id), in place, order kept."""
    for key in ("labels", "x_opencti_labels"):
        if key in incoming:
            existing[key] = unique([*existing.get(key, []), *incoming[key]])


def bundle_id(object_ids: Iterable[str]) -> str:
    """Deterministic bundle id: uuid5 over the sorted, distinct object ids."""
    return f"bundle--{uuid.uuid5(BUNDLE_NAMESPACE, ','.join(sorted(set(object_ids))))}"


def make_bundle(objects: Iterable[Mapping[str, Any]]) -> StixObject:
    """A STIX 2.1 bundle of the objects, sorted by id, duplicates removed, id from content."""
    ordered = _sorted_unique(objects)
    return {"type": "bundle", "id": bundle_id(o["id"] for o in ordered), "objects": ordered}


def serialize_bundle(bundle: Mapping[str, Any]) -> bytes:
    """Canonical bytes of a bundle: sorted keys, compact, UTF-8 (no `\\u` escapes), objects
    sorted by id with duplicates resolved the same way whatever the input order."""
    data = dict(bundle)
    data["objects"] = _sorted_unique(bundle.get("objects") or [])
    return _dumps(data).encode("utf-8")


def _dumps(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_json_default
    )


def _json_default(value: Any) -> Any:
    """Let stix2 objects in: their own serializer knows their timestamp precision."""
    if isinstance(value, stix2.base._STIXBase):
        return json.loads(value.serialize())
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _sorted_unique(objects: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Objects sorted by id; of several objects with one id, the smallest serialization wins
    (an order-independent choice)."""
    by_id: dict[str, list[Any]] = {}
    for obj in objects:
        by_id.setdefault(str(obj["id"]), []).append(obj)
    result = []
    for object_id in sorted(by_id):
        versions = by_id[object_id]
        result.append(versions[0] if len(versions) == 1 else min(versions, key=_dumps))
    return result
