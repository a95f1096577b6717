"""Pure accessors for raw VirusTotal objects: Livehunt notifications (`/ioc_stream` items) and
looked-up files, URLs, domains and IPs.

A notification is kept exactly as VirusTotal returned it (a dict). Everything downstream reads
it through these helpers, so the filters and the STIX mapping agree on what a field means and
on what to do when VirusTotal leaves it out or sends something hostile. No I/O, no clock.
"""

from __future__ import annotations

import base64
import ipaddress
import math
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
# What a number from VT can be: a 64-bit integer (what the files table and OpenCTI hold).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Unix seconds of 0001-01-01 and 9999-12-31T23:59:59: a date outside is no date.
_MIN_SECONDS, _MAX_SECONDS = -62_135_596_800, 253_402_300_799
# Parts of a notification that must be JSON objects when present (readers call .get on them).
_OBJECT_PARTS = ("attributes", "context_attributes")


class InvalidNotification(ValueError):
    """A notification whose subject cannot be turned into a safe observable."""


@dataclass(frozen=True)
class Observable:
    """What a notification is about: a file (by SHA-256) or a network indicator."""

    kind: ObservableKind
    value: str  # SHA-256 for files, the URL / domain / IP otherwise


def attributes(item: dict[str, Any]) -> dict[str, Any]:
    """The object's attributes; {} when missing or not an object (hostile shapes read as empty)."""
    return _mapping(item.get("attributes")) if isinstance(item, dict) else {}


def context(item: dict[str, Any]) -> dict[str, Any]:
    """The notification's context_attributes; {} when missing or not an object."""
    return _mapping(item.get("context_attributes")) if isinstance(item, dict) else {}


def malformed_reason(item: Any) -> str | None:
    """Why a notification is not VT's format, or None. Such an item is dropped (`malformed`).

    VT sends JSON objects where the readers expect them, finite 64-bit numbers and valid Unicode.
    Anything else (a list for `attributes`, `size` 2**64, `Infinity`, a lone surrogate) cannot be
    stored as Parquet, sent to OpenCTI or even encoded as UTF-8, so one such item would otherwise
    fail its whole window. The whole item is checked, iteratively (no recursion limit to hit).
    """
    if not isinstance(item, dict):
        return f"a notification is a JSON object, not {type(item).__name__}"
    for part in _OBJECT_PARTS:
        if item.get(part) is not None and not isinstance(item[part], dict):
            return f"{part} is a {type(item[part]).__name__}, not an object"
    for part in ("hunting_info",):
        value = context(item).get(part)
        if value is not None and not isinstance(value, dict):
            return f"context_attributes.{part} is a {type(value).__name__}, not an object"
    stats = attributes(item).get("last_analysis_stats")
    if stats is not None and not isinstance(stats, dict):
        return f"last_analysis_stats is a {type(stats).__name__}, not an object"
    if _is_clean(item):
        return None
    pending: list[tuple[str, Any]] = [("", item)]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict):
            pending.extend((f"{path}.{key}", inner) for key, inner in value.items())
            pending.extend((f"{path} (key)", key) for key in value)
        elif isinstance(value, list):
            pending.extend((f"{path}[{index}]", inner) for index, inner in enumerate(value))
        elif _bad_scalar(value):
            return f"{safe_text(path)} is {_bad_scalar(value)}"
    return None


def _is_clean(item: Any) -> bool:
    """No value anywhere in `item` that `_bad_scalar` rejects: the fast walk, without the
    paths (most items are clean; the path of a bad value is only spelled out when one is)."""
    pending = [item]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
            pending.extend(value.keys())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, str):
            if not value.isascii() and not is_encodable(value):
                return False
        elif isinstance(value, bool) or value is None:
            continue
        elif _bad_scalar(value):
            return False
    return True


def _bad_scalar(value: Any) -> str | None:
    """What is wrong with a scalar VT should never send, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        return "an integer outside 64 bits"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str) and not is_encodable(value):
        return "not valid Unicode (lone surrogate)"
    return None


def is_encodable(text: str) -> bool:
    """True when the text can be written as UTF-8 (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def safe_text(value: Any, limit: int = 200) -> str:
    """A VT-supplied value as text fit for logs and metadata: valid UTF-8, one line, clipped."""
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)[:limit]


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


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
    seconds: int | None = None
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        seconds = int(value) if math.isfinite(value) else None
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.lstrip("-").isdigit() and len(text) <= 20:
            seconds = int(text)
        else:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=UTC)
            seconds = int(parsed.timestamp())
    if seconds is None or not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        return None  # a date no calendar can spell (10**30) is no date
    return seconds


def rule_name(item: dict[str, Any]) -> str | None:
    hunting = _mapping(context(item).get("hunting_info"))
    name = hunting.get("rule_name") or context(item).get("rule_name")
    return str(name) if name else None


def hunting_snippet(item: dict[str, Any]) -> str | None:
    """The matched bytes VT shows (hex dump); `notification_snippet` in the older API."""
    hunting = _mapping(context(item).get("hunting_info"))
    snippet = hunting.get("snippet") or context(item).get("notification_snippet")
    return str(snippet) if snippet else None


def hunting_sources(item: dict[str, Any]) -> list[dict[str, str]]:
    """The Livehunt rulesets that produced the notification, as `{id, label}` dicts.

    Current API: `sources: [{type: hunting_ruleset, id, label}]`; the older
    `hunting_notification_files` API: `ruleset_id` / `ruleset_name`.
    """
    ctx = context(item)
    found: list[dict[str, str]] = []
    for source in _list(ctx.get("sources")):
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
    return [str(tag) for tag in _list(tags) if tag not in (None, "")]


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
    if not isinstance(value, str) or not value or len(value) > 8192 or not is_encodable(value):
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
    """Engine counts by category; values that are not finite 64-bit numbers are left out."""
    stats = attributes(item).get("last_analysis_stats")
    if not isinstance(stats, dict):
        return {}
    return {
        str(k): int(v)
        for k, v in stats.items()
        if isinstance(v, int | float)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and INT64_MIN <= v <= INT64_MAX
    }


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
