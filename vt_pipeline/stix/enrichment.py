"""Map a VirusTotal lookup onto the OpenCTI entity it enriches (pure: no I/O, no clock).

Data model of the upstream enrichment connector (shared/reference/upstream-connectors.md), its
bugs fixed:
- The score is VT's GTI threat score when VT sent one, else the detection ratio, and
  `replace_with_lower_score=False` protects the existing score from BOTH (upstream let GTI through).
- Indicators: valid for the configured MINUTES (upstream added days) from the enrichment
  request (see the dates below), patterns escaped, a Hostname gets a `hostname:value` pattern.
- Notes have ids from the subject, the analysis date and the content, so re-enriching the same
  analysis upserts the same notes (upstream's clock-based ids duplicated them); every cell is
  escaped (stix/notes.py).
- Countries are named Locations (upstream: no name); relationships of an Indicator's values start
  at the observable, not the Indicator, and the Indicator gets one score (the highest).
- Knowledge about the entity (its Indicator, notes, relationships) carries the entity's markings:
  what is derived from a TLP:AMBER entity is AMBER. Shared reference objects (Country, Autonomous
  System, resolved IPv4 addresses, public crowdsourced YARA rules) carry none: OpenCTI adds a
  re-sent marking to the existing object, which would restrict it for everyone else.

What VT sends is untrusted: a part that cannot be used (absurd counts, non-objects, control
characters, unknown country, bad DNS record...) is dropped and counted in `stats`, never raised.

Dates. No clock is read here: every date is VT's or the request's, both passed in, so a run
re-executed with the same request rebuilds the same bytes.
- From the request (`requested_at`, when the enrichment was asked): what a user reads as "from
  now". An Indicator's `valid_from` and `modified` (detection Indicators and crowdsourced YARA
  Indicators), and a detection Indicator's `valid_until` = `valid_from` + the configured minutes.
  VT's analysis of a file may be years old; an Indicator valid from it would be born expired, and
  OpenCTI would revoke it and never deploy a detection rule from it. Asking VT again re-confirms
  the verdict: a later request re-sends the same Indicator (its id comes from the pattern alone)
  valid from that request, a new version of one object, not a second Indicator. Its `modified`
  moves forward with the validity because OpenCTI takes a re-sent `modified` only when it is
  later than the stored one (OpenCTI issue 13296; in STIX a version that is not newer is no new
  version); an unchanged `modified` would leave the old validity in place. The request time is
  written to the millisecond (OpenCTI's precision), so close requests stay in order.
- From VT's data: what VT observed, dated when VT observed it. An Indicator's `created` (the
  analysis that gave the verdict; a YARA rule's own date), never after `requested_at`, so it is
  stable across requests of one analysis and never after `modified`; OpenCTI keeps the first
  `created` it was given anyway. Notes (`created`, and their ids, hash VT's analysis date: the
  same analysis enriched again upserts the same notes, a new analysis adds one); relationships
  (`created`/`modified`: the analysis for resolutions, autonomous system, country, YARA
  matches and `based-on`, or the entity's own date when VT gives none; no start/stop time is
  emitted); the analysis date written in the notes.
- Fixed: the author Identity and Country locations (shared, never re-dated).
Without `requested_at` (a caller that has no request time) the Indicators fall back to VT's
dates (valid from the analysis, the YARA rule's date), the behaviour before request times: an
old report then gives an expired Indicator.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from pycti import STIX_EXT_OCTI, STIX_EXT_OCTI_SCO, Location

from vt_pipeline.stix import common, notes
from vt_pipeline.stix.common import StixObject
from vt_pipeline.stix.countries import country_name
from vt_pipeline.stix.yara import YaraParseError, find_rule
from vt_pipeline.virustotal import objects as vt

AUTHOR_NAME = "VirusTotal"
REFERENCE_SOURCE = "VirusTotal"
GUI_ROOT = "https://www.virustotal.com/gui"

# OpenCTI entity type -> STIX type of the observable it names.
SCO_TYPES: dict[str, str] = {
    "StixFile": "file",
    "Artifact": "artifact",
    "IPv4-Addr": "ipv4-addr",
    "Domain-Name": "domain-name",
    "Hostname": "hostname",
    "Url": "url",
}
ENTITY_TYPES = tuple(SCO_TYPES)
_GUI_KIND = {
    "StixFile": "file",
    "Artifact": "file",
    "IPv4-Addr": "ip-address",
    "Domain-Name": "domain",
    "Hostname": "domain",
    "Url": "url",
}
# The option family (`{prefix}_indicator_*`) of each entity type.
_OPTION_PREFIX = {
    "StixFile": "file",
    "Artifact": "file",
    "IPv4-Addr": "ip",
    "Domain-Name": "domain",
    "Hostname": "domain",
    "Url": "url",
}
_HASH_LENGTHS = {32: "MD5", 40: "SHA-1", 64: "SHA-256"}
_HEX = re.compile(r"^[0-9a-fA-F]+$")
# Labels and names: no control, zero-width or bidi characters (a `\u202e` name spoofs its
# extension), no lone surrogate, bounded length.
_UNSAFE_TEXT = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2028\u2029\u2060-\u2069\ufeff"
    "\ud800-\udfff]"  # lone surrogates (JSON may carry them) cannot be written as UTF-8
)
_UNSAFE_SOURCE = re.compile("[\ud800-\udfff]")
LABEL_LIMIT = 100
NAME_LIMIT = 1024
MAX_NAMES = 100
MAX_LABELS = 100
MAX_ENGINES = 500
MAX_CATEGORIES = 100
MAX_RESOLUTIONS = 100
MAX_YARA_RESULTS = 100
# Largest size a file can have (bytes); more is corrupt data.
_MAX_SIZE = 2**53

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


@dataclass(frozen=True)
class EnrichmentResult:
    """The objects to send (the edited entity, the author, the new objects; sorted by id), the
    score written on the entity (None: left unchanged) and counters for run metadata."""

    objects: list[dict[str, Any]]
    score: int | None
    stats: dict[str, int]


def build_enrichment(
    stix_entity: dict[str, Any],
    entity_type: str,
    vt_object: dict[str, Any],
    options: EnrichmentMappingOptions,
    yara_rulesets: Mapping[str, dict[str, Any]] | None = None,
    *,
    requested_at: datetime | None = None,
) -> EnrichmentResult:
    """Enrich one observable (`entity_type` in ENTITY_TYPES; a Hostname is looked up as a VT
    domain) with its raw VT `data` object. `yara_rulesets`: crowdsourced ruleset id -> raw VT
    `data` of `/yara_rulesets/{id}`. `requested_at`: when the enrichment was asked (timezone
    aware); the Indicators are valid from it (module docstring). None only for a caller without
    a request time: the Indicators are then valid from VT's analysis date. The input entity is
    not modified. Raises ValueError only for a caller error (unsupported type, entity without id,
    naive `requested_at`); bad VT data is dropped and counted."""
    if entity_type not in SCO_TYPES:
        raise ValueError(f"cannot enrich entity type {entity_type!r}: not one of {ENTITY_TYPES}")
    requested = _requested(requested_at)
    entity = _copied_entity(stix_entity)
    builder = _Builder(options, yara_rulesets or {}, entity, requested)
    outcome = builder.enrich(entity, entity_type, vt_object, protect_score=True)
    return builder.result(entity, outcome.written)


def build_indicator_enrichment(
    indicator: dict[str, Any],
    lookups: Sequence[tuple[str, str, dict[str, Any] | None]],
    options: EnrichmentMappingOptions,
    yara_rulesets: Mapping[str, dict[str, Any]] | None = None,
    *,
    requested_at: datetime | None = None,
) -> EnrichmentResult:
    """Enrich an Indicator through its observable values: `lookups` holds (OpenCTI observable
    type, value, VT data or None when VT had nothing) per value of `x_opencti_observable_values`.
    `requested_at` as in `build_enrichment` (it dates the crowdsourced YARA Indicators).

    Each value becomes its observable (`based-on` from the Indicator) with VT's knowledge and
    relationships starting at the observable. The Indicator's score is decided once: the highest
    VT score of its values (the most dangerous value decides), then `replace_with_lower_score`.
    No detection Indicator is created per value: the entity already is that Indicator. With
    `replace_with_lower_score=False` the observables are sent without a score, since their
    current score in OpenCTI is unknown here (their notes still carry VT's)."""
    requested = _requested(requested_at)
    entity = _copied_entity(indicator)
    builder = _Builder(options, yara_rulesets or {}, entity, requested)
    scores: list[int] = []
    created = _entity_time(entity)
    for observable_type, value, vt_object in lookups:
        builder.stats["lookups"] += 1
        observable = builder.indicator_observable(observable_type, value)
        if observable is None:
            builder.stats["invalid_observable_values"] += 1
            continue
        if observable["id"] in builder.objects:  # the same value twice: enriched once
            continue
        builder.add(observable)
        builder.stats["observables"] += 1
        if vt_object is None:
            builder.stats["lookups_not_found"] += 1
            builder.relate("based-on", entity["id"], observable["id"], created)
            continue
        outcome = builder.enrich(
            observable,
            observable_type,
            vt_object,
            protect_score=False,
            write_score=options.replace_with_lower_score,
            detection_indicator=False,
            note_refs=[entity["id"]],
        )
        builder.relate("based-on", entity["id"], observable["id"], outcome.analysed_at or created)
        builder.add_reference(entity, outcome.reference, extension=STIX_EXT_OCTI)
        if outcome.vt_score is not None:
            scores.append(outcome.vt_score)
    written = None
    if scores:
        existing = _existing_score(entity)
        written = builder.decide_score(entity, max(scores), STIX_EXT_OCTI, existing).written
    return builder.result(entity, written)


def enrichment_bundle(
    context_objects: Sequence[dict[str, Any]], result_objects: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The bundle to send: the objects OpenCTI exported with the entity (its markings, its
    author; pycti's `stix_objects`) with the entity replaced by its edited version, plus the new
    objects. An object of `result_objects` replaces the context object of the same id."""
    replaced = {str(obj.get("id")) for obj in result_objects}
    kept = [obj for obj in context_objects if str(obj.get("id")) not in replaced]
    return common.make_bundle([*copy.deepcopy(kept), *copy.deepcopy(list(result_objects))])


def playbook_bundle(incoming: dict[str, Any], result_objects: Sequence[dict[str, Any]]) -> dict:
    """The answer to a playbook step (pycti's way): the incoming bundle with the entity replaced
    by its edited version, plus the new objects."""
    return enrichment_bundle(incoming.get("objects") or [], result_objects)


def unchanged_playbook_bundle(incoming: dict[str, Any]) -> dict[str, Any]:
    """The incoming bundle passed through untouched (out-of-scope entity in a playbook)."""
    return copy.deepcopy(incoming)


# -- internals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What enriching one observable gave: VT's own score, the score written, the analysis
    date and the GUI reference."""

    vt_score: int | None = None
    written: int | None = None
    analysed_at: str | None = None
    reference: StixObject | None = None


@dataclass(frozen=True)
class _ScoreDecision:
    written: int | None  # the score set on the entity, None when it keeps its own
    effective: int | None  # the entity's score after the decision
    kept: int | None = None  # the existing score kept instead of VT's lower one


def _copied_entity(stix_entity: Any) -> dict[str, Any]:
    if not isinstance(stix_entity, dict) or not isinstance(stix_entity.get("id"), str):
        raise ValueError("the entity to enrich must be a STIX object with an id")
    return copy.deepcopy(stix_entity)


def _requested(requested_at: datetime | None) -> str | None:
    """The request time as a STIX timestamp; ValueError when it is naive or unspellable."""
    if requested_at is None:
        return None
    if not isinstance(requested_at, datetime):
        raise ValueError(f"requested_at must be a datetime, not {type(requested_at).__name__}")
    return common.moment_timestamp(requested_at)


def _entity_time(entity: Mapping[str, Any]) -> str:
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


def _timestamp(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    try:
        return common.stix_timestamp(seconds)
    except ValueError:
        return None


class _Builder:
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

    # -- result ----------------------------------------------------------------------------

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

    def relate(self, rel_type: str, source: str, target: str, created: str) -> None:
        relationship = common.relationship(
            rel_type,
            source,
            target,
            created=created,
            created_by_ref=self.author_id,
            object_marking_refs=self.markings,
        )
        if relationship["id"] not in self.objects:
            self.stats["relationships"] += 1
        self.add(relationship)

    @contextmanager
    def section(self) -> Iterator[None]:
        """One optional part of the mapping: an unexpected failure drops that part only."""
        try:
            yield
        except Exception:  # a bug on hostile data must not sink the entity's enrichment
            self.stats["section_errors"] += 1

    # -- one observable --------------------------------------------------------------------

    def enrich(
        self,
        entity: dict[str, Any],
        entity_type: str,
        vt_object: Any,
        *,
        protect_score: bool,
        write_score: bool = True,
        detection_indicator: bool = True,
        note_refs: Sequence[str] = (),
    ) -> _Outcome:
        """Edit `entity` in place with VT's knowledge and add the new objects around it."""
        if not isinstance(vt_object, dict) or not isinstance(vt_object.get("attributes"), dict):
            self.stats["invalid_vt_object"] += 1
            return _Outcome()
        self.count_bad_stats(vt_object)
        analysed_at = _timestamp(vt.analysis_timestamp(vt_object))
        created = analysed_at or _entity_time(entity)
        subject = self.subject(entity, entity_type, vt_object)
        reference = common.external_reference(
            REFERENCE_SOURCE, self.gui_url(entity_type, subject, vt_object), "VirusTotal report"
        )
        vt_score = vt.gti_threat_score(vt_object)
        score_kind = "GTI threat score"
        if vt_score is None:
            vt_score = vt.vt_score(vt.analysis_counts(vt_object))
            score_kind = "detection ratio"
        decision = _ScoreDecision(None, None)
        if vt_score is None:
            self.stats["no_score"] += 1
        elif write_score:
            existing = _existing_score(entity) if protect_score else None
            decision = self.decide_score(entity, vt_score, STIX_EXT_OCTI_SCO, existing)

        self.add_reference(entity, reference, extension=STIX_EXT_OCTI_SCO)
        if entity_type in ("StixFile", "Artifact"):
            with self.section():
                self.update_file(entity, entity_type, vt_object)
        indicator_score = decision.effective if decision.effective is not None else vt_score
        if detection_indicator:
            with self.section():
                self.add_detection_indicator(
                    entity,
                    entity_type,
                    subject,
                    vt_object,
                    analysed_at,
                    indicator_score,
                    reference,
                )
        if entity_type in ("StixFile", "Artifact") and self.options.file_import_yara:
            with self.section():
                self.add_yara_indicators(entity["id"], vt_object, created)
        if entity_type == "IPv4-Addr" and self.options.ip_add_relationships:
            with self.section():
                self.add_ip_relationships(entity["id"], vt_object, created)
        if entity_type in ("Domain-Name", "Hostname") and self.options.domain_add_relationships:
            with self.section():
                self.add_resolutions(entity["id"], vt_object, created)
        with self.section():
            self.add_notes(
                entity,
                entity_type,
                subject,
                vt_object,
                created,
                [entity["id"], *note_refs],
                vt_score,
                score_kind,
                decision,
            )
        return _Outcome(vt_score, decision.written, analysed_at, reference)

    def subject(self, entity: Mapping[str, Any], entity_type: str, vt_object: dict) -> str:
        """What the entity is on VT: a file's SHA-256 (else its best hash), the value otherwise."""
        if entity_type in ("StixFile", "Artifact"):
            hashes = {**_entity_hashes(entity), **vt.file_hashes(vt_object)}
            best = next((hashes[k] for k in ("SHA-256", "SHA-1", "MD5") if k in hashes), None)
            return best or str(vt_object.get("id") or entity["id"])
        value = entity.get("value")
        return value if isinstance(value, str) and value else str(vt_object.get("id") or "")

    def gui_url(self, entity_type: str, subject: str, vt_object: dict) -> str:
        kind = _GUI_KIND[entity_type]
        if kind == "url":
            return f"{GUI_ROOT}/url/{vt.url_object_id(subject, vt_object)}"
        return f"{GUI_ROOT}/{kind}/{_quote_path(subject)}"

    def count_bad_stats(self, vt_object: dict) -> None:
        raw = vt.attributes(vt_object).get("last_analysis_stats")
        if raw is not None and not isinstance(raw, dict):
            self.stats["invalid_values"] += 1
        elif isinstance(raw, dict):  # counts left out as not sane (NaN, negative, absurd...)
            self.stats["invalid_values"] += len(raw) - len(vt.analysis_counts(vt_object))

    # -- score -------------------------------------------------------------------------------

    def decide_score(
        self, entity: dict[str, Any], vt_score: int, extension: str, existing: int | None
    ) -> _ScoreDecision:
        """Write VT's score on the entity unless `replace_with_lower_score=False` and the existing
        one is higher (whatever kind VT's score is: GTI or ratio)."""
        lower = existing is not None and vt_score < existing
        if lower and not self.options.replace_with_lower_score:
            self.stats["score_kept"] += 1
            return _ScoreDecision(None, existing, existing)
        _extension(entity, extension)["score"] = vt_score  # where OpenCTI's export puts it
        entity["x_opencti_score"] = vt_score  # what pycti reads first
        return _ScoreDecision(vt_score, vt_score)

    # -- the entity's own properties ---------------------------------------------------------

    def add_reference(
        self, entity: dict[str, Any], reference: StixObject | None, *, extension: str
    ) -> None:
        """The VT GUI page as an external reference, where pycti reads it (the top-level list
        when the entity has one, which wins over the extension's)."""
        if reference is None:
            return
        _extend(entity, extension, "external_references", [reference], ("external_references",))

    def update_file(self, entity: dict[str, Any], entity_type: str, vt_object: dict) -> None:
        """Hashes, size, names and labels (VT tags) of a StixFile / Artifact."""
        attrs = vt.attributes(vt_object)
        hashes = _entity_hashes(entity)
        for algorithm, value in vt.file_hashes(vt_object).items():
            current = hashes.get(algorithm)
            if current is None:
                hashes[algorithm] = value
            elif current.lower() != value:
                self.stats["hash_conflicts"] += 1
        if hashes:
            entity["hashes"] = hashes
        size = attrs.get("size")
        if entity_type == "StixFile" and size is not None:
            if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= _MAX_SIZE:
                entity["size"] = size
            else:
                self.stats["invalid_values"] += 1

        names = self.clean_texts(
            [attrs.get("meaningful_name"), *_list(attrs.get("names"))], NAME_LIMIT, MAX_NAMES
        )
        if entity_type == "StixFile" and names and not entity.get("name"):
            entity["name"] = names[0]
        others = [name for name in names if name != entity.get("name")]
        if others:
            _extend(
                entity,
                STIX_EXT_OCTI_SCO,
                "additional_names",
                others,
                ("x_opencti_additional_names",),
            )
        labels = self.clean_texts(_list(attrs.get("tags")), LABEL_LIMIT, MAX_LABELS)
        if labels:
            _extend(entity, STIX_EXT_OCTI_SCO, "labels", labels, ("x_opencti_labels", "labels"))

    def clean_texts(self, values: Sequence[Any], limit: int, most: int) -> list[str]:
        """Distinct, stripped strings without control/bidi characters and within `limit`;
        anything else is dropped and counted, as is what exceeds `most` values."""
        kept: list[str] = []
        for value in values:
            if value is None:
                continue
            text = value.strip() if isinstance(value, str) else ""
            if not text or len(text) > limit or _UNSAFE_TEXT.search(text):
                self.stats["invalid_values"] += 1
                continue
            kept.append(text)
        kept = common.unique(kept)
        if len(kept) > most:
            self.stats["invalid_values"] += len(kept) - most
        return kept[:most]

    # -- indicators --------------------------------------------------------------------------

    def add_detection_indicator(
        self,
        entity: dict[str, Any],
        entity_type: str,
        subject: str,
        vt_object: dict,
        analysed_at: str | None,
        score: int | None,
        reference: StixObject,
    ) -> None:
        """An Indicator on the value when VT's malicious count reaches the configured threshold
        (> 0), valid for the configured minutes from the request (else from VT's analysis date),
        `based-on` the entity. Dates: module docstring."""
        prefix = _OPTION_PREFIX[entity_type]
        threshold = getattr(self.options, f"{prefix}_indicator_create_positives")
        malicious = vt.analysis_counts(vt_object).get("malicious")
        if not (threshold > 0 and malicious is not None and malicious >= threshold):
            return
        dates = self.indicator_dates(analysed_at)
        if dates is None:
            self.stats["invalid_values"] += 1  # neither request nor analysis date: no validity
            return
        created, valid_from = dates
        pattern, main_type = _pattern(entity_type, subject, _entity_hashes(entity))
        if pattern is None:
            self.stats["invalid_values"] += 1
            return
        indicator = common.indicator(
            pattern,
            pattern_type="stix",
            name=subject,
            description=(
                f"{malicious} VirusTotal engines flag this {main_type} as malicious "
                f"(threshold {threshold})."
            ),
            valid_from=valid_from,
            created=created,
            modified=valid_from,
            created_by_ref=self.author_id,
            object_marking_refs=self.markings,
            main_observable_type=main_type,
        )
        minutes = getattr(self.options, f"{prefix}_indicator_valid_minutes")
        valid_until = _plus_minutes(valid_from, minutes)
        if valid_until is not None:
            indicator["valid_until"] = valid_until
        indicator["x_opencti_detection"] = bool(getattr(self.options, f"{prefix}_indicator_detect"))
        if score is not None:
            indicator["x_opencti_score"] = score
        indicator["external_references"] = [reference]
        if indicator["id"] == entity["id"]:
            return
        if indicator["id"] not in self.objects:
            self.stats["indicators"] += 1
        self.add(indicator)
        self.relate("based-on", indicator["id"], entity["id"], created)

    def indicator_dates(self, vt_date: str | None) -> tuple[str, str] | None:
        """(`created`, `valid_from`) of an Indicator whose evidence VT dated `vt_date`: valid
        from the request, created at VT's date but never after the request (a file uploaded
        on request is analysed after it); without a request, both VT's date. `modified` is
        `valid_from`. None when there is neither date."""
        if self.requested is None:
            return None if vt_date is None else (vt_date, vt_date)
        if vt_date is None:
            return self.requested, self.requested
        return min(vt_date, self.requested, key=_instant), self.requested

    def add_yara_indicators(self, file_id: str, vt_object: dict, created: str) -> None:
        """One YARA Indicator per crowdsourced YARA result whose rule is found in its fetched
        ruleset (the rule alone, rebuilt like stix/yara.py does), `related-to` from the file."""
        results = vt.crowdsourced_yara_results(vt_object)
        raw = vt.attributes(vt_object).get("crowdsourced_yara_results")
        if isinstance(raw, list):
            self.stats["invalid_values"] += len(raw) - len(results)
        if len(results) > MAX_YARA_RESULTS:
            self.stats["invalid_values"] += len(results) - MAX_YARA_RESULTS
        for result in results[:MAX_YARA_RESULTS]:
            indicator = self.yara_indicator(result, created)
            if indicator is None:
                continue
            if indicator["id"] not in self.objects:
                self.stats["yara_indicators"] += 1
            self.add(indicator)
            self.relate("related-to", file_id, indicator["id"], created)

    def yara_indicator(self, result: Mapping[str, Any], created: str) -> StixObject | None:
        ruleset_id, rule_name = result.get("ruleset_id"), result.get("rule_name")
        if not isinstance(ruleset_id, str) or not isinstance(rule_name, str) or not rule_name:
            self.stats["invalid_values"] += 1
            return None
        ruleset = self.yara_rulesets.get(ruleset_id)
        if not isinstance(ruleset, dict):
            self.stats["yara_ruleset_missing"] += 1
            return None
        attrs = ruleset.get("attributes")
        if not isinstance(attrs, dict):
            self.stats["yara_parse_error"] += 1  # a ruleset without readable rules
            return None
        try:
            rule = find_rule(attrs.get("rules"), rule_name)
        except YaraParseError:
            self.stats["yara_parse_error"] += 1
            return None
        if rule is None:
            self.stats["yara_rule_missing"] += 1
            return None
        if _UNSAFE_SOURCE.search(rule.source):
            self.stats["invalid_values"] += 1  # not writable as UTF-8 (lone surrogate)
            return None
        rule_date = (
            _timestamp(rule.date)
            or _timestamp(vt.safe_timestamp(attrs.get("creation_date")))
            or created
        )
        # VT still runs the rule: valid from the request, created at the rule's own date
        rule_created, valid_from = self.indicator_dates(rule_date) or (rule_date, rule_date)
        ruleset_name = _text(result.get("ruleset_name")) or _text(attrs.get("name"))
        author = _text(result.get("author")) or _text(attrs.get("author"))
        source = _text(result.get("source")) or _text(attrs.get("source"))
        lines = [
            notes.escape_cell(
                rule.description or _text(result.get("description")) or f"YARA rule {rule.name}.",
                notes.SUBJECT_LIMIT,
            ),
            "",
            f"- Ruleset: {notes.escape_cell(ruleset_name)} ({notes.escape_cell(ruleset_id)})",
            f"- Author: {notes.escape_cell(author)}",
            f"- Source: {notes.escape_cell(source)}",
        ]
        return common.indicator(
            rule.source,
            pattern_type="yara",
            name=rule.name,
            description="\n".join(lines),
            valid_from=valid_from,
            created=rule_created,
            modified=valid_from,
            created_by_ref=self.author_id,
            object_marking_refs=(),
            main_observable_type="StixFile",
        )

    # -- relationships -----------------------------------------------------------------------

    def add_ip_relationships(self, ip_id: str, vt_object: dict, created: str) -> None:
        """The IP `belongs-to` its Autonomous System and is `located-at` its named Country."""
        attrs = vt.attributes(vt_object)
        number = vt.autonomous_system_number(vt_object)
        if number is None:
            if attrs.get("asn") is not None:
                self.stats["invalid_values"] += 1
        else:
            system: StixObject = {
                "type": "autonomous-system",
                "spec_version": "2.1",
                "id": common.sco_id("autonomous-system", {"number": number}),
                "number": number,
            }
            for key, source in (("name", "as_owner"), ("rir", "regional_internet_registry")):
                value = self.clean_texts([attrs.get(source)], NAME_LIMIT, 1)
                if value:
                    system[key] = value[0]
            common.add_observable_extras(
                system, created_by_ref=self.author_id, object_marking_refs=()
            )
            if system["id"] not in self.objects:
                self.stats["observables"] += 1
            self.add(system)
            self.relate("belongs-to", ip_id, system["id"], created)

        code = vt.country_code(vt_object)
        name = country_name(code) if code else None
        if name is None:
            if attrs.get("country") not in (None, ""):
                self.stats["invalid_values"] += 1
            return
        location: StixObject = {
            "type": "location",
            "spec_version": "2.1",
            "id": Location.generate_id(name, "Country"),
            "created": common.FIXED_TIMESTAMP,
            "modified": common.FIXED_TIMESTAMP,
            "name": name,
            "country": code,
            "x_opencti_location_type": "Country",
            "created_by_ref": self.author_id,
        }
        if location["id"] not in self.objects:
            self.stats["locations"] += 1
        self.add(location)
        self.relate("located-at", ip_id, location["id"], created)

    def add_resolutions(self, domain_id: str, vt_object: dict, created: str) -> None:
        """Each A record of the domain as an IPv4-Addr the domain (or hostname) `resolves-to`."""
        addresses, invalid = vt.dns_a_records(vt_object)
        self.stats["invalid_values"] += invalid + max(0, len(addresses) - MAX_RESOLUTIONS)
        for address in addresses[:MAX_RESOLUTIONS]:
            observable = common.value_observable(
                "ipv4-addr",
                address,
                created_by_ref=self.author_id,
                object_marking_refs=(),
            )
            if observable["id"] not in self.objects:
                self.stats["observables"] += 1
            self.add(observable)
            self.relate("resolves-to", domain_id, observable["id"], created)

    # -- notes -------------------------------------------------------------------------------

    def add_notes(
        self,
        entity: Mapping[str, Any],
        entity_type: str,
        subject: str,
        vt_object: dict,
        created: str,
        refs: Sequence[str],
        vt_score: int | None,
        score_kind: str,
        decision: _ScoreDecision,
    ) -> None:
        """The analysis report (files: when `file_create_note_full_report`), and a note of VT's
        score when a higher existing score was kept."""
        is_file = entity_type in ("StixFile", "Artifact")
        date = created.replace(".000Z", "Z")
        header = [
            f"VirusTotal analysis of the {entity_type} "
            f"{notes.escape_cell(subject, notes.SUBJECT_LIMIT)}, dated {date}.",
        ]
        if vt_score is not None:
            header.append(f"VirusTotal score: {vt_score} ({score_kind}).")
        if not is_file or self.options.file_create_note_full_report:
            content = self.report(entity_type, header, vt_object)
            title = "VirusTotal full report" if is_file else "VirusTotal results"
            self.add_note(content, title, refs, created)
        if decision.kept is not None and vt_score is not None:
            content = notes.report(
                "VirusTotal score",
                [
                    *header,
                    f"The existing score {decision.kept} was kept: it is higher and "
                    "VIRUSTOTAL_REPLACE_WITH_LOWER_SCORE is false.",
                ],
                [],
            )
            self.add_note(content, "VirusTotal score", refs, created)

    def add_note(self, content: str, abstract: str, refs: Sequence[str], created: str) -> None:
        note = common.note(
            content,
            abstract=abstract,
            object_refs=refs,
            created=created,
            created_by_ref=self.author_id,
            object_marking_refs=self.markings,
            created_in_id=True,
        )
        if note["id"] not in self.objects:
            self.stats["notes"] += 1
        self.add(note)

    def report(self, entity_type: str, header: list[str], vt_object: dict) -> str:
        is_file = entity_type in ("StixFile", "Artifact")
        stats = vt.analysis_counts(vt_object)
        columns = notes.FILE_STATS_COLUMNS if is_file else notes.NETWORK_STATS_COLUMNS
        engine_columns = notes.FILE_ENGINE_COLUMNS if is_file else notes.NETWORK_ENGINE_COLUMNS
        sections = [
            ("Last analysis stats", notes.stats_table(stats, columns)),
            ("Last analysis results", self.engine_table(vt_object, engine_columns, is_file)),
        ]
        if not is_file:
            sections.append(("Categories", self.categories_table(vt_object)))
        if self.options.include_attributes_in_note:
            sections.append(("Attributes", self.attributes_table(entity_type, vt_object)))
        return notes.report(
            "VirusTotal full report" if is_file else "VirusTotal results", header, sections
        )

    def engine_table(self, vt_object: dict, columns: Sequence[str], is_file: bool) -> str:
        raw = vt.attributes(vt_object).get("last_analysis_results")
        results = vt.analysis_results(vt_object)
        if isinstance(raw, dict):
            self.stats["invalid_values"] += len(raw) - len(results)
        rows = []
        for name in sorted(results, key=lambda key: (key.casefold(), key)):
            result = results[name]
            engine = self.cell(result.get("engine_name")) or self.cell(name)
            cells = [engine]
            if is_file:
                cells.append(self.cell(result.get("engine_version")))
            cells += [
                self.cell(result.get("method")),
                self.cell(result.get("category")),
                self.cell(result.get("result")),
            ]
            rows.append(cells)
        if not rows:
            return ""
        body = notes.table(columns, rows[:MAX_ENGINES])
        if len(rows) > MAX_ENGINES:
            self.stats["invalid_values"] += len(rows) - MAX_ENGINES
            body += f"\n\n{len(rows) - MAX_ENGINES} more engines not shown."
        return body

    def categories_table(self, vt_object: dict) -> str:
        categories = vt.attributes(vt_object).get("categories")
        if not isinstance(categories, dict):
            if categories is not None:
                self.stats["invalid_values"] += 1
            return ""
        rows = [
            [self.cell(vendor), self.cell(category)]
            for vendor, category in sorted(categories.items(), key=lambda item: str(item[0]))
        ]
        if len(rows) > MAX_CATEGORIES:
            self.stats["invalid_values"] += len(rows) - MAX_CATEGORIES
        return notes.table(("Vendor", "Category"), rows[:MAX_CATEGORIES]) if rows else ""

    def attributes_table(self, entity_type: str, vt_object: dict) -> str:
        """The VT attributes upstream's `include_attributes_in_note` shows, per entity type."""
        attrs = vt.attributes(vt_object)
        threat = attrs.get("popular_threat_classification")
        signature = attrs.get("signature_info")
        date = self.date_cell
        rows: list[tuple[str, str | None]]
        if entity_type in ("StixFile", "Artifact"):
            rows = [
                ("File type", self.cell(attrs.get("type_description"))),
                ("Type tags", self.join_cell(attrs.get("type_tags"))),
                ("First submission", date(attrs.get("first_submission_date"))),
                ("Last submission", date(attrs.get("last_submission_date"))),
                (
                    "Popular threat label",
                    self.cell(threat.get("suggested_threat_label"))
                    if isinstance(threat, dict)
                    else None,
                ),
                (
                    "Signature verification",
                    self.cell(signature.get("verified")) if isinstance(signature, dict) else None,
                ),
                ("Names", self.join_cell(attrs.get("names"))),
            ]
        elif entity_type == "IPv4-Addr":
            rows = [
                ("Country", self.cell(attrs.get("country"))),
                ("Autonomous system", self.cell(attrs.get("asn"))),
                ("Autonomous system label", self.cell(attrs.get("as_owner"))),
                ("Network", self.cell(attrs.get("network"))),
            ]
        elif entity_type == "Url":
            rows = [
                ("Final URL", self.cell(attrs.get("last_final_url"))),
                ("Title", self.cell(attrs.get("title"))),
                ("Last HTTP response code", self.cell(attrs.get("last_http_response_code"))),
                ("Last analysis date", date(attrs.get("last_analysis_date"))),
            ]
        else:
            rows = [
                ("Registrar", self.cell(attrs.get("registrar"))),
                ("Creation date", date(attrs.get("creation_date"))),
                ("Last analysis date", date(attrs.get("last_analysis_date"))),
            ]
        rows.append(("Reputation", self.cell(attrs.get("reputation"))))
        return notes.table(("Attribute", "Value"), rows)

    def cell(self, value: Any) -> str | None:
        """Text of a scalar VT value for a table cell; other values are dropped and counted."""
        if value is None:
            return None
        text = _text(value)
        if text is None:
            self.stats["invalid_values"] += 1
        return text

    def join_cell(self, values: Any) -> str | None:
        texts = [text for value in _list(values) if (text := self.cell(value))]
        return ", ".join(texts[:MAX_NAMES]) or None

    def date_cell(self, value: Any) -> str | None:
        stamp = _timestamp(vt.safe_timestamp(value))
        if stamp is None and value is not None:
            self.stats["invalid_values"] += 1
        return stamp.replace(".000Z", "Z") if stamp else None

    # -- an Indicator's values ---------------------------------------------------------------

    def indicator_observable(self, observable_type: Any, value: Any) -> StixObject | None:
        """The observable of one of an Indicator's values, or None when it is unusable."""
        if observable_type not in SCO_TYPES or not isinstance(value, str):
            return None
        value = value.strip()
        if not value or _UNSAFE_TEXT.search(value):
            return None
        sco_type = SCO_TYPES[observable_type]
        extras = {"created_by_ref": self.author_id, "object_marking_refs": self.markings}
        if sco_type in ("file", "artifact"):
            algorithm = _HASH_LENGTHS.get(len(value))
            if algorithm is None or not _HEX.match(value):
                return None
            hashes = {algorithm: value.lower()}
            obj: StixObject = {
                "type": sco_type,
                "spec_version": "2.1",
                "id": common.sco_id(sco_type, {"hashes": hashes}),
                "hashes": hashes,
            }
            if sco_type == "artifact":
                obj["url"] = f"{GUI_ROOT}/file/{value.lower()}"
            return common.add_observable_extras(obj, **extras)
        if not _valid_value(observable_type, value):
            return None
        return common.value_observable(sco_type, value, **extras)


def _valid_value(observable_type: str, value: str) -> bool:
    if observable_type == "IPv4-Addr":
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            return False
        return True
    if observable_type == "Url":
        return vt.is_valid_url(value)
    return len(value) <= 253 and " " not in value


def _existing_score(entity: Mapping[str, Any]) -> int | None:
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


def _entity_hashes(entity: Mapping[str, Any]) -> dict[str, str]:
    hashes = entity.get("hashes")
    if not isinstance(hashes, dict):
        return {}
    return {str(k): v for k, v in hashes.items() if isinstance(v, str) and v}


def _pattern(entity_type: str, subject: str, hashes: Mapping[str, str]) -> tuple[str | None, str]:
    """STIX pattern and OpenCTI main observable type of a detection Indicator."""
    if entity_type in ("StixFile", "Artifact"):
        for algorithm in ("SHA-256", "SHA-1", "MD5"):
            value = hashes.get(algorithm) or (
                subject if _HASH_LENGTHS.get(len(subject)) == algorithm else None
            )
            if value and _HEX.match(value):
                return f"[file:hashes.'{algorithm}' = '{value.lower()}']", "StixFile"
        return None, "StixFile"
    if not subject:
        return None, entity_type
    return common.value_pattern(SCO_TYPES[entity_type], subject), entity_type


def _instant(stamp: str) -> datetime:
    """The moment a STIX timestamp of this module spells (they all end in `Z`)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _plus_minutes(stamp: str, minutes: Any) -> str | None:
    """`stamp` + `minutes` (a positive int), milliseconds kept; None when not positive or past
    the year 9999."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        return None
    try:
        return common.moment_timestamp(_instant(stamp) + timedelta(minutes=minutes))
    except (ValueError, OverflowError):
        return None


def _extension(entity: dict[str, Any], extension: str) -> dict[str, Any]:
    """The entity's OpenCTI extension dict (created, or replaced when it is not a dict), where
    pycti's `put_attribute_in_extension` writes."""
    extensions = entity.get("extensions")
    if not isinstance(extensions, dict):
        extensions = entity["extensions"] = {}
    values = extensions.get(extension)
    if not isinstance(values, dict):
        values = extensions[extension] = {}
    return values


def _extend(
    entity: dict[str, Any],
    extension: str,
    key: str,
    values: Sequence[Any],
    top_keys: Sequence[str],
) -> None:
    """Add values to a list attribute of the entity in its extension (as pycti's
    `put_attribute_in_extension(..., multiple=True)` does, upstream's way), in its first top-level
    key (`x_opencti_labels`, `external_references`...: what OpenCTI exports and every reader
    knows) and in the other top-level keys it already has. pycti reads some top-level lists
    before the extension and some after: the same union everywhere gives one answer."""
    ext = _extension(entity, extension)
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


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str | None:
    """A scalar as text (numbers, booleans lower-case); None for containers and blanks."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def _quote_path(value: str) -> str:
    """A domain or IP as one URL path segment (they never need it; hostile values might)."""
    return quote(value, safe="", errors="replace")
