"""Pure accessors for raw VirusTotal objects: Livehunt notifications (`/ioc_stream` items) and
looked-up files, URLs, domains and IPs.

A notification is kept exactly as VirusTotal returned it (a dict). Everything downstream reads
it through these helpers, so the filters and the STIX mapping agree on what a field means and
on what to do when VirusTotal leaves it out or sends something hostile. No I/O, no clock.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import sha256
from math import isfinite
from typing import Any, Literal
from urllib.parse import urlsplit

ObservableKind = Literal["file", "url", "domain", "ipv4", "ipv6"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")
# A DNS name: labels of letters (any script), digits, '-' or '_', joined by dots.
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_][\w-]{0,62}$")


class InvalidNotification(ValueError):
    """A notification whose subject cannot be turned into a safe observable."""


@dataclass(frozen=True)
class Observable:
    """What a notification is about: a file (by SHA-256) or a network indicator."""

    kind: ObservableKind
    value: str  # SHA-256 for files, the URL / domain / IP otherwise


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("attributes") or {}


def context(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("context_attributes") or {}


def notification_id(item: dict[str, Any]) -> str:
    value = context(item).get("notification_id")
    if value in (None, ""):
        raise InvalidNotification(
            f"notification without notification_id (object {item.get('id')!r})"
        )
    return str(value)


def notification_timestamp(item: dict[str, Any]) -> int:
    """Notification date as unix seconds; VT sends an int, older payloads an ISO string."""
    value = context(item).get("notification_date")
    parsed = parse_timestamp(value)
    if parsed is None:
        raise InvalidNotification(f"notification {notification_id(item)} has no notification_date")
    return parsed


def parse_timestamp(value: Any) -> int | None:
    """VT dates are unix seconds; tolerate ISO strings and numeric strings, reject the rest."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text)
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return int(parsed.timestamp())
    return None


def rule_name(item: dict[str, Any]) -> str | None:
    hunting = context(item).get("hunting_info") or {}
    name = hunting.get("rule_name") or context(item).get("rule_name")
    return str(name) if name else None


def hunting_snippet(item: dict[str, Any]) -> str | None:
    """The matched bytes VT shows (hex dump); `notification_snippet` in the older API."""
    hunting = context(item).get("hunting_info") or {}
    snippet = hunting.get("snippet") or context(item).get("notification_snippet")
    return str(snippet) if snippet else None


def hunting_sources(item: dict[str, Any]) -> list[dict[str, str]]:
    """The Livehunt rulesets that produced the notification, as `{id, label}` dicts.

    Current API: `sources: [{type: hunting_ruleset, id, label}]`; the older
    `hunting_notification_files` API: `ruleset_id` / `ruleset_name`.
    """
    ctx = context(item)
    found: list[dict[str, str]] = []
    for source in ctx.get("sources") or []:
        if (
            not isinstance(source, dict)
            or source.get("type", "hunting_ruleset") != "hunting_ruleset"
        ):
            continue
        if source.get("id"):
            found.append({"id": str(source["id"]), "label": str(source.get("label") or "")})
    if not found and ctx.get("ruleset_id"):
        found.append({"id": str(ctx["ruleset_id"]), "label": str(ctx.get("ruleset_name") or "")})
    return found


def notification_tags(item: dict[str, Any]) -> list[str]:
    ctx = context(item)
    tags = ctx.get("tags")
    if tags is None:
        tags = ctx.get("notification_tags")
    return [str(tag) for tag in tags or [] if tag not in (None, "")]


def is_valid_ruleset_id(value: str) -> bool:
    """Ruleset ids go into a request path: only plain tokens are allowed."""
    return bool(re.fullmatch(r"[A-Za-z0-9_-]{1,128}", value))


def valid_hash(value: Any, pattern: re.Pattern[str] = _SHA256) -> str | None:
    if isinstance(value, str) and pattern.match(value.lower()):
        return value.lower()
    return None


def file_hashes(item: dict[str, Any]) -> dict[str, str]:
    """The file's hashes that are well formed, keyed by their STIX names."""
    attrs = attributes(item)
    hashes: dict[str, str] = {}
    for stix_name, key, pattern in (
        ("MD5", "md5", _MD5),
        ("SHA-1", "sha1", _SHA1),
        ("SHA-256", "sha256", _SHA256),
    ):
        value = valid_hash(attrs.get(key), pattern)
        if value:
            hashes[stix_name] = value
    if "SHA-256" not in hashes and item.get("type") == "file":
        value = valid_hash(item.get("id"))
        if value:
            hashes["SHA-256"] = value
    return hashes


def observable(item: dict[str, Any]) -> Observable:
    """The notification's subject, validated. Raises InvalidNotification when it is unsafe."""
    kind = item.get("type")
    attrs = attributes(item)
    if kind == "file":
        sha256 = file_hashes(item).get("SHA-256")
        if not sha256:
            raise InvalidNotification(
                f"file notification without a valid SHA-256: {item.get('id')!r}"
            )
        return Observable("file", sha256)
    if kind == "url":
        url = attrs.get("url") or attrs.get("last_final_url")
        if not is_valid_url(url):
            raise InvalidNotification(f"url notification with an invalid URL: {str(url)[:200]!r}")
        return Observable("url", url)
    if kind == "domain":
        domain = str(item.get("id") or "")
        if not is_valid_domain(domain):
            raise InvalidNotification(f"domain notification with an invalid name: {domain[:200]!r}")
        return Observable("domain", domain.lower().rstrip("."))
    if kind == "ip_address":
        try:
            address = ipaddress.ip_address(str(item.get("id") or ""))
        except ValueError as exc:
            raise InvalidNotification(f"ip_address notification with an invalid IP: {exc}") from exc
        return Observable("ipv4" if address.version == 4 else "ipv6", str(address))
    raise InvalidNotification(f"unknown notification object type {str(kind)[:50]!r}")


def is_valid_url(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > 8192:
        return False
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return bool(parts.scheme) and bool(parts.netloc) and parts.scheme.isascii()


def is_valid_domain(value: Any) -> bool:
    return isinstance(value, str) and bool(_DOMAIN.match(value.rstrip(".")))


def analysis_stats(item: dict[str, Any]) -> dict[str, int]:
    stats = attributes(item).get("last_analysis_stats")
    if not isinstance(stats, dict):
        return {}
    return {str(k): int(v) for k, v in stats.items() if isinstance(v, int | float)}


def malicious_count(item: dict[str, Any]) -> int | None:
    stats = analysis_stats(item)
    return stats.get("malicious") if stats else None


def vt_score(stats: dict[str, int]) -> int | None:
    """Upstream's score: malicious / (malicious + harmless + undetected), in percent."""
    total = stats.get("malicious", 0) + stats.get("harmless", 0) + stats.get("undetected", 0)
    if not total:
        return None
    return round(100 * stats.get("malicious", 0) / total)


def gui_url(obs: Observable, item: dict[str, Any]) -> str:
    """The VirusTotal GUI page of the notification's subject."""
    base = "https://www.virustotal.com/gui"
    if obs.kind == "file":
        return f"{base}/file/{obs.value}"
    if obs.kind == "url":
        return f"{base}/url/{url_identifier(obs.value)}"
    if obs.kind == "domain":
        return f"{base}/domain/{obs.value}"
    return f"{base}/ip-address/{obs.value}"


def url_identifier(url: str) -> str:
    """VT's URL id: base64url of the URL without padding (computed, never taken from VT)."""
    return base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


# -- readers of looked-up VT objects (enrichment: /files, /ip_addresses, /domains, /urls) -------


def gti_threat_score(item: dict[str, Any]) -> int | None:
    """Google Threat Intelligence's `gti_assessment.threat_score.value` (0-100), None when VT
    sent none (it only does for requests carrying `x-tool`), sent it empty or out of range."""
    assessment = attributes(item).get("gti_assessment")
    threat = assessment.get("threat_score") if isinstance(assessment, dict) else None
    value = threat.get("value") if isinstance(threat, dict) else None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    count = valid_count(value)
    return count if count is not None and count <= 100 else None


def safe_timestamp(value: Any) -> int | None:
    """`parse_timestamp` that never raises: NaN, Infinity and dates no calendar holds are None."""
    if isinstance(value, float) and not isfinite(value):
        return None
    try:
        seconds = parse_timestamp(value)
        if seconds is not None:
            datetime.fromtimestamp(seconds, UTC)  # raises past what a date can spell
    except (ValueError, OverflowError, OSError):
        return None
    return seconds


def analysis_timestamp(item: dict[str, Any]) -> int | None:
    """When VT last analysed the object (unix seconds): `last_analysis_date`, else the latest
    submission or modification date VT gives; None when VT gives no usable date."""
    attrs = attributes(item)
    for key in ("last_analysis_date", "last_submission_date", "last_modification_date"):
        value = safe_timestamp(attrs.get(key))
        if value is not None:
            return value
    return None


# More engines than VirusTotal will ever have: a larger count is corrupt data, not a verdict.
MAX_COUNT = 1_000_000


def valid_count(value: Any) -> int | None:
    """A count VT sent as an int (or an integral float), None when it is not a sane count."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not (isfinite(value) and value.is_integer()):
        return None
    return int(value) if 0 <= value <= MAX_COUNT else None


def analysis_counts(item: dict[str, Any]) -> dict[str, int]:
    """`last_analysis_stats` with only sane counts (see `valid_count`): NaN, Infinity, negative
    or absurd values are left out instead of raising or skewing a score."""
    stats = attributes(item).get("last_analysis_stats")
    if not isinstance(stats, dict):
        return {}
    return {str(k): count for k, v in stats.items() if (count := valid_count(v)) is not None}


def analysis_results(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """`last_analysis_results` by engine, the entries that are objects (others are dropped)."""
    results = attributes(item).get("last_analysis_results")
    if not isinstance(results, dict):
        return {}
    return {str(name): entry for name, entry in results.items() if isinstance(entry, dict)}


def dns_a_records(item: dict[str, Any]) -> tuple[list[str], int]:
    """The IPv4 addresses of a domain's `last_dns_records` of type A, distinct and in VT's
    order, and how many A records were unusable (not an IPv4 address)."""
    records = attributes(item).get("last_dns_records")
    addresses: dict[str, None] = {}
    invalid = 0
    for record in records if isinstance(records, list) else []:
        if not isinstance(record, dict) or record.get("type") != "A":
            continue
        try:
            address = ipaddress.IPv4Address(str(record.get("value")).strip())
        except ValueError:
            invalid += 1
            continue
        addresses[str(address)] = None
    return list(addresses), invalid


def autonomous_system_number(item: dict[str, Any]) -> int | None:
    """The IP's `asn`, when it is a valid 32-bit AS number."""
    value = attributes(item).get("asn")
    if isinstance(value, str) and value.strip().upper().removeprefix("AS").isdigit():
        value = int(value.strip().upper().removeprefix("AS"))
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= 0xFFFFFFFF else None


def country_code(item: dict[str, Any]) -> str | None:
    """The IP's `country` as an upper-case ISO 3166-1 alpha-2 code (syntax only)."""
    value = attributes(item).get("country")
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z]{2}", value.strip()):
        return value.strip().upper()
    return None


def crowdsourced_yara_results(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The file's `crowdsourced_yara_results` entries that are objects."""
    results = attributes(item).get("crowdsourced_yara_results")
    if not isinstance(results, list):
        return []
    return [entry for entry in results if isinstance(entry, dict)]


def url_object_id(url: str, item: dict[str, Any] | None = None) -> str:
    """VT's object id of a URL (the SHA-256 VT names it by): the looked-up object's own id when it
    is one, else the SHA-256 of the URL as given."""
    own = valid_hash((item or {}).get("id"))
    return own or sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
