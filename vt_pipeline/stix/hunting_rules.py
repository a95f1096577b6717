"""YARA Indicators of OpenCTI's live stream and the Livehunt rulesets made from them (pure).

A managed ruleset holds exactly its Indicator's pattern and is named
`<Indicator name> [OpenCTI indicator--<uuid>]`: an operator reads on VT which Indicator owns it,
and a Livehunt notification of it maps back to that same Indicator: the pattern's pycti id
(`Indicator.generate_id`, what OpenCTI computes) is the id in the name (see
`managed_indicator`). Upstream's stream connector named a ruleset exactly after its Indicator;
such a ruleset is adopted (renamed) rather than duplicated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pycti import Indicator as PyctiIndicator

from vt_pipeline.stix import common
from vt_pipeline.stix.yara import YaraParseError, parse_ruleset

OPENCTI_EXTENSION = "extension-definition--ea279b3e-5c71-4632-ac08-831c66a786ba"
NAME_MAX = 120  # of the Indicator's name in a ruleset's name
_MARKER = re.compile(
    r"\s*\[OpenCTI (indicator--[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\]$"
)
SOURCE_NAME = "VirusTotal Livehunt"


@dataclass(frozen=True)
class YaraIndicator:
    """What the sync needs of a YARA Indicator from a stream event."""

    key: str  # OpenCTI's internal id (stable when the pattern, hence the standard id, changes)
    id: str  # standard id
    name: str
    pattern: str
    detection: bool
    revoked: bool
    stix_ids: tuple[str, ...] = ()  # earlier standard ids (its pattern was edited)
    stix: dict[str, Any] | None = None

    @property
    def wanted(self) -> bool:
        """Whether VT should hunt with it: detection on and not revoked."""
        return self.detection and not self.revoked

    @property
    def ids(self) -> set[str]:
        return {self.id, *self.stix_ids}


def yara_indicator(stix: Any) -> YaraIndicator | None:
    """The YARA Indicator an event's `data` is, None for anything else (as upstream: type
    indicator, pattern_type yara). `detection` is read from OpenCTI's extension, where the
    stream puts it, or a top-level `x_opencti_detection`."""
    if not isinstance(stix, dict) or stix.get("type") != "indicator":
        return None
    if str(stix.get("pattern_type") or "").lower() != "yara" or not stix.get("id"):
        return None
    extensions = stix.get("extensions") or {}
    extension = extensions.get(OPENCTI_EXTENSION) if isinstance(extensions, dict) else None
    extension = extension if isinstance(extension, dict) else {}
    detection = extension.get("detection", stix.get("x_opencti_detection"))
    stix_ids = [str(i) for i in extension.get("stix_ids") or () if str(i) != stix["id"]]
    return YaraIndicator(
        key=str(extension.get("id") or stix["id"]),
        id=str(stix["id"]),
        name=str(stix.get("name") or stix["id"]),
        pattern=str(stix.get("pattern") or ""),
        detection=detection is True,
        revoked=stix.get("revoked") is True,
        stix_ids=tuple(stix_ids),
        stix=stix,
    )


def compile_problem(pattern: str) -> str | None:
    """Why VT could not compile the rule (plyara, the Livehunt mapping's check), or None."""
    try:
        rules = parse_ruleset(pattern)
    except YaraParseError as exc:
        return str(exc)
    if not rules:
        return "the pattern holds no YARA rule"
    return None


def ruleset_name(indicator: YaraIndicator) -> str:
    """`<name> [OpenCTI <standard id>]`, the name cut to `NAME_MAX` characters."""
    name = " ".join(indicator.name.split())[:NAME_MAX] or "YARA rule"
    return f"{name} [OpenCTI {indicator.id}]"


def marked_indicator(name: Any) -> str | None:
    """The Indicator id a managed ruleset's name carries."""
    found = _MARKER.search(str(name or ""))
    return found.group(1) if found else None


def managed_indicator(attributes: dict[str, Any]) -> tuple[str, str] | None:
    """(Indicator id, Indicator name) of a ruleset this deployment manages, when its rules are
    still exactly the pattern of that Indicator (the id is the pattern's); else None."""
    marked = marked_indicator(attributes.get("name"))
    rules = attributes.get("rules")
    if marked is None or not isinstance(rules, str) or not rules.strip():
        return None
    if PyctiIndicator.generate_id(rules) != marked:
        return None
    return marked, _MARKER.sub("", str(attributes["name"])) or marked


def ruleset_reference(ruleset: dict[str, Any], api_url: str) -> dict[str, Any]:
    """The external reference to a ruleset put on its Indicator."""
    link = (ruleset.get("links") or {}).get("self") or (
        f"{api_url.rstrip('/')}/api/v3/intelligence/hunting_rulesets/{ruleset['id']}"
    )
    reference = common.external_reference(
        SOURCE_NAME, str(link), f"VirusTotal Livehunt ruleset {ruleset['id']}"
    )
    reference["external_id"] = str(ruleset["id"])
    return reference


def feedback_objects(
    indicator: YaraIndicator,
    *,
    reference: dict[str, Any] | None = None,
    problem: str | None = None,
    created: str = common.FIXED_TIMESTAMP,
) -> list[dict[str, Any]]:
    """What OpenCTI is told about an Indicator: the ruleset's link on it (the Indicator
    re-sent with its own pattern, name and dates, so it upserts into itself) and, for a rule
    that does not compile, a Note on it saying why (its id from its content: sent again,
    one note)."""
    stix = indicator.stix or {}
    author = common.author_identity("VirusTotal")
    obj: dict[str, Any] = {
        "type": "indicator",
        "spec_version": "2.1",
        "id": indicator.id,
        "name": indicator.name,
        "pattern": indicator.pattern,
        "pattern_type": "yara",
        "created": stix.get("created") or created,
        "modified": stix.get("modified") or created,
        "valid_from": stix.get("valid_from") or created,
    }
    if reference is not None:
        obj["external_references"] = [reference]
    objects: list[dict[str, Any]] = [obj]
    if problem is not None:
        objects.append(author)
        objects.append(
            common.note(
                f"This YARA rule was not sent to VirusTotal Livehunt: it does not compile "
                f"({problem}). Fix the pattern; the next edit is sent again.",
                abstract="YARA rule not sent to VirusTotal Livehunt",
                object_refs=[indicator.id],
                created=created,
                created_by_ref=author["id"],
                object_marking_refs=[],
            )
        )
    return objects
