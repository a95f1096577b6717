"""Looked-up VirusTotal objects read once into typed reports (pure: no I/O, no clock).

An enrichment used to hand VT's raw dict back to `objects.py` for each field it needed. Here
each object is read once, by the validators of `objects.py`, into a frozen report per object
kind (file, IP address, domain, URL); the STIX mapping reads fields, never dicts.

What VT sends is untrusted. A field that cannot be used degrades to None or empty, and how many
of its values were dropped is kept beside it (`invalid_*`), so the mapping can say what it left
out. Values only shown in note tables (`*_cell`-ish raw scalars: names, dates, labels) are kept as
VT sent them (`Any`): the note writer escapes them and counts the unusable ones.

Relations (`/{collection}/{id}/{relationship}` or `?relationships=`) are read into typed lists of
related objects, each with its VT score inputs when VT sent them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from vt_pipeline.virustotal import objects as vt

if TYPE_CHECKING:
    from vt_pipeline.virustotal.expansions import Expansions

ReportKind = Literal["file", "ip_address", "domain", "url"]
REPORT_KINDS: tuple[ReportKind, ...] = ("file", "ip_address", "domain", "url")


@dataclass(frozen=True)
class EngineResult:
    """One engine's verdict (`last_analysis_results[name]`), values as VT sent them."""

    name: str
    engine_name: Any = None
    engine_version: Any = None
    method: Any = None
    category: Any = None
    result: Any = None


@dataclass(frozen=True)
class YaraMatch:
    """One `crowdsourced_yara_results` entry, values as VT sent them."""

    ruleset_id: Any = None
    rule_name: Any = None
    ruleset_name: Any = None
    author: Any = None
    source: Any = None
    description: Any = None


@dataclass(frozen=True)
class RelatedObject:
    """One object of a relation: its VT kind, its validated value (a file's SHA-256, an IP, a
    domain, a URL), a file's other hashes, and VT's analysis counts (and GTI score) when the
    full object carried them (`counts` empty for a descriptor)."""

    kind: ReportKind
    value: str
    hashes: Mapping[str, str] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    gti_score: int | None = None

    @property
    def vt_score(self) -> int | None:
        """VT's score of the related object (GTI's when sent, else the detection ratio)."""
        return self.gti_score if self.gti_score is not None else vt.vt_score(dict(self.counts))


@dataclass(frozen=True)
class Relation:
    """A relation of the looked-up object (`contacted_ips`...), newest or most relevant first as
    VT orders it, capped by the caller. `error`: why it could not be read (the base enrichment
    stands without it). `invalid`: descriptors dropped as unusable."""

    name: str
    objects: tuple[RelatedObject, ...] = ()
    invalid: int = 0
    error: str | None = None
    calls: int = 0  # VT calls spent on this relation (0: with the lookup, or cached)
    cached: bool = False  # its own page came from the response cache


@dataclass(frozen=True)
class Report:
    """What every looked-up object has. `object_id`: VT's id as text (None when VT sent none),
    `sha256_id`: that id when it is a SHA-256 (a URL's own id)."""

    kind: ReportKind
    object_id: str | None
    sha256_id: str | None
    analysed_at: int | None
    gti_score: int | None
    counts: Mapping[str, int]
    invalid_counts: int  # last_analysis_stats entries dropped (1 when it is not an object)
    engines: tuple[EngineResult, ...]  # sorted by name, case-insensitively
    invalid_engines: int  # last_analysis_results entries that are not objects
    reputation: Any
    relations: tuple[Relation, ...] = ()
    expansions: Expansions | None = None  # what virustotal/expansions.py read, when fetched

    @property
    def malicious(self) -> int | None:
        return self.counts.get("malicious")

    @property
    def detection_score(self) -> int | None:
        return vt.vt_score(dict(self.counts))

    def url_object_id(self, url: str) -> str:
        """VT's id of a URL: the object's own when it is a SHA-256, else computed from `url`."""
        return self.sha256_id or vt.url_object_id(url)

    def relation(self, name: str) -> Relation | None:
        return next((r for r in self.relations if r.name == name), None)


@dataclass(frozen=True)
class FileReport(Report):
    hashes: Mapping[str, str] = field(default_factory=dict)
    size: Any = None  # as sent: the mapping keeps it only when it is a sane int
    meaningful_name: Any = None
    names: tuple[Any, ...] = ()
    tags: tuple[Any, ...] = ()
    type_description: Any = None
    type_tags: Any = None
    first_submission_date: Any = None
    last_submission_date: Any = None
    threat_label: Any = None  # popular_threat_classification.suggested_threat_label
    signature_verified: Any = None  # signature_info.verified
    yara: tuple[YaraMatch, ...] = ()
    invalid_yara: int = 0  # crowdsourced_yara_results entries that are not objects


@dataclass(frozen=True)
class NetworkReport(Report):
    categories: tuple[tuple[str, Any], ...] = ()  # (vendor, category) sorted by vendor
    invalid_categories: int = 0  # 1 when `categories` is there but not an object


@dataclass(frozen=True)
class IpReport(NetworkReport):
    asn: int | None = None
    asn_raw: Any = None
    as_owner: Any = None
    rir: Any = None
    country: str | None = None  # ISO 3166-1 alpha-2, upper case (syntax only)
    country_raw: Any = None
    network: Any = None


@dataclass(frozen=True)
class DomainReport(NetworkReport):
    a_records: tuple[str, ...] = ()  # distinct IPv4 addresses of last_dns_records type A
    invalid_a_records: int = 0
    registrar: Any = None
    creation_date: Any = None
    last_analysis_date: Any = None


@dataclass(frozen=True)
class UrlReport(NetworkReport):
    last_final_url: Any = None
    title: Any = None
    last_http_response_code: Any = None
    last_analysis_date: Any = None


AnyReport = FileReport | IpReport | DomainReport | UrlReport


def read_report(kind: ReportKind, vt_object: Any) -> AnyReport | None:
    """The report of a looked-up object read as `kind` (the kind asked for, whatever VT's `type`
    says); None when it is not an object with attributes (nothing can be read)."""
    if not isinstance(vt_object, dict) or not isinstance(vt_object.get("attributes"), dict):
        return None
    attrs = vt.attributes(vt_object)
    raw_id = vt_object.get("id")
    raw_stats = attrs.get("last_analysis_stats")
    counts = vt.analysis_counts(vt_object)
    raw_results = attrs.get("last_analysis_results")
    results = vt.analysis_results(vt_object)
    common: dict[str, Any] = {
        "kind": kind,
        "object_id": str(raw_id) if raw_id else None,
        "sha256_id": vt.valid_hash(raw_id),
        "analysed_at": vt.analysis_timestamp(vt_object),
        "gti_score": vt.gti_threat_score(vt_object),
        "counts": counts,
        "invalid_counts": (
            len(raw_stats) - len(counts)
            if isinstance(raw_stats, dict)
            else int(raw_stats is not None)
        ),
        "engines": tuple(
            _engine(name, results[name])
            for name in sorted(results, key=lambda k: (k.casefold(), k))
        ),
        "invalid_engines": len(raw_results) - len(results) if isinstance(raw_results, dict) else 0,
        "reputation": attrs.get("reputation"),
    }
    if kind == "file":
        return _file(vt_object, attrs, common)
    categories = attrs.get("categories")
    common["categories"] = (
        tuple(sorted(((str(k), v) for k, v in categories.items()), key=lambda item: item[0]))
        if isinstance(categories, dict)
        else ()
    )
    common["invalid_categories"] = int(categories is not None and not isinstance(categories, dict))
    if kind == "ip_address":
        return IpReport(
            **common,
            asn=vt.autonomous_system_number(vt_object),
            asn_raw=attrs.get("asn"),
            as_owner=attrs.get("as_owner"),
            rir=attrs.get("regional_internet_registry"),
            country=vt.country_code(vt_object),
            country_raw=attrs.get("country"),
            network=attrs.get("network"),
        )
    if kind == "domain":
        addresses, invalid = vt.dns_a_records(vt_object)
        return DomainReport(
            **common,
            a_records=tuple(addresses),
            invalid_a_records=invalid,
            registrar=attrs.get("registrar"),
            creation_date=attrs.get("creation_date"),
            last_analysis_date=attrs.get("last_analysis_date"),
        )
    if kind == "url":
        return UrlReport(
            **common,
            last_final_url=attrs.get("last_final_url"),
            title=attrs.get("title"),
            last_http_response_code=attrs.get("last_http_response_code"),
            last_analysis_date=attrs.get("last_analysis_date"),
        )
    raise ValueError(f"unknown VirusTotal report kind {kind!r}: not one of {REPORT_KINDS}")


def with_relations(report: AnyReport, relations: Sequence[Relation]) -> AnyReport:
    """The report with its relations (read separately: `read_relation`)."""
    return replace(report, relations=tuple(relations))


def _engine(name: str, entry: Mapping[str, Any]) -> EngineResult:
    return EngineResult(
        name=name,
        engine_name=entry.get("engine_name"),
        engine_version=entry.get("engine_version"),
        method=entry.get("method"),
        category=entry.get("category"),
        result=entry.get("result"),
    )


def _file(vt_object: dict[str, Any], attrs: dict[str, Any], common: dict[str, Any]) -> FileReport:
    threat = attrs.get("popular_threat_classification")
    signature = attrs.get("signature_info")
    raw_yara = attrs.get("crowdsourced_yara_results")
    yara = vt.crowdsourced_yara_results(vt_object)
    return FileReport(
        **common,
        hashes=vt.file_hashes(vt_object),
        size=attrs.get("size"),
        meaningful_name=attrs.get("meaningful_name"),
        names=tuple(_list(attrs.get("names"))),
        tags=tuple(_list(attrs.get("tags"))),
        type_description=attrs.get("type_description"),
        type_tags=attrs.get("type_tags"),
        first_submission_date=attrs.get("first_submission_date"),
        last_submission_date=attrs.get("last_submission_date"),
        threat_label=threat.get("suggested_threat_label") if isinstance(threat, dict) else None,
        signature_verified=signature.get("verified") if isinstance(signature, dict) else None,
        yara=tuple(
            YaraMatch(
                ruleset_id=entry.get("ruleset_id"),
                rule_name=entry.get("rule_name"),
                ruleset_name=entry.get("ruleset_name"),
                author=entry.get("author"),
                source=entry.get("source"),
                description=entry.get("description"),
            )
            for entry in yara
        ),
        invalid_yara=len(raw_yara) - len(yara) if isinstance(raw_yara, list) else 0,
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# -- relations ----------------------------------------------------------------------------------


def read_relation(
    name: str,
    subject_kind: ReportKind,
    subject_id: str,
    data: Any,
    *,
    limit: int,
    calls: int = 0,
    cached: bool = False,
) -> Relation:
    """A relation from VT's `data` for it: a list of objects or descriptors (one-to-many), one
    object or None (one-to-one, e.g. `last_serving_ip_address`). At most `limit` objects are
    kept, in VT's order; unusable items are counted in `invalid`, never raised."""
    items = data if isinstance(data, list) else [] if data is None else [data]
    objects: dict[tuple[str, str], RelatedObject] = {}
    invalid = 0
    for item in items:
        related = read_related(item, subject_kind, subject_id)
        if related is None:
            invalid += 1
        elif len(objects) < limit:
            objects.setdefault((related.kind, related.value), related)
    return Relation(name, tuple(objects.values()), invalid=invalid, calls=calls, cached=cached)


def read_related(
    item: Any, subject_kind: ReportKind | None = None, subject_id: str = ""
) -> RelatedObject | None:
    """One object of a relation (a descriptor `{type, id}` or a full object with attributes), or
    None when its kind or value is not usable. A resolution (`{ip}{domain}`) is read as the
    object at its other end from the subject (`subject_kind`, `subject_id`)."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    attrs = vt.attributes(item)
    raw_id = item.get("id")
    if kind == "resolution":
        return _resolution_end(item, attrs, subject_kind, subject_id)
    extras: dict[str, Any] = {
        "counts": vt.analysis_counts(item),
        "gti_score": vt.gti_threat_score(item),
    }
    if kind == "file":
        hashes = vt.file_hashes(item)
        sha256 = hashes.get("SHA-256")
        if sha256 is None:
            return None
        return RelatedObject("file", sha256, hashes=hashes, **extras)
    if kind == "ip_address":
        address = _address(raw_id)
        return None if address is None else RelatedObject("ip_address", address, **extras)
    if kind == "domain":
        name = _domain(raw_id)
        return None if name is None else RelatedObject("domain", name, **extras)
    if kind == "url":
        # A descriptor names the URL in `context_attributes.url` (its id is a hash); an object
        # in `attributes.url`.
        url = attrs.get("url") or vt.context(item).get("url")
        return RelatedObject("url", url, **extras) if vt.is_valid_url(url) else None
    return None


def _resolution_end(
    item: dict[str, Any],
    attrs: dict[str, Any],
    subject_kind: ReportKind | None,
    subject_id: str,
) -> RelatedObject | None:
    """The IP a domain resolved to, or the domain that resolved to an IP. A full resolution
    object names both ends (`ip_address`, `host_name`, with their stats); a descriptor only has
    the id, the IP followed by the domain, read with the subject's end removed."""
    raw_id = str(item.get("id") or "")
    if subject_kind == "domain":
        value = attrs.get("ip_address")
        if value is None and subject_id and raw_id.endswith(subject_id):
            value = raw_id[: -len(subject_id)]
        address = _address(value)
        stats = attrs.get("ip_address_last_analysis_stats")
        if address is None:
            return None
        return RelatedObject("ip_address", address, counts=_counts(stats))
    if subject_kind == "ip_address":
        value = attrs.get("host_name")
        if value is None and subject_id and raw_id.startswith(subject_id):
            value = raw_id[len(subject_id) :]
        name = _domain(value)
        stats = attrs.get("host_name_last_analysis_stats")
        if name is None:
            return None
        return RelatedObject("domain", name, counts=_counts(stats))
    return None


def _address(value: Any) -> str | None:
    try:
        return str(ipaddress.ip_address(str(value or "").strip()))
    except ValueError:
        return None


def _domain(value: Any) -> str | None:
    name = str(value or "").strip().lower().rstrip(".")
    return name if vt.is_valid_domain(name) else None


def _counts(stats: Any) -> dict[str, int]:
    """Sane analysis counts of a stats dict found elsewhere than `last_analysis_stats`."""
    return vt.analysis_counts({"attributes": {"last_analysis_stats": stats}})
