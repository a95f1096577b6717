"""Google Threat Intelligence assessments the emulator adds to files, URLs, domains and IPs.

VirusTotal returns `gti_assessment` only to requests that carry its `x-tool` header (upstream's
enrichment connector sends one); without it the attribute is absent. The assessment is derived
from the object's id and detections (same object, same assessment), not stored in the corpus,
so Livehunt's objects and bundles do not change. About 60 % of objects get a full assessment
(`threat_score`, `verdict`, `severity`), 15 % an empty one (`{}`: no score, fall back to the
detection ratio) and 25 % none at all.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

GTI_HEADER = "x-tool"
FULL_SHARE = 60  # percent of objects with a scored assessment
EMPTY_SHARE = 15  # percent with an empty one


def gti_kind(obj: Mapping[str, Any]) -> str:
    """`full`, `empty` or `none`: which assessment an object gets, from its type and id."""
    digest = hashlib.sha256(f"gti:{obj.get('type')}:{obj.get('id')}".encode()).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    if bucket < FULL_SHARE:
        return "full"
    return "empty" if bucket < FULL_SHARE + EMPTY_SHARE else "none"


def _verdict(score: int) -> tuple[str, str]:
    if score >= 70:
        return "VERDICT_MALICIOUS", "SEVERITY_HIGH"
    if score >= 40:
        return "VERDICT_SUSPICIOUS", "SEVERITY_MEDIUM"
    if score >= 10:
        return "VERDICT_UNDETECTED", "SEVERITY_LOW"
    return "VERDICT_HARMLESS", "SEVERITY_NONE"


def gti_assessment(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """The object's `gti_assessment`, `{}` for an empty one, None when it has none.

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
    return {
        "threat_score": {"value": score},
        "verdict": {"value": verdict},
        "severity": {"value": severity},
        "contributing_factors": {
            "gavs_detections": malicious,
            "mandiant_analyst_malicious": score >= 90,
            "normalised_categories": ["trojan"] if malicious else [],
        },
        "description": f"This indicator was determined as {verdict[8:].lower()}.",
    }


def with_gti(obj: dict[str, Any], headers: Mapping[str, str]) -> dict[str, Any]:
    """The object as served: with its assessment when the request asked for GTI."""
    if not headers.get(GTI_HEADER):
        return obj
    assessment = gti_assessment(obj)
    if assessment is None:
        return obj
    return {**obj, "attributes": {**obj.get("attributes", {}), "gti_assessment": assessment}}
