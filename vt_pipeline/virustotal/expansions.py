"""What an enrichment adds beyond the base lookup, read once into typed values (the VirusTotal
layer of issue 19's "what the file is", "a report that is still true" and GTI context).

Free with the file lookup (read from its attributes): the popular threat classification
(family names with the engines agreeing), crowdsourced Sigma matches (`sigma_analysis_results`)
and crowdsourced IDS alerts (`crowdsourced_ids_results`, the rule's text in `rule_raw`).

One call each, only when asked (`ExpansionOptions`), through the session's retries, budget and
accounting, stored raw before use and reused within the enrichment cache window like lookups:
- `GET /files/{id}/behaviour_mitre_trees`: the ATT&CK techniques of VT's sandboxes;
- `GET /sigma_rules/{id}`: one per distinct Sigma rule matched (the rule to rebuild its text);
- `GET /{collection}/{id}/comments?limit=N`: the newest community comments;
- `GET /{collection}/{id}/associations?limit=N`: GTI's threat actors, malware families,
  campaigns and reports, only when the lookup carried a `gti_assessment` (VT sends one only
  to a key licensed for GTI): a key without GTI costs nothing extra.
A failing expansion (404, 403 without the licence, malformed answers after the retries) is
left out with its reason in `Expansions.errors`; the base enrichment stands without it.

`refresh` re-analyses a file or URL whose last analysis is older than asked
(`POST /files/{id}/analyse`, `POST /urls/{id}/analyse`, then `GET /analyses/{id}` with the
session's bounded backoff and a fresh lookup); when the analysis does not finish the stored
report is used, with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

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
    )
    return expansions, invalid


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


# -- fetching ---------------------------------------------------------------------------------


@dataclass
class ExpansionFetcher:
    """Fetches the expansions of looked-up objects for one run: through `session`, each raw
    answer stored in `responses` before use and reused while younger than `cache`. Sigma rules
    are fetched once per run whatever the number of files matching them."""

    session: VirusTotalSession
    responses: ResponseStore
    cache: timedelta
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _rules: dict[str, Any] = field(default_factory=dict)

    async def expand(
        self, kind: str, object_id: str, vt_object: Mapping[str, Any], options: ExpansionOptions
    ) -> Expansions:
        """The expansions of one looked-up object (`kind`: file, url, domain, ip_address)."""
        base, invalid = read_attributes(vt_object)
        if kind != "file":  # only files carry families, Sigma and IDS results
            base = Expansions(gti_licensed=base.gti_licensed)
            invalid = 0
        state = _State(invalid=invalid)
        collection = COLLECTIONS[kind]
        techniques = comments = threats = None
        if kind == "file" and options.attack_patterns:
            body = await self._get(
                state,
                "attack_patterns",
                "file_behaviour_mitre_trees",
                object_id,
                "/files/{}/behaviour_mitre_trees",
            )
            techniques = state.read("attack_patterns", body, read_mitre_trees)
        if options.comments_limit:
            limit = options.comments_limit
            body = await self._get(
                state,
                "comments",
                f"{kind}_comments",
                object_id,
                f"/{collection}/{{}}/comments",
                params={"limit": limit},
            )
            comments = state.read("comments", body, lambda b: read_comments(b, limit))
        if options.gti_limit and base.gti_licensed:
            body = await self._get(
                state,
                "gti_context",
                f"{kind}_associations",
                object_id,
                f"/{collection}/{{}}/associations",
                params={"limit": options.gti_limit},
            )
            threats = state.read("gti_context", body, read_associations)
        rules: dict[str, SigmaRule] = {}
        if options.sigma_rules and base.sigma:
            wanted = sorted(
                {m.rule_id for m in base.sigma if _SIGMA_ID.match(m.rule_id)},
                key=lambda rule_id: _sigma_rank(base.sigma, rule_id),
            )
            state.invalid += len({m.rule_id for m in base.sigma}) - len(wanted)
            for rule_id in wanted[:MAX_SIGMA_RULES]:
                rule = await self._sigma_rule(state, rule_id)
                if rule is not None:
                    rules[rule_id] = rule
        return Expansions(
            threat_label=base.threat_label,
            families=base.families,
            sigma=base.sigma,
            ids=base.ids,
            sigma_rules=rules,
            techniques=techniques,
            comments=comments,
            threat_objects=threats,
            gti_licensed=base.gti_licensed,
            invalid=state.invalid,
            errors=tuple(state.errors),
            cache_hits=state.cache_hits,
        )

    async def _get(
        self,
        state: _State,
        expansion: str,
        store_type: str,
        object_id: str,
        path: str,
        params: dict[str, Any] | None = None,
    ) -> Mapping[str, Any] | None:
        stored = self.responses.recent(store_type, object_id, self.cache, now=self.clock())
        if stored is not None:
            state.cache_hits += 1
            return stored.body
        try:
            body = await self.session.get_json(
                store_type, path, object_id, params=params, what=f"VirusTotal {expansion}"
            )
        except VirusTotalError as exc:
            reason = str(exc)
            if exc.code == "ForbiddenError":  # the session's hint is about Livehunt keys
                reason = "VirusTotal refused it (403 ForbiddenError): the API key is not " + (
                    "licensed for Google Threat Intelligence"
                    if expansion == "gti_context"
                    else "allowed this endpoint"
                )
            state.errors.append((expansion, reason))
            return None
        self.responses.put(store_type, object_id, body, now=self.clock())
        return body

    async def _sigma_rule(self, state: _State, rule_id: str) -> SigmaRule | None:
        if rule_id not in self._rules:
            self._rules[rule_id] = await self._get(
                state, "sigma_rules", "sigma_rule", rule_id, "/sigma_rules/{}"
            )
        body = self._rules[rule_id]
        data = body.get("data") if isinstance(body, Mapping) else None
        if body is not None and (not isinstance(data, dict) or not vt.attributes(data)):
            state.errors.append(("sigma_rules", f"Sigma rule {rule_id}: no data.attributes"))
            return None
        return SigmaRule(rule_id, vt.attributes(data)) if data else None


@dataclass
class _State:
    invalid: int = 0
    cache_hits: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)

    def read(
        self,
        expansion: str,
        body: Mapping[str, Any] | None,
        reader: Callable[[Mapping[str, Any]], tuple[Any, int]],
    ) -> Any:
        if body is None:
            return None
        try:
            values, invalid = reader(body)
        except (ValueError, TypeError, AttributeError) as exc:
            self.errors.append((expansion, f"VirusTotal's answer could not be read: {exc}"))
            return None
        self.invalid += invalid
        return values


def _sigma_rank(matches: tuple[SigmaMatch, ...], rule_id: str) -> tuple[int, str]:
    levels = [_SEVERITY.get(str(m.level).lower(), 9) for m in matches if m.rule_id == rule_id]
    return (min(levels, default=9), rule_id)


# -- a report that is still true --------------------------------------------------------------


@dataclass(frozen=True)
class Refresh:
    """The outcome of `refresh`: the fresh response (None: keep the stored report) and what
    happened, for the run (None when no re-analysis was due)."""

    body: dict[str, Any] | None
    message: str | None


def is_stale(vt_object: Mapping[str, Any], older_than_days: int, now: datetime) -> bool:
    """Whether VT's last analysis is older than `older_than_days` (0: never)."""
    if older_than_days <= 0:
        return False
    analysed = vt.analysis_timestamp(dict(vt_object))
    if analysed is None:
        return False  # never analysed: nothing to refresh (an upload path handles that)
    return now.timestamp() - analysed > older_than_days * 86400


async def refresh(
    session: VirusTotalSession,
    kind: str,
    object_id: str,
    vt_object: Mapping[str, Any],
    older_than_days: int,
    now: datetime,
    lookup: Callable[[], Awaitable[dict[str, Any] | None]],
) -> Refresh:
    """Re-analyse a file or URL whose last analysis is older than `older_than_days`, await it
    (bounded backoff, an asyncio sleep: the batch goes on) and return the fresh lookup from
    `lookup`; when VT refuses or the analysis does not finish in time, the stored report stays
    and the message says why."""
    if kind not in ("file", "url") or not is_stale(vt_object, older_than_days, now):
        return Refresh(None, None)
    analysed = vt.analysis_timestamp(dict(vt_object))
    age = int((now.timestamp() - (analysed or 0)) // 86400)
    try:
        analysis_id = await session.reanalyse(kind, object_id)
        await session.wait_for_analysis(analysis_id)
        body = await lookup()
    except VirusTotalError as exc:
        return Refresh(
            None, f"re-analysis of the {age}-day-old report failed, stored report used: {exc}"
        )
    if body is None:
        return Refresh(None, "re-analysed, but VirusTotal has no report: stored report used")
    return Refresh(body, f"re-analysed (the report was {age} days old)")
