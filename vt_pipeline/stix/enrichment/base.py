"""The base of the enrichment mapping: options, result, the builder every addition writes into
(objects deduplicated by id, counters) and the `Target` an addition reads (pure: no I/O)."""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from pycti import STIX_EXT_OCTI, STIX_EXT_OCTI_SCO

from vt_pipeline.stix import common
from vt_pipeline.stix.common import StixObject
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.reports import AnyReport, ReportKind

AUTHOR_NAME = "VirusTotal"
REFERENCE_SOURCE = "VirusTotal"
GUI_ROOT = "https://www.virustotal.com/gui"

# OpenCTI entity type -> STIX type of the observable it names.
SCO_TYPES: dict[str, str] = {
    "StixFile": "file",
    "Artifact": "artifact",
    "IPv4-Addr": "ipv4-addr",
    "IPv6-Addr": "ipv6-addr",
    "Domain-Name": "domain-name",
    "Hostname": "hostname",
    "Url": "url",
}
ENTITY_TYPES = tuple(SCO_TYPES)
FILE_ENTITY_TYPES = ("StixFile", "Artifact")
# OpenCTI entity type -> the VirusTotal report it is read as (a Hostname is a VT domain).
REPORT_KIND: dict[str, ReportKind] = {
    "StixFile": "file",
    "Artifact": "file",
    "IPv4-Addr": "ip_address",
    "IPv6-Addr": "ip_address",
    "Domain-Name": "domain",
    "Hostname": "domain",
    "Url": "url",
}
GUI_KIND = {
    "StixFile": "file",
    "Artifact": "file",
    "IPv4-Addr": "ip-address",
    "IPv6-Addr": "ip-address",
    "Domain-Name": "domain",
    "Hostname": "domain",
    "Url": "url",
}
# The option family (`{prefix}_indicator_*`) of each entity type.
OPTION_PREFIX = {
    "StixFile": "file",
    "Artifact": "file",
    "IPv4-Addr": "ip",
    "IPv6-Addr": "ip",
    "Domain-Name": "domain",
    "Hostname": "domain",
    "Url": "url",
}
HASH_LENGTHS = {32: "MD5", 40: "SHA-1", 64: "SHA-256"}
HEX = re.compile(r"^[0-9a-fA-F]+$")
# Labels and names: no control, zero-width or bidi characters (a `\u202e` name spoofs its
# extension), no lone surrogate, bounded length.
UNSAFE_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2069\ufeff"
    "\ud800-\udfff]"  # lone surrogates (JSON may carry them) cannot be written as UTF-8
)
LABEL_LIMIT = 100
NAME_LIMIT = 1024
MAX_NAMES = 100
MAX_LABELS = 100

# Every counter `stats` reports, always present (0 when nothing happened) for stable metadata.
STAT_KEYS = (
    "indicators",  # detection Indicators (pattern on the value) created
    "yara_indicators",  # crowdsourced YARA Indicators created
    "notes",  # Notes created
    "relationships",  # relationships created
    "observables",  # new observables: resolved IPs, autonomous systems, an Indicator's values
    "locations",  # Country locations created
    "score_kept",  # VT's score was lower than the existing one and did not replace it
    "no_score",  # VT gave neither a GTI score nor analysis counts: score left as it was
    "invalid_vt_object",  # the VT data is not an object with attributes: nothing mapped
    "invalid_values",  # hostile or unusable VT values dropped (names, labels, counts, cells...)
    "hash_conflicts",  # VT's hash differs from the entity's: the entity's kept
    "yara_rule_missing",  # a crowdsourced result names a rule its ruleset does not hold
    "yara_ruleset_missing",  # a crowdsourced result's ruleset was not fetched
    "yara_parse_error",  # a crowdsourced ruleset could not be parsed
    "lookups",  # Indicator: observable values enriched
    "lookups_not_found",  # Indicator: values VT knows nothing about
    "invalid_observable_values",  # Indicator: values whose type or syntax is not usable
    "section_errors",  # unexpected failure of one part (a bug): that part dropped, counted
    "related_objects",  # observables of VT relations (contacted_ips...) sent
    "relations_failed",  # VT relations that could not be fetched (the reason is in the run)
    "malware_families",  # Malware families of VT's classification (and GTI's) added
    "attack_patterns",  # ATT&CK Attack-Patterns of VT's sandboxes added
    "sigma_indicators",  # crowdsourced Sigma Indicators created
    "ids_indicators",  # crowdsourced IDS (Snort/Suricata) Indicators created
    "sigma_rule_missing",  # a Sigma match whose rule VT did not serve: left out
    "ids_rule_text_missing",  # an IDS match without the rule's text (rule_raw): left out
    "threat_objects",  # GTI's Intrusion-Sets, Malware, Campaigns and Reports added
)


@dataclass(frozen=True)
class EnrichmentMappingOptions:
    """What the mapping creates. Upstream option names without the `VIRUSTOTAL_` prefix; the
    defaults are the seed README's (where upstream's code differs: file_import_yara false,
    ip/domain_add_relationships true)."""

    replace_with_lower_score: bool = True
    include_attributes_in_note: bool = False
    file_create_note_full_report: bool = True
    file_import_yara: bool = False
    file_indicator_create_positives: int = 10
    file_indicator_valid_minutes: int = 2880
    file_indicator_detect: bool = True
    ip_indicator_create_positives: int = 10
    ip_indicator_valid_minutes: int = 2880
    ip_indicator_detect: bool = True
    ip_add_relationships: bool = True
    domain_indicator_create_positives: int = 10
    domain_indicator_valid_minutes: int = 2880
    domain_indicator_detect: bool = True
    domain_add_relationships: bool = True
    url_indicator_create_positives: int = 10
    url_indicator_valid_minutes: int = 2880
    url_indicator_detect: bool = True
    # issue 19 sections 2 and 4 (what they fetch is `virustotal.expansions.ExpansionOptions`)
    file_malware_family: bool = False
    file_malware_family_min_engines: int = 3
    file_attack_patterns: bool = False
    file_import_sigma: bool = False
    file_import_ids: bool = False
    create_note_comments: bool = False
    gti_context: bool = True


@dataclass(frozen=True)
class EnrichmentResult:
    """The objects to send (the edited entity, the author, the new objects; sorted by id), the
    score written on the entity (None: left unchanged) and counters for run metadata."""

    objects: list[dict[str, Any]]
    score: int | None
    stats: dict[str, int]


@dataclass(frozen=True)
class ScoreDecision:
    written: int | None  # the score set on the entity, None when it keeps its own
    effective: int | None  # the entity's score after the decision
    kept: int | None = None  # the existing score kept instead of VT's lower one


@dataclass(frozen=True)
class Target:
    """One observable being enriched, as every addition reads it. `entity` is the edited copy
    (additions may add to it); the rest is decided before the additions run."""

    entity: dict[str, Any]
    entity_type: str
    report: AnyReport
    subject: str  # what the entity is on VT: a file's best hash, the value otherwise
    analysed_at: str | None  # VT's analysis date (STIX timestamp)
    created: str  # the date of what VT observed: the analysis, else the entity's own
    reference: StixObject  # the VT GUI page
    vt_score: int | None
    score_kind: str
    decision: ScoreDecision
    note_refs: Sequence[str]  # what the notes are about, besides the entity
    detection_indicator: bool  # False for an Indicator's values (the entity is the Indicator)

    @property
    def is_file(self) -> bool:
        return self.entity_type in FILE_ENTITY_TYPES


@dataclass(frozen=True)
class Addition:
    """One kind of addition to an enrichment: when it applies, and what it adds."""

    name: str
    applies: Callable[[EnrichmentMappingOptions, Target], bool]
    add: Callable[[Builder, Target], None]


class Builder:
    """Accumulates the new objects of one enrichment, deduplicated by id, and the counters."""

    def __init__(
        self,
        options: EnrichmentMappingOptions,
        yara_rulesets: Mapping[str, dict[str, Any]],
        entity: dict[str, Any],
        requested: str | None = None,
    ) -> None:
        self.options = options
        self.yara_rulesets = yara_rulesets
        # When the enrichment was asked (STIX timestamp): Indicators are valid from it.
        self.requested = requested
        self.stats: Counter[str] = Counter()
        self.author = common.author_identity(AUTHOR_NAME)
        self.author_id: str = self.author["id"]
        refs = entity.get("object_marking_refs")
        self.markings = (
            [ref for ref in refs if isinstance(ref, str)] if isinstance(refs, list) else []
        )
        self.objects: dict[str, StixObject] = {}

    def result(self, entity: dict[str, Any], written: int | None) -> EnrichmentResult:
        objects = [obj for key, obj in self.objects.items() if key != entity["id"]]
        ordered = common.make_bundle([entity, self.author, *objects])["objects"]
        return EnrichmentResult(ordered, written, {key: self.stats[key] for key in STAT_KEYS})

    def add(self, obj: StixObject) -> str:
        """Keep the first version of an id; drop an empty marking list (STIX forbids it)."""
        if not obj.get("object_marking_refs"):
            obj.pop("object_marking_refs", None)
        self.objects.setdefault(obj["id"], obj)
        return obj["id"]

    def add_counted(self, obj: StixObject, counter: str) -> str:
        """`add`, counting the object under `counter` when it is new."""
        if obj["id"] not in self.objects:
            self.stats[counter] += 1
        return self.add(obj)

    def relate(
        self, rel_type: str, source: str, target: str, created: str, description: str | None = None
    ) -> None:
        relationship = common.relationship(
            rel_type,
            source,
            target,
            created=created,
            created_by_ref=self.author_id,
            object_marking_refs=self.markings,
            description=description,
        )
        self.add_counted(relationship, "relationships")

    @contextmanager
    def section(self) -> Iterator[None]:
        """One optional part of the mapping: an unexpected failure drops that part only."""
        try:
            yield
        except Exception:  # a bug on hostile data must not sink the entity's enrichment
            self.stats["section_errors"] += 1

    def clean_texts(self, values: Sequence[Any], limit: int, most: int) -> list[str]:
        """Distinct, stripped strings without control/bidi characters and within `limit`;
        anything else is dropped and counted, as is what exceeds `most` values."""
        kept: list[str] = []
        for value in values:
            if value is None:
                continue
            text = value.strip() if isinstance(value, str) else ""
            if not text or len(text) > limit or UNSAFE_TEXT.search(text):
                self.stats["invalid_values"] += 1
                continue
            kept.append(text)
        kept = common.unique(kept)
        if len(kept) > most:
            self.stats["invalid_values"] += len(kept) - most
        return kept[:most]

    def add_reference(
        self, entity: dict[str, Any], reference: StixObject | None, *, extension: str
    ) -> None:
        """The VT GUI page as an external reference, where pycti reads it (the top-level list
        when the entity has one, which wins over the extension's)."""
        if reference is None:
            return
        extend(entity, extension, "external_references", [reference], ("external_references",))


def entity_objects(
    entity_id: str,
    markings: Sequence[str],
    options: EnrichmentMappingOptions,
    *adds: Callable[[Builder], None],
) -> tuple[list[StixObject], dict[str, int]]:
    """What `adds` make for an entity known by its id alone (Livehunt's files), each in its own
    section: the new objects and the author (none when nothing was added; relationships carry
    `markings`), and the counters that moved."""
    builder = Builder(options, {}, {"id": entity_id, "object_marking_refs": list(markings)})
    for add in adds:
        with builder.section():
            add(builder)
    stats = {key: builder.stats[key] for key in STAT_KEYS if builder.stats[key]}
    if not builder.objects:
        return [], stats
    return [builder.author, *builder.objects.values()], stats


# -- helpers shared by the additions ------------------------------------------------------------


def copied_entity(stix_entity: Any) -> dict[str, Any]:
    if not isinstance(stix_entity, dict) or not isinstance(stix_entity.get("id"), str):
        raise ValueError("the entity to enrich must be a STIX object with an id")
    return copy.deepcopy(stix_entity)


def requested_stamp(requested_at: datetime | None) -> str | None:
    """The request time as a STIX timestamp; ValueError when it is naive or unspellable."""
    if requested_at is None:
        return None
    if not isinstance(requested_at, datetime):
        raise ValueError(f"requested_at must be a datetime, not {type(requested_at).__name__}")
    return common.moment_timestamp(requested_at)


def entity_time(entity: Mapping[str, Any]) -> str:
    """A date from the entity for objects VT gives none for (its `modified`/`created`)."""
    for key in ("modified", "created"):
        value = entity.get(key)
        seconds = vt.safe_timestamp(value) if isinstance(value, str) else None
        if seconds is not None:
            try:
                return common.stix_timestamp(seconds)
            except ValueError:
                continue
    return common.FIXED_TIMESTAMP


def timestamp(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    try:
        return common.stix_timestamp(seconds)
    except ValueError:
        return None


def existing_score(entity: Mapping[str, Any]) -> int | None:
    """The entity's current score where pycti reads it (`x_opencti_score`, then the extensions)."""
    candidates = [entity.get("x_opencti_score")]
    extensions = entity.get("extensions")
    if isinstance(extensions, dict):
        for extension in (STIX_EXT_OCTI_SCO, STIX_EXT_OCTI):
            values = extensions.get(extension)
            if isinstance(values, dict):
                candidates.append(values.get("score"))
    for candidate in candidates:
        count = vt.valid_count(candidate)
        if count is not None and count <= 100:
            return count
    return None


def entity_hashes(entity: Mapping[str, Any]) -> dict[str, str]:
    hashes = entity.get("hashes")
    if not isinstance(hashes, dict):
        return {}
    return {str(k): v for k, v in hashes.items() if isinstance(v, str) and v}


def instant(stamp: str) -> datetime:
    """The moment a STIX timestamp of this package spells (they all end in `Z`)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def plus_minutes(stamp: str, minutes: Any) -> str | None:
    """`stamp` + `minutes` (a positive int), milliseconds kept; None when not positive or past
    the year 9999."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        return None
    try:
        return common.moment_timestamp(instant(stamp) + timedelta(minutes=minutes))
    except (ValueError, OverflowError):
        return None


def extension(entity: dict[str, Any], name: str) -> dict[str, Any]:
    """The entity's OpenCTI extension dict (created, or replaced when it is not a dict), where
    pycti's `put_attribute_in_extension` writes."""
    extensions = entity.get("extensions")
    if not isinstance(extensions, dict):
        extensions = entity["extensions"] = {}
    values = extensions.get(name)
    if not isinstance(values, dict):
        values = extensions[name] = {}
    return values


def extend(
    entity: dict[str, Any],
    extension_name: str,
    key: str,
    values: Sequence[Any],
    top_keys: Sequence[str],
) -> None:
    """Add values to a list attribute of the entity in its extension (as pycti's
    `put_attribute_in_extension(..., multiple=True)` does, upstream's way), in its first top-level
    key (`x_opencti_labels`, `external_references`...: what OpenCTI exports and every reader
    knows) and in the other top-level keys it already has. pycti reads some top-level lists
    before the extension and some after: the same union everywhere gives one answer."""
    ext = extension(entity, extension_name)
    existing: list[Any] = []
    for source in [*(entity.get(top) for top in top_keys), ext.get(key)]:
        if isinstance(source, list):
            existing += source
    union = _unique_values([*existing, *values])
    ext[key] = union
    for position, top in enumerate(top_keys):
        if position == 0 or top in entity:
            entity[top] = list(union)


def _unique_values(values: Sequence[Any]) -> list[Any]:
    """Distinct values in first-seen order; dicts compared by their canonical JSON."""
    seen: dict[str, Any] = {}
    for value in values:
        key = json.dumps(value, sort_keys=True, default=str)
        seen.setdefault(key, value)
    return list(seen.values())


def text(value: Any) -> str | None:
    """A scalar as text (numbers, booleans lower-case); None for containers and blanks."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def quote_path(value: str) -> str:
    """A domain or IP as one URL path segment (they never need it; hostile values might)."""
    return quote(value, safe="", errors="replace")
