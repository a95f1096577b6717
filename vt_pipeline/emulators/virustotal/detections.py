"""Crowdsourced Sigma and IDS results on file objects, and `GET /sigma_rules/{id}`.

Shapes (shared/reference/virustotal-expansions.md section 2):
- `sigma_analysis_results[]`: `rule_id`, `rule_title`, `rule_level` (low|medium|high|critical),
  `rule_source`, `rule_author`, `rule_description`, `match_context` (a list; here
  `[{"values": {event fields}}]`, the inner shape UNCONFIRMED), with `sigma_analysis_stats`
  `{critical, high, medium, low}` (XSOAR's GTI test data `file_sigma_analysis_results.json`).
- `crowdsourced_ids_results[]`: `rule_id` ("1:2027865"), `rule_msg`, `rule_category`,
  `alert_severity` (high|medium|low|info), `rule_source`, `rule_url`, `rule_raw` (the rule's
  text) and `alert_context[]` {dest_ip, dest_port, hostname, protocol, src_ip, src_port, url},
  sorted by severity; `crowdsourced_ids_stats` {info, high, low, medium} (VirusTotal's file
  object reference; `rule_raw`/`rule_url` as Splunk SOAR's VirusTotal v3 app documents them
  with example values).
- `GET /sigma_rules/{id}` -> `{"data": {"type": "sigma_rule", "id", "attributes", "links"}}`,
  attributes title, description, author, level, status, source, references, tags,
  false_positives, fields, log_source {category, product, service, definition} and detection
  {condition, details} (SPEC getSigmaRules; developers.virustotal.com sigma-rule-object). No
  public response shows a raw YAML field, so none is served: a consumer rebuilds the rule.

Only a synthetic corpus gets them (`detection_attributes`, from an RNG of its own so the rest
of the file object does not change); captured reports are served as captured.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

from vt_pipeline.emulators.virustotal.objects import API_ROOT, C2

SIGMA_SHARE = 0.4  # of detected files with Sigma matches
IDS_SHARE = 0.35  # of detected files with IDS alerts
_SIGMA_SOURCE = "Sigma Integrated Rule Set (GitHub)"
_LEVEL_ORDER = ("critical", "high", "medium", "low")
_IDS_ORDER = ("high", "medium", "low", "info")


def _rule_id(title: str) -> str:
    return hashlib.sha256(f"vt-emulator-sigma:{title}".encode()).hexdigest()


# title, level, log source, detection details, condition, ATT&CK tags, matched event fields
_SIGMA: tuple[tuple[str, str, dict[str, str], dict[str, Any], list[str], dict[str, str]], ...] = (
    (
        "Suspicious Encoded PowerShell Command Line",
        "high",
        {"category": "process_creation", "product": "windows"},
        {"selection": {"Image|endswith": "\\powershell.exe", "CommandLine|contains": " -enc "}},
        ["attack.execution", "attack.t1059.001"],
        {"Image": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"},
    ),
    (
        "Scheduled Task Creation Via Schtasks.EXE",
        "medium",
        {"category": "process_creation", "product": "windows"},
        {"selection": {"Image|endswith": "\\schtasks.exe", "CommandLine|contains": " /create "}},
        ["attack.persistence", "attack.t1053.005"],
        {"Image": "C:\\Windows\\System32\\schtasks.exe"},
    ),
    (
        "CurrentVersion Autorun Keys Modification",
        "medium",
        {"category": "registry_set", "product": "windows"},
        {
            "selection": {
                "TargetObject|contains": "\\Software\\Microsoft\\Windows\\CurrentVersion\\Run"
            }
        },
        ["attack.persistence", "attack.t1547.001"],
        {"TargetObject": "HKU\\S-1-5-21\\Software\\Microsoft\\Windows\\CurrentVersion\\Run\\upd"},
    ),
    (
        "File Deletion Via Del | Cmd.EXE",
        "low",
        {"category": "process_creation", "product": "windows"},
        {"selection": {"CommandLine|contains": "del /f /q"}},
        ["attack.defense_evasion", "attack.t1070.004"],
        {"CommandLine": 'cmd.exe /c del /f /q "%TEMP%\\*.tmp" | exit'},
    ),
    (
        "Crontab Enumeration Or Modification",
        "critical",
        {"category": "process_creation", "product": "linux"},
        {"selection": {"Image|endswith": "/crontab", "CommandLine|contains": "-e"}},
        ["attack.persistence", "attack.t1053.003"],
        {"Image": "/usr/bin/crontab"},
    ),
)

# sid, message, category, severity, source, url, protocol, raw rule text
_IDS: tuple[tuple[str, str, str, str, str, str, str, str], ...] = (
    (
        "1:2027865",
        "ET INFO Observed DNS Query to .cloud TLD",
        "Potentially Bad Traffic",
        "medium",
        "Proofpoint Emerging Threats Open",
        "https://rules.emergingthreats.net/",
        "UDP",
        'alert dns $HOME_NET any -> any any (msg:"ET INFO Observed DNS Query to .cloud TLD"; '
        'dns.query; content:".cloud"; nocase; endswith; classtype:bad-unknown; sid:2027865; '
        "rev:4;)",
    ),
    (
        "1:2036594",
        "ET MALWARE Generic HTTP POST to gate.php",
        "A Network Trojan was detected",
        "high",
        "Proofpoint Emerging Threats Open",
        "https://rules.emergingthreats.net/",
        "TCP",
        'alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"ET MALWARE Generic HTTP POST to '
        'gate.php"; flow:established,to_server; http.method; content:"POST"; http.uri; '
        'content:"/gate.php"; classtype:trojan-activity; sid:2036594; rev:1;)',
    ),
    (
        "1:58201",
        "MALWARE-CNC Win.Trojan variant outbound connection",
        "A Network Trojan was detected",
        "high",
        "Snort registered user ruleset",
        "https://www.snort.org/downloads/#rule-downloads",
        "TCP",
        'alert tcp $HOME_NET any -> $EXTERNAL_NET $HTTP_PORTS (msg:"MALWARE-CNC Win.Trojan '
        'variant outbound connection"; flow:to_server,established; content:"User-Agent|3A| '
        'Mozilla/4.0"; http_header; classtype:trojan-activity; sid:58201; rev:2;)',
    ),
    (
        "1:2013028",
        "ET POLICY curl User-Agent Outbound",
        "Attempted Information Leak",
        "info",
        "Proofpoint Emerging Threats Open",
        "https://rules.emergingthreats.net/",
        "TCP",
        'alert http $HOME_NET any -> $EXTERNAL_NET any (msg:"ET POLICY curl User-Agent '
        'Outbound"; flow:established,to_server; http.user_agent; content:"curl/"; '
        "classtype:attempted-recon; sid:2013028; rev:6;)",
    ),
)


def sigma_rule_object(index: int) -> dict[str, Any]:
    """The `sigma_rule` object of catalogue entry `index`."""
    title, level, log_source, details, tags, _ = _SIGMA[index]
    rule_id = _rule_id(title)
    attrs = {
        "title": title,
        "description": f"Detects {title.lower()} (vt_pipeline emulator rule).",
        "author": "vt_pipeline emulator",
        "level": level,
        "status": "experimental" if level == "critical" else "stable",
        "source": _SIGMA_SOURCE,
        "references": ["https://github.com/SigmaHQ/sigma"],
        "tags": list(tags),
        "false_positives": ["Administrative scripts"],
        "fields": sorted({key.split("|")[0] for key in details["selection"]}),
        "log_source": {**log_source, "service": "", "definition": ""},
        "detection": {"condition": "selection", "details": details},
    }
    return {
        "type": "sigma_rule",
        "id": rule_id,
        "attributes": attrs,
        "links": {"self": f"{API_ROOT}/sigma_rules/{rule_id}"},
    }


SIGMA_RULES: dict[str, dict[str, Any]] = {
    rule["id"]: rule for rule in (sigma_rule_object(i) for i in range(len(_SIGMA)))
}


def _sigma_results(rng: random.Random) -> tuple[list[dict[str, Any]], dict[str, int]]:
    picked = sorted(rng.sample(range(len(_SIGMA)), rng.randint(1, 3)))
    results = []
    for index in picked:
        title, level, _, _, _, event = _SIGMA[index]
        results.append(
            {
                "rule_id": _rule_id(title),
                "rule_title": title,
                "rule_level": level,
                "rule_source": _SIGMA_SOURCE,
                "rule_author": "vt_pipeline emulator",
                "rule_description": f"Detects {title.lower()} (vt_pipeline emulator rule).",
                "match_context": [{"values": dict(event)}],
            }
        )
    results.sort(key=lambda r: _LEVEL_ORDER.index(r["rule_level"]))
    stats = dict.fromkeys(_LEVEL_ORDER, 0)
    for result in results:
        stats[result["rule_level"]] += 1
    return results, stats


def _ids_results(
    rng: random.Random, c2s: Sequence[C2]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    results = []
    for sid, msg, category, severity, source, url, protocol, raw in rng.sample(
        _IDS, rng.randint(1, 2)
    ):
        c2 = rng.choice(list(c2s)) if c2s else None
        context: dict[str, Any] = {
            "dest_ip": f"203.0.113.{rng.randint(1, 254)}",
            "dest_port": 53 if protocol == "UDP" else rng.choice((80, 443, 8080)),
            "protocol": protocol,
            "src_ip": "192.168.0.5",
            "src_port": rng.randint(49152, 65535),
        }
        if c2 is not None:
            context["hostname"] = c2.host
            context["url"] = c2.url
        results.append(
            {
                "rule_id": sid,
                "rule_msg": msg,
                "rule_category": category,
                "alert_severity": severity,
                "rule_source": source,
                "rule_url": url,
                "rule_raw": raw,
                "alert_context": [context],
            }
        )
    results.sort(key=lambda r: _IDS_ORDER.index(r["alert_severity"]))
    stats = {"info": 0, "high": 0, "low": 0, "medium": 0}
    for result in results:
        stats[result["alert_severity"]] += 1
    return results, stats


def detection_attributes(
    sha256: str, seed: int, malicious: int, c2s: Sequence[C2]
) -> dict[str, Any]:
    """The Sigma and IDS attributes of a synthetic analysed file (none for most)."""
    if malicious <= 0:
        return {}
    rng = random.Random(f"vt-detections:{seed}:{sha256}")
    attrs: dict[str, Any] = {}
    if rng.random() < SIGMA_SHARE:
        attrs["sigma_analysis_results"], attrs["sigma_analysis_stats"] = _sigma_results(rng)
    if rng.random() < IDS_SHARE:
        attrs["crowdsourced_ids_results"], attrs["crowdsourced_ids_stats"] = _ids_results(rng, c2s)
    return attrs


def with_detections(obj: dict[str, Any], seed: int, c2s: Sequence[C2]) -> dict[str, Any]:
    """A synthetic file object with its Sigma and IDS attributes, when it has any."""
    attrs = obj["attributes"]
    if not attrs.get("last_analysis_results"):
        return obj
    malicious = int((attrs.get("last_analysis_stats") or {}).get("malicious") or 0)
    extra = detection_attributes(obj["id"], seed, malicious, c2s)
    return {**obj, "attributes": {**attrs, **extra}} if extra else obj
