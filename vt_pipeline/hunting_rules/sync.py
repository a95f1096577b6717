"""One YARA Indicator event -> what VirusTotal holds: create, edit in place, disable, delete.

The state of each managed ruleset (`Managed`) travels in the sensor's cursor with the stream
position, and VirusTotal is the truth behind it: an Indicator the state does not know is looked
up among ALL the key's rulesets (listed once per tick, only when needed) by the id in the
ruleset's name, or by the Indicator's exact name (a ruleset upstream's connector made, adopted).
So a crash after a VT call but before the cursor was saved re-reads the same events, finds
what was made and creates nothing twice; and two rulesets found for one Indicator (a create
whose answer was lost and retried) are brought back to one.

VT calls per event: none when the state says VT already holds the right ruleset; else one
(create + one per shared owner, PATCH or DELETE), plus the listing (1 per 40 rulesets) once per
tick for Indicators the state does not know.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from vt_pipeline.hunting_rules.settings import HuntingRulesSettings
from vt_pipeline.opencti.live_stream import LiveEvent
from vt_pipeline.stix.hunting_rules import (
    YaraIndicator,
    compile_problem,
    feedback_objects,
    marked_indicator,
    ruleset_name,
    ruleset_reference,
    yara_indicator,
)
from vt_pipeline.virustotal import hunting_rulesets as vt_rulesets
from vt_pipeline.virustotal.resource import VirusTotalError, VirusTotalSession

log = logging.getLogger(__name__)

State = Literal["active", "disabled", "deleted", "rejected"]
# VT refused the rules themselves: reported on the Indicator like a plyara failure.
_REFUSED_RULES = frozenset({"InvalidArgumentError", "BadRequestError"})


def pattern_digest(pattern: str) -> str:
    return hashlib.sha256(pattern.strip().encode()).hexdigest()


def event_time(event_id: str) -> str:
    """The moment a stream event happened (its id is `<epoch ms>-<seq>`), ISO UTC."""
    try:
        ms = int(event_id.partition("-")[0])
    except ValueError:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Managed:
    """One ruleset the deployment manages (or a rule it refused), as the asset shows it."""

    indicator_id: str
    indicator_name: str
    ruleset_id: str = ""
    ruleset_name: str = ""
    state: State = "active"
    changed: str = ""
    reason: str = ""
    pattern_sha256: str = ""
    linked: str = ""  # the ruleset id OpenCTI holds as the Indicator's external reference

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Managed:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class Outcome:
    """What a batch of events did: lines for the log and the UI, objects for OpenCTI."""

    changes: list[str] = field(default_factory=list)
    feedback: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    dropped: list[str] = field(default_factory=list)  # events that could not be read


class RulesetSync:
    """Applies events to VT through one session; `state` is updated in place."""

    def __init__(
        self,
        session: VirusTotalSession,
        settings: HuntingRulesSettings,
        state: dict[str, Managed],
        api_url: str,
    ) -> None:
        self.session = session
        self.settings = settings
        self.state = state
        self.api_url = api_url
        self.outcome = Outcome()
        self._listing: list[dict[str, Any]] | None = None

    # -- VT lookups ------------------------------------------------------------------------
    async def _all_rulesets(self) -> list[dict[str, Any]]:
        if self._listing is None:
            self._listing = await vt_rulesets.list_rulesets(self.session)
        return self._listing

    async def _find_on_vt(self, indicator: YaraIndicator) -> dict[str, Any] | None:
        """The Indicator's ruleset among all of the key's (extra copies deleted)."""
        rulesets = await self._all_rulesets()
        ours = [r for r in rulesets if marked_indicator(_attrs(r).get("name")) in indicator.ids]
        if not ours:
            adopted = [r for r in rulesets if _attrs(r).get("name") == indicator.name]
            return adopted[0] if adopted else None
        ours.sort(key=lambda r: (int(_attrs(r).get("creation_date") or 0), str(r["id"])))
        for extra in ours[1:]:
            await vt_rulesets.delete_ruleset(self.session, str(extra["id"]))
            self._forget(str(extra["id"]))
            self.outcome.changes.append(
                f"deleted ruleset {extra['id']}: a second copy for {indicator.id}"
            )
        return ours[0]

    def _forget(self, ruleset_id: str) -> None:
        if self._listing is not None:
            self._listing = [r for r in self._listing if str(r.get("id")) != ruleset_id]

    def _remember(self, ruleset: dict[str, Any]) -> None:
        if self._listing is not None:
            self._forget(str(ruleset["id"]))
            self._listing.append(ruleset)

    # -- events ----------------------------------------------------------------------------
    async def apply(self, event: LiveEvent) -> None:
        """Bring VT in line with one event. VT failures other than a refused rule raise (the
        event is read again next tick)."""
        indicator = yara_indicator(event.stix)
        if indicator is None:
            if event.message is None:
                self.outcome.dropped.append(f"event {event.id}: data is not JSON")
            else:
                self.outcome.ignored += 1
            return
        when = event_time(event.id)
        if event.type == "delete":
            if self.settings.listen_delete:
                await self._remove(indicator, when, "deleted in OpenCTI", delete=True)
            return
        if event.type not in ("create", "update"):
            self.outcome.ignored += 1
            return
        if indicator.wanted:
            await self._hunt(indicator, when)
        else:
            why = "revoked" if indicator.revoked else "detection turned off"
            delete = self.settings.on_detection_off == "delete"
            await self._remove(indicator, when, why, delete=delete)

    async def _hunt(self, indicator: YaraIndicator, when: str) -> None:
        entry = self.state.get(indicator.key)
        digest = pattern_digest(indicator.pattern)
        problem = compile_problem(indicator.pattern)
        if problem is not None:
            self._reject(indicator, entry, when, digest, problem)
            return
        name = ruleset_name(indicator)
        if (
            entry is not None
            and entry.state == "active"
            and entry.pattern_sha256 == digest
            and entry.ruleset_name == name
        ):
            self._link(indicator, entry)  # VT holds it already (an event caused by our link)
            return
        current = None
        if entry is not None and entry.ruleset_id and entry.state in ("active", "disabled"):
            current = {"id": entry.ruleset_id, "attributes": {}}
        else:
            current = await self._find_on_vt(indicator)
        wanted = {"name": name, "rules": indicator.pattern, "enabled": True}
        try:
            if current is None:
                ruleset = await self._create(indicator, name)
                verb = "created"
            else:
                attrs = _attrs(current)
                edits = {k: v for k, v in wanted.items() if attrs.get(k) != v}
                ruleset = current
                verb = "unchanged"
                if edits:
                    ruleset, made = await self._patch(indicator, str(current["id"]), edits, name)
                    verb = "created" if made else "updated"
                    if verb == "updated" and entry is None:
                        verb = "adopted and updated"
        except VirusTotalError as exc:
            if exc.code not in _REFUSED_RULES:
                raise
            self._reject(indicator, entry, when, digest, f"VirusTotal refused it: {exc}")
            return
        ruleset_id = str(ruleset["id"])
        managed = Managed(
            indicator.id,
            indicator.name,
            ruleset_id,
            name,
            "active",
            when if verb != "unchanged" else (entry.changed if entry else when),
            "",
            digest,
            entry.linked if entry is not None else "",
        )
        self.state[indicator.key] = managed
        if verb != "unchanged":
            self.outcome.changes.append(f"{verb} ruleset {ruleset_id} for {indicator.id}")
        self._link(indicator, managed, ruleset)

    async def _create(self, indicator: YaraIndicator, name: str) -> dict[str, Any]:
        retried = self.session.log.retries["hunting_ruleset_create"]
        ruleset = await vt_rulesets.create_ruleset(
            self.session,
            name=name,
            rules=indicator.pattern,
            limit=self.settings.ruleset_limit,
            notification_emails=self.settings.emails,
        )
        if self.session.log.retries["hunting_ruleset_create"] > retried:
            # an attempt whose answer was lost may have created it too: keep one
            self._listing = None
            ruleset = await self._find_on_vt(indicator) or ruleset
        await vt_rulesets.add_editors(self.session, str(ruleset["id"]), self.settings.owners)
        self._remember(ruleset)
        return ruleset

    async def _patch(
        self, indicator: YaraIndicator, ruleset_id: str, edits: dict[str, Any], name: str
    ) -> tuple[dict[str, Any], bool]:
        """Edit in place; a ruleset deleted on VT meanwhile is made again (then True)."""
        try:
            ruleset = await vt_rulesets.update_ruleset(self.session, ruleset_id, edits)
        except VirusTotalError as exc:
            if exc.code != "NotFoundError":
                raise
            self._forget(ruleset_id)
            return await self._create(indicator, name), True
        self._remember(ruleset)
        return ruleset, False

    async def _remove(self, indicator: YaraIndicator, when: str, why: str, *, delete: bool) -> None:
        entry = self.state.get(indicator.key)
        if entry is not None and entry.state in ("deleted",):
            return
        if entry is not None and entry.state == "disabled" and not delete:
            return
        if entry is not None and entry.state == "rejected" and not entry.ruleset_id:
            entry.state, entry.changed, entry.reason = "deleted", when, why
            self.outcome.changes.append(f"{indicator.id}: {why}; its rule was never sent")
            return
        if entry is not None and entry.ruleset_id:
            ruleset_id = entry.ruleset_id
        else:
            found = await self._find_on_vt(indicator)
            if found is None:
                return
            ruleset_id = str(found["id"])
        if delete:
            await vt_rulesets.delete_ruleset(self.session, ruleset_id)
            self._forget(ruleset_id)
            state: State = "deleted"
        else:
            try:
                self._remember(
                    await vt_rulesets.update_ruleset(self.session, ruleset_id, {"enabled": False})
                )
                state = "disabled"
            except VirusTotalError as exc:
                if exc.code != "NotFoundError":
                    raise
                state = "deleted"
        self.state[indicator.key] = Managed(
            indicator.id,
            indicator.name,
            ruleset_id,
            entry.ruleset_name if entry else "",
            state,
            when,
            why,
            entry.pattern_sha256 if entry else "",
            entry.linked if entry else "",
        )
        self.outcome.changes.append(f"{state} ruleset {ruleset_id} of {indicator.id}: {why}")

    def _reject(
        self,
        indicator: YaraIndicator,
        entry: Managed | None,
        when: str,
        digest: str,
        problem: str,
    ) -> None:
        """A rule that does not compile: never sent; its Indicator gets a note saying why (once
        per pattern); a ruleset made from an earlier version stays as it is."""
        if entry is not None and entry.state == "rejected" and entry.pattern_sha256 == digest:
            return
        self.state[indicator.key] = Managed(
            indicator.id,
            indicator.name,
            entry.ruleset_id if entry else "",
            entry.ruleset_name if entry else "",
            "rejected",
            when,
            problem[:500],
            digest,
            entry.linked if entry else "",
        )
        self.outcome.changes.append(f"not sent {indicator.id}: {problem[:200]}")
        self.outcome.feedback += feedback_objects(indicator, problem=problem[:500], created=when)

    def _link(
        self, indicator: YaraIndicator, entry: Managed, ruleset: dict[str, Any] | None = None
    ) -> None:
        """Put the ruleset's link on its Indicator, once per ruleset."""
        if entry.linked == entry.ruleset_id or not entry.ruleset_id:
            return
        ruleset = ruleset or {"id": entry.ruleset_id}
        reference = ruleset_reference(ruleset, self.api_url)
        self.outcome.feedback += feedback_objects(
            indicator, reference=reference, created=entry.changed
        )
        entry.linked = entry.ruleset_id


def _attrs(ruleset: dict[str, Any]) -> dict[str, Any]:
    attrs = ruleset.get("attributes")
    return attrs if isinstance(attrs, dict) else {}


def dump_state(state: dict[str, Managed]) -> dict[str, dict[str, Any]]:
    return {key: asdict(entry) for key, entry in state.items()}


def load_state(data: Any) -> dict[str, Managed]:
    if not isinstance(data, dict):
        return {}
    return {str(k): Managed.from_json(v) for k, v in data.items() if isinstance(v, dict)}
