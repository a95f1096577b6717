"""Fetching the enrichment expansions (issue 19 sections 2 to 4), the VirusTotal side.

One call each, only when asked (`ExpansionOptions`), through the session's retries, budget and
accounting, stored raw before use and reused within the enrichment cache window like lookups:
- `GET /files/{id}/behaviour_mitre_trees`: the ATT&CK techniques of VT's sandboxes;
- `GET /sigma_rules/{id}`: one per distinct Sigma rule matched (the rule to rebuild its text),
  shared by the requests waiting for it, then read from the stored answer;
- `GET /{collection}/{id}/comments?limit=N`: the newest community comments;
- `GET /{collection}/{id}/associations?limit=N`: GTI's threat actors, malware families,
  campaigns and reports, only when the lookup carried a `gti_assessment` (VT sends one only
  to a key licensed for GTI) whose contributing factors name a Mandiant association: a key
  without GTI costs nothing extra, a GTI key pays only for objects GTI ties to threats.
A failing expansion (404, 403 without the licence, malformed answers after the retries) is
left out with its reason in `Expansions.errors`; the base enrichment stands without it.

`refresh` re-analyses a file or URL whose last analysis is older than asked
(`POST /files/{id}/analyse`, `POST /urls/{id}/analyse`, then `GET /analyses/{id}` with the
session's bounded backoff and a fresh lookup); when the analysis does not finish the stored
report is used, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from vt_pipeline.storage.responses import ResponseStore
from vt_pipeline.virustotal import objects as vt
from vt_pipeline.virustotal.expansions import (
    _SEVERITY,
    _SIGMA_ID,
    COLLECTIONS,
    MAX_SIGMA_RULES,
    ExpansionOptions,
    Expansions,
    SigmaMatch,
    SigmaRule,
    read_associations,
    read_attributes,
    read_comments,
    read_mitre_trees,
)
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession


@dataclass
class ExpansionFetcher:
    """Fetches the expansions of looked-up objects for one run: through `session`, each raw
    answer stored in `responses` before use and reused while younger than `cache`. Sigma rules
    are fetched once for all the requests waiting for them."""

    session: VirusTotalSession
    responses: ResponseStore
    cache: timedelta
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _rules: dict[str, asyncio.Future[tuple[Mapping[str, Any] | None, _State]]] = field(
        default_factory=dict
    )

    async def expand(
        self, kind: str, object_id: str, vt_object: Mapping[str, Any], options: ExpansionOptions
    ) -> Expansions:
        """The expansions of one looked-up object (`kind`: file, url, domain, ip_address)."""
        base, invalid = read_attributes(vt_object)
        if kind != "file":  # only files carry families, Sigma and IDS results
            base = Expansions(gti_licensed=base.gti_licensed, gti_associated=base.gti_associated)
            invalid = 0
        state = _State(invalid=invalid)
        collection = COLLECTIONS[kind]

        async def fetch(
            name: str, endpoint: str, path: str, reader: Any, params: dict[str, Any] | None = None
        ) -> Any:
            body = await self._get(state, name, endpoint, object_id, path, params)
            return state.read(name, body, reader)

        async def nothing() -> None:
            return None

        limit = options.comments_limit
        wanted: list[str] = []
        if options.sigma_rules and base.sigma:
            wanted = sorted(
                {m.rule_id for m in base.sigma if _SIGMA_ID.match(m.rule_id)},
                key=lambda rule_id: _sigma_rank(base.sigma, rule_id),
            )
            state.invalid += len({m.rule_id for m in base.sigma}) - len(wanted)
        # Concurrently: a request waits for its slowest call, not their sum.
        techniques, comments, threats, *found = await asyncio.gather(
            fetch(
                "attack_patterns",
                "file_behaviour_mitre_trees",
                "/files/{}/behaviour_mitre_trees",
                read_mitre_trees,
            )
            if kind == "file" and options.attack_patterns
            else nothing(),
            fetch(
                "comments",
                f"{kind}_comments",
                f"/{collection}/{{}}/comments",
                lambda b: read_comments(b, limit),
                {"limit": limit},
            )
            if limit
            else nothing(),
            fetch(
                "gti_context",
                f"{kind}_associations",
                f"/{collection}/{{}}/associations",
                read_associations,
                {"limit": options.gti_limit},
            )
            if options.gti_limit and base.gti_associated
            else nothing(),
            *(self._sigma_rule(state, rule_id) for rule_id in wanted[:MAX_SIGMA_RULES]),
        )
        rules = {rule.rule_id: rule for rule in found if rule is not None}
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
            gti_associated=base.gti_associated,
            invalid=state.invalid,
            errors=tuple(sorted(state.errors)),
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
                    "licensed for Google Threat Intelligence's threat objects (GTI Enterprise)"
                    if expansion == "gti_context"
                    else "allowed this endpoint"
                )
            state.errors.append((expansion, reason))
            return None
        self.responses.put(store_type, object_id, body, now=self.clock())
        return body

    async def _sigma_rule(self, state: _State, rule_id: str) -> SigmaRule | None:
        """The rule: concurrent requests matching it share one call (counted for the first
        one), each told of its failure; later ones read the stored answer (cache window)."""
        if rule_id not in self._rules:
            self._rules[rule_id] = asyncio.ensure_future(self._fetch_rule(rule_id))
        body, fetched = await asyncio.shield(self._rules[rule_id])
        if fetched.errors:
            state.errors += fetched.errors
        state.cache_hits += fetched.cache_hits  # the stored copy served this request too
        data = body.get("data") if isinstance(body, Mapping) else None
        if body is not None and (not isinstance(data, dict) or not vt.attributes(data)):
            state.errors.append(("sigma_rules", f"Sigma rule {rule_id}: no data.attributes"))
            return None
        return SigmaRule(rule_id, vt.attributes(data)) if data else None

    async def _fetch_rule(self, rule_id: str) -> tuple[Mapping[str, Any] | None, _State]:
        """One fetch shared by the requests waiting for it; once done it is forgotten (a drain
        run lives for hours): the next request finds the stored answer, or asks again after a
        failure, instead of inheriting it."""
        state = _State()
        try:
            body = await self._get(state, "sigma_rules", "sigma_rule", rule_id, "/sigma_rules/{}")
        finally:
            self._rules.pop(rule_id, None)
        return body, state


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
