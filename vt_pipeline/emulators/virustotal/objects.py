"""Builders of VirusTotal API v3 objects (file, url, domain, ip_address, resolution).

Each object is built on request from a small spec and its own seeded RNG, so a corpus of 10,000
files needs no memory for attributes and the same spec always gives the same JSON.

Dates are those of VirusTotal's reports, not of the corpus: a report is what VT last did with an
object, often long ago. Relative to the date an object was seen (its notification, for Livehunt):
- files: first submitted minutes to ten years before (13 % minutes, 13 % hours, 13 % one to
  three days: Livehunt's default MAX_AGE_DAYS keeps those; 14 % weeks, 19 % months, 24 % years,
  4 % unknown). A file first seen within three days was analysed on the submission that matched;
  an older one was last submitted and analysed at any time since, mostly long ago (30 % were
  reanalysed later), so most reports are weeks to years old; `last_modification_date` follows
  the analysis by up to 14 days;
- URLs likewise (first seen minutes to years before, most reports old); domains and IPs have no
  submission dates, their analysis is hours to years old and, in 20 % of them, absent altogether,
  with only `last_modification_date` left (the real IPv4 and domain reports in
  `vt_pipeline_tests/fixtures/vt_real_reports` have no `last_analysis_date`);
- reports with no analysis yet (`FileSpec.analysed`, `url_object(analysed=False)`; the corpus
  picks 3 % of files and 5 % of URLs, at least one of each): just submitted (first and last
  submission the same, minutes before) and not analysed: no `last_analysis_date`,
  `last_analysis_results` empty and every `last_analysis_stats` count 0, as `GET /analyses/{id}`
  reports a queued analysis (developers.virustotal.com/reference/analyses-object). No captured
  object in that state was found public; its attributes are this module's decision.

Field shapes follow VirusTotal's own reports (those in `vt_pipeline_tests/fixtures`): a confirmed
timeout's engine has a null `engine_version`; URLs carry `last_http_response_content_sha256`,
`has_content`, `threat_names` and `last_http_response_headers`; domains an SOA record among
`last_dns_records` (half of them) and `whois_date`, IPs `whois_date`; in 10 % of domain and IP
reports `last_analysis_stats` counts one engine more than `last_analysis_results` lists.
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from vt_pipeline.emulators.virustotal.filetypes import BASE_NAMES, FileType
from vt_pipeline.emulators.virustotal.samples import Hashes

API_ROOT = "https://www.virustotal.com/api/v3"
MINUTE, HOUR, DAY = 60, 3600, 86400

ENGINES: tuple[tuple[str, str], ...] = (
    ("Bkav", "2.0.0.1"),
    ("Lionic", "8.16"),
    ("MicroWorld-eScan", "14.0.409.0"),
    ("ClamAV", "1.4.1.0"),
    ("CAT-QuickHeal", "22.00"),
    ("McAfee", "6.0.6.653"),
    ("Malwarebytes", "4.5.5.54"),
    ("Zillya", "2.0.0.5243"),
    ("Sangfor", "2.22.3.0"),
    ("K7AntiVirus", "12.196.54388"),
    ("Alibaba", "0.3.0.5"),
    ("CrowdStrike", "1.0"),
    ("BitDefender", "7.2"),
    ("Symantec", "1.22.0.0"),
    ("ESET-NOD32", "30412"),
    ("TrendMicro", "24.550.0.1002"),
    ("Avast", "23.9.8494.0"),
    ("Kaspersky", "22.0.1.28"),
    ("Microsoft", "1.1.24090.11"),
    ("Sophos", "2.5.5.0"),
    ("Ikarus", "6.3.22.0"),
    ("Fortinet", "7.0.30.0"),
    ("Google", "1732000000"),
)
FILE_STATS = (
    "harmless",
    "malicious",
    "suspicious",
    "undetected",
    "timeout",
    "confirmed-timeout",
    "failure",
    "type-unsupported",
)
NETWORK_STATS = ("harmless", "malicious", "suspicious", "undetected", "timeout")
FAMILIES = {
    "windows": ("agenttesla", "formbook", "remcos", "lokibot", "asyncrat", "redline", "qakbot"),
    "linux": ("mirai", "gafgyt", "xorddos"),
    "android": ("anubis", "cerberus", "hydra"),
}
HOSTILE_NAMES: tuple[str, ...] = (
    "../../../../etc/cron.d/payload",
    "..\\..\\Windows\\System32\\drivers\\etc\\hosts.exe",
    "invoice|rm -rf ~|.pdf.exe",
    "line one\nline two\r\n.doc",
    "ctrl\x07\x1b[31mred\x08\x7f.exe",
    "\u202egpj.exe",
    "\U0001f608payload\U0001f525.js",
    "请求报价单_2026.exe",
    "\t\x0b\x0c.dll",
    "A" * 4996 + ".exe",
)
HOSTILE_TAGS: tuple[str, ...] = (
    "../../tags",
    "tag with spaces",
    "<script>alert(1)</script>",
    "\u202etxt.exe",
    "tag\nnewline",
    "\U0001f480",
    "x" * 300,
)
_FILE_TAGS = (
    "detect-debug-environment",
    "long-sleeps",
    "obfuscated",
    "overlay",
    "signed",
    "macros",
)
_CATEGORY_VENDORS = ("Forcepoint ThreatSeeker", "Sophos", "BitDefender", "alphaMountain.ai")
_CATEGORIES = (
    "malicious web sites",
    "phishing",
    "newly registered websites",
    "command and control",
)
_COUNTRIES = {"US": "NA", "RU": "EU", "CN": "AS", "NL": "EU", "DE": "EU", "SC": "AF", "BR": "SA"}
_AS_OWNERS = ("DIGITALOCEAN-ASN", "OVH SAS", "Hetzner Online GmbH", "Cloudflare, Inc.", "PONYNET")
_REGISTRARS = ("NameCheap, Inc.", "GoDaddy.com, LLC", "Sav.com, LLC", "REG.RU", "Porkbun LLC")


@dataclass(frozen=True, slots=True)
class FileSpec:
    """What a generated file is; everything else about it is drawn from ``index``."""

    index: int
    hashes: Hashes
    size: int
    file_type: FileType
    seen: int  # first notification date; submission dates are relative to it
    hostile: bool
    analysed: bool = True  # False: just submitted, no analysis yet


@dataclass(frozen=True, slots=True)
class C2:
    """A command-and-control endpoint quoted by malware configs and known to the lookups."""

    host: str
    url: str


def object_envelope(obj_type: str, obj_id: str, collection: str, attrs: dict) -> dict[str, Any]:
    link = f"{API_ROOT}/{collection}/{quote(obj_id, safe='')}"
    return {"id": obj_id, "type": obj_type, "links": {"self": link}, "attributes": attrs}


def url_id(url: str) -> str:
    """VirusTotal's object id for a URL: the SHA-256 of the URL."""
    return hashlib.sha256(url.encode()).hexdigest()


def _day(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y%m%d")


def _verdict(rng: random.Random, family: str, engine: str) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"Trojan.GenericKD.{rng.randint(10**6, 10**8)}"
    if style == 1:
        return f"Win32/{family.title()}.{rng.choice('ABCDEF')}"
    if style == 2:
        return f"HEUR:Trojan.Win32.{family.title()}.gen"
    return f"{family.title()}!{engine[:3].upper()}{rng.randint(100, 999)}"


# Categories of the engines that do not detect a file, with cumulative probabilities.
_CLEAN_CATEGORIES = (
    (0.90, "undetected"),
    (0.93, "suspicious"),
    (0.97, "type-unsupported"),
    (0.985, "timeout"),
    (0.99, "confirmed-timeout"),
    (1.00, "failure"),
)


def _clean_category(rng: random.Random) -> str:
    draw = rng.random()
    return next(category for bound, category in _CLEAN_CATEGORIES if draw < bound)


def file_analysis(
    rng: random.Random, malicious: int, family: str, date: int
) -> tuple[dict[str, int], dict[str, dict]]:
    """last_analysis_stats and last_analysis_results that agree with each other."""
    engines = list(ENGINES)
    rng.shuffle(engines)
    stats = dict.fromkeys(FILE_STATS, 0)
    results: dict[str, dict] = {}
    update = _day(date)
    for position, (name, version) in enumerate(engines):
        if position < malicious:
            category, result = "malicious", _verdict(rng, family, name)
        else:
            category = _clean_category(rng)
            result = "Suspicious.Heuristic" if category == "suspicious" else None
        stats[category] += 1
        results[name] = {
            "category": category,
            "engine_name": name,
            # VT's own report gives a confirmed timeout's engine no version (null)
            "engine_version": None if category == "confirmed-timeout" else version,
            "engine_update": update,
            "method": "blacklist",
            "result": result,
        }
    return stats, dict(sorted(results.items()))


def network_analysis(rng: random.Random, malicious: int) -> tuple[dict[str, int], dict[str, dict]]:
    """URL/domain/IP engines report harmless/undetected rather than file categories."""
    stats = dict.fromkeys(NETWORK_STATS, 0)
    results: dict[str, dict] = {}
    flagged = set(rng.sample(range(len(ENGINES)), malicious))
    for position, (name, _version) in enumerate(ENGINES):
        if position in flagged:
            category, result = "malicious", rng.choice(("malicious", "phishing", "malware"))
        else:
            category = "harmless" if rng.random() < 0.6 else "undetected"
            result = "clean" if category == "harmless" else "unrated"
        stats[category] += 1
        results[name] = {
            "category": category,
            "engine_name": name,
            "method": "blacklist",
            "result": result,
        }
    return stats, results


def _fuzzy_hashes(hashes: Hashes, size: int) -> dict[str, str]:
    """ssdeep/tlsh/vhash look-alikes derived from the real hashes (not real fuzzy hashes)."""
    block = 3 << max(0, (size // 64).bit_length() - 1)
    return {
        "ssdeep": f"{block}:{hashes.sha256[:28]}:{hashes.sha1[:14]}",
        "tlsh": "T1" + (hashes.sha256 + hashes.md5)[:70].upper(),
        "vhash": hashes.md5[:10] + "z" + hashes.sha1[:12],
    }


FRESH = 3 * DAY  # a report first seen within this was analysed on the submission that matched
_AGES = {  # age class -> (shortest, longest) in seconds
    "minutes": (MINUTE, HOUR - 1),
    "hours": (HOUR, DAY - 1),
    "days": (DAY, FRESH),
    "weeks": (7 * DAY, 8 * 7 * DAY),
    "months": (60 * DAY, 365 * DAY),
    "years": (365 * DAY, 10 * 365 * DAY),
}
_FILE_AGES = {"minutes": 13, "hours": 13, "days": 13, "weeks": 14, "months": 19, "years": 24}
_FILE_UNKNOWN_AGE = 4
_URL_AGES = {"minutes": 10, "hours": 10, "days": 10, "weeks": 15, "months": 25, "years": 30}
_ANALYSIS_AGES = {"hours": 15, "days": 10, "weeks": 15, "months": 25, "years": 35}


def _age(rng: random.Random, weights: dict[str, int], unknown: int = 0) -> int | None:
    """Seconds before the reference date, from weighted age classes; None for unknown."""
    names = [*weights, "unknown"]
    kind = rng.choices(names, [*weights.values(), unknown])[0]
    if kind == "unknown":
        return None
    return rng.randint(*_AGES[kind])


def _report_dates(rng: random.Random, first: int | None, seen: int) -> dict[str, int]:
    """last_submission_date, last_analysis_date and last_modification_date of a report first
    submitted at `first` (None: unknown), as of `seen`."""
    if first is None or seen - first < FRESH:
        earliest = first if first is not None else seen - rng.randint(0, HOUR)
        last_submission = max(earliest, seen - rng.randint(0, 900))  # the submission that matched
        last_analysis = min(seen, last_submission + rng.randint(0, 120))
    else:
        last_submission = first + int((seen - first) * rng.random() ** 3)  # mostly long ago
        if rng.random() < 0.3:  # reanalysed since
            last_analysis = last_submission + int((seen - last_submission) * rng.random() ** 2)
        else:
            last_analysis = min(seen, last_submission + rng.randint(0, 120))
    modified = last_analysis + rng.randint(0, min(seen - last_analysis, 14 * DAY))
    return {
        "last_submission_date": last_submission,
        "last_analysis_date": last_analysis,
        "last_modification_date": modified,
    }


def _submission_dates(rng: random.Random, seen: int) -> dict[str, Any]:
    age = _age(rng, _FILE_AGES, _FILE_UNKNOWN_AGE)
    first = None if age is None else seen - age
    dates: dict[str, Any] = {"first_submission_date": first, **_report_dates(rng, first, seen)}
    if first is None and rng.random() < 0.4:
        del dates["first_submission_date"]  # some files have the attribute missing entirely
    return dates


def _just_submitted(rng: random.Random, seen: int) -> dict[str, int]:
    """Dates of an object submitted minutes ago and not analysed yet."""
    submitted = seen - rng.randint(MINUTE, HOUR)
    return {
        "first_submission_date": submitted,
        "last_submission_date": submitted,
        "last_modification_date": submitted + rng.randint(0, 60),
    }


def not_analysed(stat_names: Sequence[str]) -> dict[str, Any]:
    """The verdict attributes of an object with no analysis yet (zero counts, no results)."""
    return {
        "last_analysis_stats": dict.fromkeys(stat_names, 0),
        "last_analysis_results": {},
        "reputation": 0,
        "total_votes": {"harmless": 0, "malicious": 0},
    }


def analysed_at(obj: dict[str, Any], now: int, known: dict[str, Any] | None = None) -> dict:
    """`obj` as the analysis of a submission at `now` leaves it: submitted and analysed now,
    first submitted when `known` (the report VirusTotal held before) says, else now."""
    before = (known or {}).get("attributes") or {}
    first = before.get("first_submission_date") or now
    attrs = {
        **obj["attributes"],
        "first_submission_date": min(first, now),
        "last_submission_date": now,
        "last_analysis_date": now,
        "last_modification_date": now,
        "times_submitted": int(before.get("times_submitted") or 0) + 1,
    }
    return {**obj, "attributes": attrs}


def is_analysed(obj: dict[str, Any]) -> bool:
    """Whether VirusTotal has analysed the object (it has engine results)."""
    return bool((obj.get("attributes") or {}).get("last_analysis_results"))


def _names(rng: random.Random, spec: FileSpec) -> list[str]:
    suffix = f".{spec.file_type.extension}" if spec.file_type.extension else ""
    names = [f"{base}{suffix}" for base in rng.sample(BASE_NAMES, rng.randint(1, 3))]
    names.append(spec.hashes.sha256 + suffix)
    if spec.hostile:
        names[0:0] = rng.sample(HOSTILE_NAMES, 2)
    return names


def _platform(file_type: FileType) -> str:
    return {"elf": "linux", "android": "android"}.get(file_type.type_tag, "windows")


def _threat_classification(rng: random.Random, family: str, malicious: int) -> dict:
    category = rng.choice(("trojan", "downloader", "ransomware", "spyware"))
    return {
        "suggested_threat_label": f"{category}.{family}/generic",
        "popular_threat_category": [{"count": malicious, "value": category}],
        "popular_threat_name": [{"count": max(1, malicious // 2), "value": family}],
    }


def _malware_config(rng: random.Random, family: str, c2s: Sequence[C2]) -> dict:
    chosen = rng.sample(list(c2s), min(len(c2s), rng.randint(1, 3)))
    connections = [
        {"host": c2.host, "url": c2.url, "categories": ["C2"], "protocol_tags": ["http", "tcp"]}
        for c2 in chosen
    ]
    return {
        "families": [
            {
                "family": family,
                "alt_names": [family.upper(), f"{family}_bot"],
                "configs": [{"net_info": {"connections": connections}}],
            }
        ]
    }


def _crowdsourced_results(rng: random.Random, yara_rulesets: Sequence[dict]) -> list[dict]:
    results = []
    for ruleset in rng.sample(list(yara_rulesets), rng.randint(1, 2)):
        attrs = ruleset["attributes"]
        results.append(
            {
                "ruleset_id": ruleset["id"],
                "rule_name": rng.choice(attrs["rule_names"]),
                "ruleset_name": attrs["name"],
                "author": attrs["author"],
                "source": attrs["source"],
                "description": "Detects artefacts of a known malware family",
                "match_in_subfile": rng.random() < 0.2,
            }
        )
    return results


def _file_tags(rng: random.Random, spec: FileSpec) -> list[str]:
    tags = [spec.file_type.type_tag, *rng.sample(_FILE_TAGS, rng.randint(0, 3))]
    if spec.hostile:
        tags += rng.sample(HOSTILE_TAGS, 2)
    return tags


def _verdicts(rng: random.Random, file_type: FileType, analysis_date: int) -> dict:
    """Verdicts shared by uploaded and generated files (some with 0 detections)."""
    malicious = 0 if rng.random() < 0.15 else rng.randint(1, 18)
    family = rng.choice(FAMILIES[_platform(file_type)])
    stats, results = file_analysis(rng, malicious, family, analysis_date)
    attrs = {
        "last_analysis_stats": stats,
        "last_analysis_results": results,
        "reputation": -malicious * rng.randint(0, 5),
        "total_votes": {"harmless": rng.randint(0, 2), "malicious": rng.randint(0, malicious)},
    }
    if malicious:
        attrs["popular_threat_classification"] = _threat_classification(rng, family, malicious)
    return attrs


def file_object(
    spec: FileSpec, seed: int, yara_rulesets: Sequence[dict], c2s: Sequence[C2]
) -> dict:
    """A realistic ``file`` object for a generated sample."""
    rng = random.Random(f"vt-file:{seed}:{spec.index}")
    file_type = spec.file_type
    analysed = spec.analysed
    dates = _submission_dates(rng, spec.seen) if analysed else _just_submitted(rng, spec.seen)
    names = _names(rng, spec)
    attrs: dict[str, Any] = {
        "md5": spec.hashes.md5,
        "sha1": spec.hashes.sha1,
        "sha256": spec.hashes.sha256,
        **_fuzzy_hashes(spec.hashes, spec.size),
        "size": spec.size,
        "type_description": file_type.description,
        "type_tag": file_type.type_tag,
        "magic": file_type.magic,
        "names": names,
        "meaningful_name": names[0],
        "tags": _file_tags(rng, spec),
        "type_tags": list(file_type.type_tags),
        **dates,
        "times_submitted": rng.randint(1, 40) if analysed else 1,
        "unique_sources": rng.randint(1, 12) if analysed else 1,
        **(
            _verdicts(rng, file_type, dates["last_analysis_date"])
            if analysed
            else not_analysed(FILE_STATS)
        ),
    }
    if file_type.extension:
        attrs["type_extension"] = file_type.extension
    if file_type.type_tag in ("peexe", "pedll"):  # compiled before VirusTotal first saw it
        first = attrs.get("first_submission_date") or spec.seen
        attrs["creation_date"] = first - rng.randint(DAY, 5 * 365 * DAY)
    if not analysed:
        return object_envelope("file", spec.hashes.sha256, "files", attrs)
    if yara_rulesets and rng.random() < 0.5:
        attrs["crowdsourced_yara_results"] = _crowdsourced_results(rng, yara_rulesets)
    threat = attrs.get("popular_threat_classification")
    if threat and c2s and rng.random() < 0.12:
        family = threat["popular_threat_name"][0]["value"]
        attrs["malware_config"] = _malware_config(rng, family, c2s)
    return object_envelope("file", spec.hashes.sha256, "files", attrs)


def submitted_file(hashes: Hashes, size: int, name: str, file_type: FileType, date: int) -> dict:
    """The file object VirusTotal would hold after an upload the corpus did not know."""
    rng = random.Random(f"vt-upload:{hashes.sha256}")
    dates = {
        "first_submission_date": date,
        "last_submission_date": date,
        "last_analysis_date": date,
    }
    attrs = {
        "md5": hashes.md5,
        "sha1": hashes.sha1,
        "sha256": hashes.sha256,
        **_fuzzy_hashes(hashes, size),
        "size": size,
        "type_description": file_type.description,
        "type_tag": file_type.type_tag,
        "magic": file_type.magic,
        "names": [name],
        "meaningful_name": name,
        "tags": [file_type.type_tag],
        "type_tags": list(file_type.type_tags),
        **dates,
        "times_submitted": 1,
        "unique_sources": 1,
        **_verdicts(rng, file_type, date),
    }
    if file_type.extension:
        attrs["type_extension"] = file_type.extension
    return object_envelope("file", hashes.sha256, "files", attrs)


def _network_common(rng: random.Random, malicious: int) -> dict[str, Any]:
    stats, results = network_analysis(rng, malicious)
    vendors = rng.sample(_CATEGORY_VENDORS, rng.randint(0, 3))
    return {
        "categories": {vendor: rng.choice(_CATEGORIES) for vendor in sorted(vendors)},
        "last_analysis_stats": stats,
        "last_analysis_results": results,
        "reputation": -malicious * rng.randint(0, 3),
        "tags": rng.sample(("phishing", "c2", "suspicious-tld", "self-signed"), rng.randint(0, 2)),
        "total_votes": {"harmless": rng.randint(0, 3), "malicious": rng.randint(0, 3)},
    }


def url_object(url: str, seed: int, seen: int, analysed: bool = True) -> dict:
    """A URL's report as of `seen`; not `analysed`: just submitted, no analysis yet."""
    rng = random.Random(f"vt-url:{seed}:{url}")
    if not analysed:
        attrs: dict[str, Any] = {
            "url": url,
            **_just_submitted(rng, seen),
            "times_submitted": 1,
            "categories": {},
            "tags": [],
            **not_analysed(NETWORK_STATS),
        }
        return object_envelope("url", url_id(url), "urls", attrs)
    first = seen - (_age(rng, _URL_AGES) or 0)
    dates = _report_dates(rng, first, seen)
    malicious = rng.randint(0, 12)
    attrs = {
        "url": url,
        "last_final_url": url,
        "title": rng.choice(("Sign in to your account", "Index of /", "404 Not Found", "")),
        "first_submission_date": first,
        **dates,
        "times_submitted": rng.randint(1, 25),
        "last_http_response_code": rng.choice((200, 200, 200, 302, 404)),
        **_http_response(rng, dates["last_analysis_date"], malicious),
        **_network_common(rng, malicious),
    }
    return object_envelope("url", url_id(url), "urls", attrs)


_THREAT_NAMES = ("C2/Generic-A", "Mal/HTMLGen-A", "Troj/Phish-XYZ", "Mal/Redir-C")
_SERVERS = ("nginx/1.21.4", "Apache", "cloudflare", "LiteSpeed")


def _http_response(rng: random.Random, fetched: int, malicious: int) -> dict[str, Any]:
    """What VT's fetch of a URL recorded, in the fields of a real URL report (OpenCTI's
    connector test resource `vt_test_url.json`: content hash, headers, threat names)."""
    content = rng.randbytes(rng.randint(1, 2048)) if rng.random() < 0.7 else b""
    moment = datetime.fromtimestamp(fetched, UTC)
    return {
        "last_http_response_content_sha256": hashlib.sha256(content).hexdigest(),
        "has_content": bool(content),
        "threat_names": rng.sample(_THREAT_NAMES, 1) if malicious else [],
        "last_http_response_headers": {
            "date": moment.strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "transfer-encoding": "chunked",
            "connection": "keep-alive",
            "server": rng.choice(_SERVERS),
        },
    }


def _miscounted(rng: random.Random, common: dict[str, Any]) -> dict[str, Any]:
    """In 10 % of domain and IP reports the stats count one harmless engine more than the
    results list, as in both of VirusTotal's own reports of that kind we hold (93 vs 92)."""
    if rng.random() < 0.1:
        stats = dict(common["last_analysis_stats"])
        stats["harmless"] += 1
        return {**common, "last_analysis_stats": stats}
    return common


def _analysis_dates(rng: random.Random, seen: int) -> dict[str, int]:
    """A domain's or IP's report dates: analysed hours to years before `seen`, and in 20 % of
    reports no `last_analysis_date` at all, only the modification date."""
    analysed = seen - (_age(rng, _ANALYSIS_AGES) or 0)
    modified = analysed + rng.randint(0, min(seen - analysed, 30 * DAY))
    if rng.random() < 0.2:
        return {"last_modification_date": modified}
    return {"last_analysis_date": analysed, "last_modification_date": modified}


def domain_addresses(seed: int, domain: str) -> list[str]:
    """The IPv4 addresses a domain resolves to, shared by its DNS records and resolutions."""
    rng = random.Random(f"vt-dns:{seed}:{domain}")
    return [random_ipv4(rng) for _ in range(rng.randint(1, 3))]


def domain_object(domain: str, seed: int, seen: int) -> dict:
    rng = random.Random(f"vt-domain:{seed}:{domain}")
    records = [
        {"type": "A", "value": address, "ttl": rng.choice((300, 3600))}
        for address in domain_addresses(seed, domain)
    ]
    name_server = f"ns{rng.randint(1, 4)}.dnsowl.com"
    records.append({"type": "NS", "value": name_server, "ttl": 86400})
    if rng.random() < 0.5:  # an SOA record, in the shape of VT's own domain report
        records.append(
            {
                "rname": "hostmaster.dnsowl.com",
                "retry": 900,
                "value": name_server,
                "minimum": 86400,
                "refresh": 7200,
                "expire": 1209600,
                "ttl": 900,
                "serial": rng.randint(1, 2**31),
                "type": "SOA",
            }
        )
    dates = _analysis_dates(rng, seen)
    report = dates.get("last_analysis_date", dates["last_modification_date"])
    created = report - rng.randint(DAY, 3 * 365 * DAY)  # registered before VirusTotal saw it
    registrar = rng.choice(_REGISTRARS)
    attrs = {
        "last_dns_records": records,
        "last_dns_records_date": max(created, report - rng.randint(0, DAY)),
        "registrar": registrar,
        "creation_date": created,
        "tld": domain.rsplit(".", 1)[-1],
        "whois": f"Domain Name: {domain}\nRegistrar: {registrar}\nCreation Date: {created}",
        "whois_date": max(created, report - rng.randint(0, 30 * DAY)),
        **dates,
        **_miscounted(rng, _network_common(rng, rng.randint(0, 10))),
    }
    return object_envelope("domain", domain, "domains", attrs)


def ip_object(address: str, seed: int, seen: int) -> dict:
    rng = random.Random(f"vt-ip:{seed}:{address}")
    network = ipaddress.ip_network(f"{address}/{16 if ':' not in address else 32}", strict=False)
    country = rng.choice(sorted(_COUNTRIES))
    asn = rng.randint(1000, 64000)
    attrs = {
        "as_owner": rng.choice(_AS_OWNERS),
        "asn": asn,
        "network": str(network),
        "country": country,
        "continent": _COUNTRIES[country],
        "regional_internet_registry": rng.choice(("ARIN", "RIPE NCC", "APNIC", "LACNIC")),
        "whois": f"NetRange: {network}\nOriginAS: AS{asn}\nCountry: {country}",
        **(dates := _analysis_dates(rng, seen)),
        "whois_date": dates["last_modification_date"] - rng.randint(0, 30 * DAY),
        **_miscounted(rng, _network_common(rng, rng.randint(0, 8))),
    }
    return object_envelope("ip_address", address, "ip_addresses", attrs)


def resolution_objects(domain: str, seed: int, seen: int) -> list[dict]:
    rng = random.Random(f"vt-resolutions:{seed}:{domain}")
    return [
        resolution_object(rng, domain, address, seen - rng.randint(0, 30 * DAY))
        for address in domain_addresses(seed, domain)
    ]


def resolution_object(rng: random.Random, domain: str, address: str, date: int) -> dict:
    """A resolution of `domain` to `address` seen at `date` (its id: the IP, then the domain)."""
    attrs = {
        "date": date,
        "host_name": domain,
        "ip_address": address,
        "resolver": "VirusTotal",
        "host_name_last_analysis_stats": network_analysis(rng, rng.randint(0, 5))[0],
        "ip_address_last_analysis_stats": network_analysis(rng, rng.randint(0, 5))[0],
    }
    return object_envelope("resolution", address + domain, "resolutions", attrs)


def random_ipv4(rng: random.Random) -> str:
    """A globally routable IPv4 address."""
    while True:
        address = ipaddress.IPv4Address(rng.randint(0x01000000, 0xDFFFFFFF))
        if address.is_global:
            return str(address)


def random_ipv6(rng: random.Random) -> str:
    return str(ipaddress.IPv6Address((0x2A0 << 116) | rng.getrandbits(116)))
