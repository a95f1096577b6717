"""Google Threat Intelligence assessments, handed out as VirusTotal hands them out.

VirusTotal returns `gti_assessment` (files, URLs, domains, IPs) only when both hold:
- the request names its tool in the `x-tool` header (the API reference: "required to obtain the
  gti_assesment data"; upstream's enrichment connector sends one);
- its API key is licensed for Google Threat Intelligence (`keys.ApiKey.gti`).
Any other request gets the object without the attribute.

Where the assessment comes from depends on the corpus:
- a synthetic corpus (`generate_corpus`) derives one from the object's id and detections (same
  object, same assessment). It is not stored, so Livehunt's objects and bundles do not change.
  About 60 % of objects get a full assessment (`threat_score`, `verdict`, `severity`), 15 % an
  empty one (`{}`: no score, a consumer falls back to the detection ratio) and 25 % none;
- a captured corpus (`--fixtures`) serves an object's own `gti_assessment` exactly as captured,
  or none when the capture has none: the emulator never invents or rewrites one (a real report
  with 47/65 detections must not come back with a made-up score of 100).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping
from typing import Any

GTI_HEADER = "x-tool"
FULL_SHARE = 60  # percent of objects with a scored assessment
EMPTY_SHARE = 15  # percent with an empty one

Assessor = Callable[[Mapping[str, Any]], "dict[str, Any] | None"]


def gti_kind(obj: Mapping[str, Any]) -> str:
    """`full`, `empty` or `none`: which assessment an object gets, from its type and id."""
    digest = hashlib.sha256(f"gti:{obj.get('type')}:{obj.get('id')}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    if bucket < FULL_SHARE:
        return "full"
    return "empty" if bucket < FULL_SHARE + EMPTY_SHARE else "none"


ASSOCIATED_SHARE = 0.4  # of the detected objects with a scored assessment


def has_associations(obj: Mapping[str, Any]) -> bool:
    """Whether GTI ties a synthetic object to threat objects (an actor and a malware family,
    served by `gti_collections`): 40 % of the detected objects with a scored assessment. Their
    assessment then says so, as real ones do (`contributing_factors.mandiant_association_*`)."""
    attrs = obj.get("attributes") or {}
    malicious = int((attrs.get("last_analysis_stats") or {}).get("malicious") or 0)
    if malicious <= 0 or gti_kind(obj) != "full":
        return False
    rng = random.Random(f"vt-associations:{obj.get('type')}:{obj.get('id')}")
    return rng.random() < ASSOCIATED_SHARE


def _verdict(score: int) -> tuple[str, str]:
    if score >= 70:
        return "VERDICT_MALICIOUS", "SEVERITY_HIGH"
    if score >= 40:
        return "VERDICT_SUSPICIOUS", "SEVERITY_MEDIUM"
    if score >= 10:
        return "VERDICT_UNDETECTED", "SEVERITY_LOW"
    return "VERDICT_HARMLESS", "SEVERITY_NONE"


def gti_assessment(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """A synthetic object's `gti_assessment`, `{}` for an empty one, None when it has none.

    The threat score follows the detections but is not the detection ratio (GTI weighs more
    than engines), so a test can tell which of the two a consumer used.
    """
    kind = gti_kind(obj)
    if kind == "none":
        return None
    if kind == "empty":
        return {}
    attrs = obj.get("attributes") or {}
    stats = attrs.get("last_analysis_stats") or {}
    malicious = int(stats.get("malicious") or 0)
    rng = random.Random(f"gti-score:{obj.get('type')}:{obj.get('id')}")
    score = min(100, 5 + malicious * 6 + rng.randint(0, 9)) if malicious else rng.randint(0, 9)
    verdict, severity = _verdict(score)
    associated = {}
    if has_associations(obj):
        associated = {"mandiant_association_actor": True, "mandiant_association_malware": True}
    return {
        "threat_score": {"value": score},
        "verdict": {"value": verdict},
        "severity": {"value": severity},
        "contributing_factors": {
            "gavs_detections": malicious,
            "mandiant_analyst_malicious": score >= 90,
            "normalised_categories": ["trojan"] if malicious else [],
            **associated,
        },
        "description": f"This indicator was determined as {verdict[8:].lower()}.",
    }


def asks_for_gti(headers: Mapping[str, str]) -> bool:
    """Whether the request names its tool, without which VirusTotal never sends GTI."""
    return bool(headers.get(GTI_HEADER))


def as_served(obj: dict[str, Any], licensed: bool, assess: Assessor | None) -> dict[str, Any]:
    """The object as a request gets it.

    `licensed`: the request qualifies for GTI (`x-tool` and a GTI key). `assess`: the corpus's
    assessor, None for a captured corpus, whose objects are then served exactly as captured to
    a qualifying request, and without their captured `gti_assessment` to any other.
    """
    attrs = obj.get("attributes")
    if not isinstance(attrs, Mapping):
        return obj
    if not licensed:
        if "gti_assessment" not in attrs:
            return obj
        kept = {key: value for key, value in attrs.items() if key != "gti_assessment"}
        return {**obj, "attributes": kept}
    if assess is None:
        return obj
    assessment = assess(obj)
    if assessment is None:
        return obj
    return {**obj, "attributes": {**attrs, "gti_assessment": assessment}}
