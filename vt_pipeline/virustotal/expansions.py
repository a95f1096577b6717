"""What an enrichment adds beyond the base lookup, read once into typed values (pure: no I/O).

Free with the file lookup (read from its attributes): the popular threat classification
(family names with the engines agreeing), crowdsourced Sigma matches (`sigma_analysis_results`)
and crowdsourced IDS alerts (`crowdsourced_ids_results`, the rule's text in `rule_raw`).
Fetched by `expansion_fetch.py` (one call each, only when asked): the ATT&CK techniques of
VT's sandboxes, the Sigma rules matched, the newest community comments and GTI's threat
objects. The mapping (`stix/enrichment/`) reads these values from `Report.expansions`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vt_pipeline.virustotal import objects as vt

COLLECTIONS = {"file": "files", "url": "urls", "domain": "domains", "ip_address": "ip_addresses"}
THREAT_KINDS = ("threat-actor", "malware-family", "campaign", "report")
MAX_FAMILIES = 20
MAX_SIGMA = 50
MAX_IDS = 50
MAX_TECHNIQUES = 200
MAX_SIGMA_RULES = 20  # rules fetched per file at most (quota), the most severe first
_MITRE_ID = re.compile(r"^T\d{4}(\.\d{3})?$")
_SIGMA_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SEVERITY = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


@dataclass(frozen=True)
class FamilyVote:
    """A family name of VT's popular threat classification and how many engines gave it."""

    name: str
    count: int


@dataclass(frozen=True)
class SigmaMatch:
    rule_id: str
    title: Any = None
    level: Any = None
    source: Any = None
    author: Any = None
    description: Any = None


@dataclass(frozen=True)
class SigmaRule:
    """A crowdsourced Sigma rule as `/sigma_rules/{id}` describes it (the parts of its YAML)."""

    rule_id: str
    attributes: Mapping[str, Any]


@dataclass(frozen=True)
class IdsMatch:
    rule_id: str
    message: Any = None
    category: Any = None
    severity: Any = None
    source: Any = None
    url: Any = None
    raw: str | None = None  # the rule's text (`rule_raw`), when VT gives it


@dataclass(frozen=True)
class Technique:
    """An ATT&CK technique VT's sandboxes saw, and in which sandboxes."""

    mitre_id: str  # T1059 or T1059.001
    name: str
    sandboxes: tuple[str, ...]


@dataclass(frozen=True)
class Comment:
    comment_id: str
    date: int | None
    text: str
    tags: tuple[str, ...] = ()
    positive: int | None = None
    negative: int | None = None


@dataclass(frozen=True)
class ThreatObject:
    """A GTI threat object (a `collection`): threat actor, malware family, campaign, report."""

    kind: str  # one of THREAT_KINDS
    collection_id: str
    name: str
    description: Any = None
    created: int | None = None
    modified: int | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Expansions:
    """Everything the expansions read for one looked-up object. A fetched expansion that failed
    is None with its reason in `errors`; one not asked for is None without a reason."""

    threat_label: str | None = None
    families: tuple[FamilyVote, ...] = ()
    sigma: tuple[SigmaMatch, ...] = ()
    ids: tuple[IdsMatch, ...] = ()
    sigma_rules: Mapping[str, SigmaRule] = field(default_factory=dict)
    techniques: tuple[Technique, ...] | None = None
    comments: tuple[Comment, ...] | None = None
    threat_objects: tuple[ThreatObject, ...] | None = None
    gti_licensed: bool = False  # the lookup carried a gti_assessment
    gti_associated: bool = False  # ...whose contributing factors name a Mandiant association
    invalid: int = 0  # entries dropped as unusable
    errors: tuple[tuple[str, str], ...] = ()  # (expansion, reason)
    cache_hits: int = 0


@dataclass(frozen=True)
class ExpansionOptions:
    """Which expansions to fetch (the free ones are always read)."""

    attack_patterns: bool = False
    sigma_rules: bool = False
    comments_limit: int = 0  # 0: no comments
    gti_limit: int = 0  # 0: no GTI context

    @property
    def any(self) -> bool:
        return (
            self.attack_patterns or self.sigma_rules or bool(self.comments_limit + self.gti_limit)
        )


# -- readers (pure) -----------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def read_attributes(vt_object: Mapping[str, Any]) -> tuple[Expansions, int]:
    """The expansions a file lookup carries itself, and how many entries were unusable."""
    attrs = vt.attributes(dict(vt_object))
    invalid = 0
    threat = attrs.get("popular_threat_classification")
    threat = threat if isinstance(threat, dict) else {}
    families: list[FamilyVote] = []
    for entry in _items(threat.get("popular_threat_name")):
        name, count = _text(entry.get("value")), vt.valid_count(entry.get("count"))
        if name is None or count is None:
            invalid += 1
            continue
        families.append(FamilyVote(name, count))
    families.sort(key=lambda vote: (-vote.count, vote.name.lower()))
    sigma: list[SigmaMatch] = []
    for entry in _items(attrs.get("sigma_analysis_results")):
        rule_id = _text(entry.get("rule_id"))
        if rule_id is None:
            invalid += 1
            continue
        sigma.append(
            SigmaMatch(
                rule_id,
                entry.get("rule_title"),
                entry.get("rule_level"),
                entry.get("rule_source"),
                entry.get("rule_author"),
                entry.get("rule_description"),
            )
        )
    ids: list[IdsMatch] = []
    for entry in _items(attrs.get("crowdsourced_ids_results")):
        rule_id = _text(entry.get("rule_id"))
        if rule_id is None:
            invalid += 1
            continue
        ids.append(
            IdsMatch(
                rule_id,
                entry.get("rule_msg"),
                entry.get("rule_category"),
                entry.get("alert_severity"),
                entry.get("rule_source"),
                entry.get("rule_url"),
                _text(entry.get("rule_raw")),
            )
        )
    for raw in (
        threat.get("popular_threat_name"),
        attrs.get("sigma_analysis_results"),
        attrs.get("crowdsourced_ids_results"),
    ):
        if raw is not None and not isinstance(raw, list):
            invalid += 1
        elif isinstance(raw, list):
            invalid += sum(not isinstance(entry, dict) for entry in raw)
    invalid += max(0, len(families) - MAX_FAMILIES) + max(0, len(sigma) - MAX_SIGMA)
    invalid += max(0, len(ids) - MAX_IDS)
    expansions = Expansions(
        threat_label=_text(threat.get("suggested_threat_label")),
        families=tuple(families[:MAX_FAMILIES]),
        sigma=tuple(sigma[:MAX_SIGMA]),
        ids=tuple(ids[:MAX_IDS]),
        gti_licensed=isinstance(attrs.get("gti_assessment"), dict),
        gti_associated=gti_associated(attrs),
    )
    return expansions, invalid


def gti_associated(attrs: Mapping[str, Any]) -> bool:
    """Whether GTI's assessment says the object is tied to threat objects: a true
    `contributing_factors.mandiant_association_*` (actor, malware, report), as real assessments
    carry them (XSOAR's GTI test data). Only then are its associations worth a call."""
    assessment = attrs.get("gti_assessment")
    factors = assessment.get("contributing_factors") if isinstance(assessment, dict) else None
    if not isinstance(factors, dict):
        return False
    return any(k.startswith("mandiant_association") and v is True for k, v in factors.items())


def read_mitre_trees(body: Mapping[str, Any]) -> tuple[tuple[Technique, ...], int]:
    """The distinct techniques of `/files/{id}/behaviour_mitre_trees`, by ATT&CK id, with the
    sandboxes that saw each (a technique under several tactics counts once)."""
    data = body.get("data")
    if not isinstance(data, dict):
        raise ValueError("behaviour_mitre_trees without a data object")
    found: dict[str, tuple[str, list[str]]] = {}
    invalid = 0
    for sandbox, tree in sorted(data.items(), key=lambda item: str(item[0])):
        if not isinstance(tree, dict):
            invalid += tree is not None  # a sandbox may be null: nothing to read
            continue
        for tactic in _items(tree.get("tactics")):
            for technique in _items(tactic.get("techniques")):
                mitre_id = str(technique.get("id") or "").strip().upper()
                name = _text(technique.get("name"))
                if not _MITRE_ID.match(mitre_id) or name is None:
                    invalid += 1
                    continue
                entry = found.setdefault(mitre_id, (name, []))
                if str(sandbox) not in entry[1]:
                    entry[1].append(str(sandbox))
    techniques = tuple(
        Technique(mitre_id, name, tuple(sandboxes))
        for mitre_id, (name, sandboxes) in sorted(found.items())
    )
    return techniques[:MAX_TECHNIQUES], invalid + max(0, len(techniques) - MAX_TECHNIQUES)


def read_comments(body: Mapping[str, Any], limit: int) -> tuple[tuple[Comment, ...], int]:
    """Comments, newest first, at most `limit`."""
    comments: list[Comment] = []
    invalid = 0
    for item in _data_list(body):
        attrs = vt.attributes(item)
        text = attrs.get("text")
        if not isinstance(text, str) or not text.strip() or not isinstance(item.get("id"), str):
            invalid += 1
            continue
        votes = attrs.get("votes") if isinstance(attrs.get("votes"), dict) else {}
        tags = tuple(t for t in _list(attrs.get("tags")) if isinstance(t, str))
        comments.append(
            Comment(
                item["id"],
                vt.safe_timestamp(attrs.get("date")),
                text,
                tags,
                vt.valid_count(votes.get("positive")),
                vt.valid_count(votes.get("negative")),
            )
        )
    comments.sort(key=lambda c: (-(c.date or 0), c.comment_id))
    return tuple(comments[:limit]), invalid


def read_associations(body: Mapping[str, Any]) -> tuple[tuple[ThreatObject, ...], int]:
    """GTI threat objects of the kinds OpenCTI gets (other collection types are skipped)."""
    found: list[ThreatObject] = []
    invalid = 0
    for item in _data_list(body):
        attrs = vt.attributes(item)
        kind = attrs.get("collection_type")
        name = _text(attrs.get("name"))
        collection_id = item.get("id")
        if kind not in THREAT_KINDS:
            invalid += kind is None
            continue
        if name is None or not isinstance(collection_id, str):
            invalid += 1
            continue
        aliases = tuple(a.strip() for a in _list(attrs.get("alt_names")) if _text(a))
        found.append(
            ThreatObject(
                kind,
                collection_id,
                name,
                attrs.get("description"),
                vt.safe_timestamp(attrs.get("creation_date")),
                vt.safe_timestamp(attrs.get("last_modification_date")),
                aliases,
            )
        )
    return tuple(found), invalid


def _data_list(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    data = body.get("data")
    if not isinstance(data, list):
        raise ValueError("a VirusTotal collection without a data list")
    return [item for item in data if isinstance(item, dict)]


def _items(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
