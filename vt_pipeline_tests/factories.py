"""Builders of raw VirusTotal payloads, shaped like the API returns them, for any test.

- `file_notification`, `url_notification`, `domain_notification`, `ip_notification`: one
  `/ioc_stream` item (a VT object with `context_attributes`), Livehunt-style.
- `hunting_ruleset`: the `data` object of `GET /intelligence/hunting_rulesets/{id}`.
- `yara_rule`: the source of one YARA rule, to put in a ruleset.
- `malware_config`: an `attributes.malware_config` value with network connections.

Everything is deterministic: hashes derive from a seed string, dates are fixed constants, and
notification ids derive from the subject and the date unless given. Keyword arguments override
the defaults; `attributes=` / `context=` merge extra raw keys over the built ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

# 2025-11-20T10:00:00Z: the default notification date of every factory.
NOTIFICATION_DATE = 1_763_632_800
DAY = 86_400
ENGINES = ("Kaspersky", "Microsoft", "ESET-NOD32", "BitDefender", "Avast")


def hashes_for(seed: str) -> dict[str, str]:
    """MD5, SHA-1 and SHA-256 of a seed string: stable, well-formed, distinct per seed."""
    data = seed.encode()
    return {
        "md5": hashlib.md5(data).hexdigest(),
        "sha1": hashlib.sha1(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def analysis(malicious: int = 3, harmless: int = 0, undetected: int = 2) -> dict[str, Any]:
    """`last_analysis_stats` and `last_analysis_results` that agree with each other."""
    results: dict[str, Any] = {}
    verdicts = ["malicious"] * malicious + ["harmless"] * harmless + ["undetected"] * undetected
    for index, category in enumerate(verdicts):
        engine = ENGINES[index] if index < len(ENGINES) else f"Engine{index}"
        results[engine] = {
            "category": category,
            "engine_name": engine,
            "engine_version": "1.0",
            "engine_update": "20251120",
            "method": "blacklist",
            "result": f"Trojan.Generic.{index}" if category == "malicious" else None,
        }
    stats = {
        "malicious": malicious,
        "harmless": harmless,
        "undetected": undetected,
        "suspicious": 0,
        "timeout": 0,
        "confirmed-timeout": 0,
        "failure": 0,
        "type-unsupported": 0,
    }
    return {"last_analysis_stats": stats, "last_analysis_results": results}


def _context(
    object_id: str,
    *,
    notification_id: str | None,
    notification_date: int | str | None,
    rule_name: str | None,
    sources: Sequence[tuple[str, str]],
    tags: Sequence[str] | None,
    snippet: str | None,
    context: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """`context_attributes` of an ioc_stream item, with the tags VT adds by default (the rule
    name lowercased, the ruleset names, the object id)."""
    if tags is None:
        tags = [*([rule_name.lower()] if rule_name else []), *(label for _, label in sources)]
        tags.append(object_id)
    built: dict[str, Any] = {
        "notification_id": notification_id or f"{object_id[:16]}-{notification_date}",
        "notification_date": notification_date,
        "origin": "hunting",
        "sources": [
            {"type": "hunting_ruleset", "id": rid, "label": label} for rid, label in sources
        ],
        "tags": list(tags),
        "hunting_info": {
            "rule_name": rule_name,
            "snippet": snippet,
            "source_country": "FR",
            "source_key": "a1b2c3d4",
        },
    }
    built.update(context or {})
    return built


def _item(
    obj_type: str, obj_id: str, attributes: dict[str, Any], ctx: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": obj_type,
        "id": obj_id,
        "links": {"self": f"https://www.virustotal.com/api/v3/{obj_type}s/{obj_id}"},
        "attributes": attributes,
        "context_attributes": ctx,
    }


def file_notification(
    seed: str = "sample-1",
    *,
    notification_id: str | None = None,
    notification_date: int | str | None = NOTIFICATION_DATE,
    rule_name: str | None = "Test_Rule",
    sources: Sequence[tuple[str, str]] = (("ruleset-1", "test_ruleset"),),
    tags: Sequence[str] | None = None,
    snippet: str | None = "4d 5a 90 00  MZ..",
    meaningful_name: str | None = "invoice.exe",
    names: Sequence[str] | None = None,
    size: int | None = 4096,
    type_extension: str | None = "exe",
    malicious: int = 3,
    first_submission_date: int | None = None,
    type_tags: Sequence[str] = ("executable", "windows", "win32", "pe", "peexe"),
    vt_tags: Sequence[str] = ("peexe", "overlay"),
    malware_config: dict[str, Any] | None = None,
    attributes: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A Livehunt notification about a file (the common case); the file's hashes derive from
    `seed`, its first submission is one hour before the notification by default."""
    hashes = hashes_for(seed)
    if names is None:
        names = [meaningful_name, "sample.bin"] if meaningful_name else ["sample.bin"]
    if first_submission_date is None and isinstance(notification_date, int):
        first_submission_date = notification_date - 3600
    attrs: dict[str, Any] = {
        **hashes,
        "size": size,
        "type_extension": type_extension,
        "type_tag": "peexe",
        "type_description": "Win32 EXE",
        "magic": "PE32 executable (GUI) Intel 80386, for MS Windows",
        "meaningful_name": meaningful_name,
        "names": list(names),
        "tags": list(vt_tags),
        "type_tags": list(type_tags),
        "first_submission_date": first_submission_date,
        "last_submission_date": notification_date,
        "last_analysis_date": notification_date,
        "times_submitted": 1,
        "unique_sources": 1,
        "reputation": 0,
        **analysis(malicious=malicious),
    }
    if malware_config is not None:
        attrs["malware_config"] = malware_config
    attrs = {key: value for key, value in attrs.items() if value is not None}
    attrs.update(attributes or {})
    ctx = _context(
        hashes["sha256"],
        notification_id=notification_id,
        notification_date=notification_date,
        rule_name=rule_name,
        sources=sources,
        tags=tags,
        snippet=snippet,
        context=context,
    )
    return _item("file", hashes["sha256"], attrs, ctx)


def url_notification(
    url: str = "http://malicious.example.com/payload.php?id=1",
    *,
    notification_id: str | None = None,
    notification_date: int | str | None = NOTIFICATION_DATE,
    rule_name: str | None = "Url_Rule",
    sources: Sequence[tuple[str, str]] = (("ruleset-net", "network_ruleset"),),
    tags: Sequence[str] | None = None,
    malicious: int = 3,
    vt_tags: Sequence[str] = ("phishing",),
    attributes: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A notification of a network (vt.net) rule about a URL; the VT id is the URL's SHA-256."""
    object_id = hashlib.sha256(url.encode()).hexdigest()
    attrs: dict[str, Any] = {
        "url": url,
        "last_final_url": url,
        "title": "Login",
        "tags": list(vt_tags),
        "first_submission_date": NOTIFICATION_DATE - DAY,
        "last_analysis_date": notification_date,
        **analysis(malicious=malicious),
    }
    attrs.update(attributes or {})
    ctx = _context(
        object_id,
        notification_id=notification_id,
        notification_date=notification_date,
        rule_name=rule_name,
        sources=sources,
        tags=tags,
        snippet=None,
        context=context,
    )
    return _item("url", object_id, attrs, ctx)


def domain_notification(
    domain: str = "malicious.example.com",
    *,
    notification_id: str | None = None,
    notification_date: int | str | None = NOTIFICATION_DATE,
    rule_name: str | None = "Domain_Rule",
    sources: Sequence[tuple[str, str]] = (("ruleset-net", "network_ruleset"),),
    tags: Sequence[str] | None = None,
    malicious: int = 3,
    attributes: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A notification of a network rule about a domain (the VT id is the domain)."""
    attrs: dict[str, Any] = {
        "registrar": "Example Registrar",
        "creation_date": NOTIFICATION_DATE - 30 * DAY,
        "tags": [],
        "last_dns_records": [{"type": "A", "value": "203.0.113.7", "ttl": 300}],
        **analysis(malicious=malicious),
    }
    attrs.update(attributes or {})
    ctx = _context(
        domain,
        notification_id=notification_id,
        notification_date=notification_date,
        rule_name=rule_name,
        sources=sources,
        tags=tags,
        snippet=None,
        context=context,
    )
    return _item("domain", domain, attrs, ctx)


def ip_notification(
    ip: str = "203.0.113.7",
    *,
    notification_id: str | None = None,
    notification_date: int | str | None = NOTIFICATION_DATE,
    rule_name: str | None = "Ip_Rule",
    sources: Sequence[tuple[str, str]] = (("ruleset-net", "network_ruleset"),),
    tags: Sequence[str] | None = None,
    malicious: int = 3,
    attributes: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A notification of a network rule about an IPv4 or IPv6 address (type `ip_address`)."""
    attrs: dict[str, Any] = {
        "as_owner": "Example AS",
        "asn": 64500,
        "country": "FR",
        "network": "203.0.113.0/24",
        "tags": [],
        **analysis(malicious=malicious),
    }
    attrs.update(attributes or {})
    ctx = _context(
        ip,
        notification_id=notification_id,
        notification_date=notification_date,
        rule_name=rule_name,
        sources=sources,
        tags=tags,
        snippet=None,
        context=context,
    )
    return _item("ip_address", ip, attrs, ctx)


def yara_rule(
    name: str = "Test_Rule",
    *,
    description: str | None = "Detects the test sample",
    date: str | None = "2025-01-15",
    text: str = "MZ",
    condition: str = "$a",
) -> str:
    """The YARA source of one rule with optional `description` and `date` metadata."""
    meta = []
    if description is not None:
        meta.append(f'        description = "{description}"')
    if date is not None:
        meta.append(f'        date = "{date}"')
    meta_block = ("    meta:\n" + "\n".join(meta) + "\n") if meta else ""
    return (
        f"rule {name}\n{{\n{meta_block}"
        f'    strings:\n        $a = "{text}"\n'
        f"    condition:\n        {condition}\n}}\n"
    )


def hunting_ruleset(
    ruleset_id: str = "ruleset-1",
    rules: str | None = None,
    *,
    name: str = "test_ruleset",
    creation_date: int | None = NOTIFICATION_DATE - 300 * DAY,
    modification_date: int | None = NOTIFICATION_DATE - 10 * DAY,
    attributes: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `data` object of `GET /intelligence/hunting_rulesets/{id}`; rules default to two
    rules, `Test_Rule` and `Other_Rule`."""
    if rules is None:
        rules = yara_rule("Test_Rule") + "\n" + yara_rule("Other_Rule", text="ELF")
    attrs: dict[str, Any] = {
        "name": name,
        "rules": rules,
        "enabled": True,
        "limit": 100,
        "creation_date": creation_date,
        "modification_date": modification_date,
        "notification_emails": [],
        "tags": [],
    }
    attrs = {key: value for key, value in attrs.items() if value is not None}
    attrs.update(attributes or {})
    return {
        "type": "hunting_ruleset",
        "id": ruleset_id,
        "links": {
            "self": f"https://www.virustotal.com/api/v3/intelligence/hunting_rulesets/{ruleset_id}"
        },
        "attributes": attrs,
    }


def malware_config(
    *,
    family: str = "AgentTesla",
    alt_names: Sequence[str] = ("agensla",),
    hosts: Sequence[str] = ("198.51.100.23", "c2.evil-domain.net"),
    urls: Sequence[str] = ("http://c2.evil-domain.net/gate.php",),
    categories: Sequence[str] = ("c2",),
    protocol_tags: Sequence[str] = ("http",),
) -> dict[str, Any]:
    """An `attributes.malware_config` with one family, one config and one connection per host
    and per URL (as VT's config extraction reports them)."""
    connections: list[dict[str, Any]] = [
        {
            "host": host,
            "port": 443,
            "categories": list(categories),
            "protocol_tags": list(protocol_tags),
        }
        for host in hosts
    ]
    connections += [
        {"url": url, "categories": list(categories), "protocol_tags": list(protocol_tags)}
        for url in urls
    ]
    return {
        "families": [
            {
                "family": family,
                "alt_names": list(alt_names),
                "configs": [{"net_info": {"connections": connections}, "version": "3"}],
            }
        ]
    }
