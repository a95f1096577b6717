"""Livehunt (hunting) rulesets and crowdsourced YARA rulesets of the synthetic corpus.

Every ruleset is valid YARA (plyara parses it), so the pipeline's YARA Indicators can be built
from real rule text. Each ruleset also names one ``legacy`` rule that is no longer in its source:
a few notifications quote it, as happens after a ruleset is edited.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from vt_pipeline.emulators.virustotal.objects import DAY, object_envelope


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    tags: tuple[str, ...]
    description: str
    strings: tuple[str, ...]
    condition: str


@dataclass(frozen=True, slots=True)
class HuntingRuleset:
    """A generated hunting ruleset and what it matches (file type tags, or network objects)."""

    id: str
    name: str
    matches: tuple[str, ...]
    rules: tuple[Rule, ...]
    legacy_rule: str
    imports: tuple[str, ...] = ()

    @property
    def rule_names(self) -> list[str]:
        return [rule.name for rule in self.rules]


def _rule_text(rule: Rule, author: str) -> str:
    tags = f" : {' '.join(rule.tags)}" if rule.tags else ""
    lines = [f"rule {rule.name}{tags}", "{", "    meta:"]
    lines += [f'        author = "{author}"', f'        description = "{rule.description}"']
    if rule.strings:
        lines += ["    strings:", *(f"        {string}" for string in rule.strings)]
    lines += ["    condition:", f"        {rule.condition}", "}"]
    return "\n".join(lines)


def yara_source(rules: tuple[Rule, ...], imports: tuple[str, ...], author: str) -> str:
    header = "".join(f'import "{module}"\n' for module in imports)
    body = "\n\n".join(_rule_text(rule, author) for rule in rules)
    return f"{header}\n{body}\n" if header else f"{body}\n"


_HUNTING: tuple[tuple[str, tuple[str, ...], tuple[Rule, ...], str, tuple[str, ...]], ...] = (
    (
        "Windows loaders",
        ("peexe", "pedll", "lnk", "msi", "powershell", "javascript"),
        (
            Rule(
                "loader_pe_stub",
                ("loader", "windows"),
                "PE loader allocating executable memory",
                ("$mz = { 4D 5A }", '$va = "VirtualAlloc" ascii wide', '$cr = "CreateThread"'),
                "$mz at 0 and filesize < 80MB and all of ($va, $cr)",
            ),
            Rule(
                "loader_dotnet_injector",
                ("loader",),
                ".NET injector using process hollowing",
                ('$a = "NtUnmapViewOfSection" ascii', '$b = "WriteProcessMemory" ascii'),
                "uint16(0) == 0x5A4D and $a and $b",
            ),
            Rule(
                "loader_script_cradle",
                ("script",),
                "Script download cradle",
                ('$iwr = "Invoke-WebRequest" nocase', "$js = /new\\s+ActiveXObject/ nocase"),
                "any of them",
            ),
        ),
        "loader_legacy_v1",
        (),
    ),
    (
        "Office droppers",
        ("doc", "docx", "xlsx", "pdf", "zip"),
        (
            Rule(
                "dropper_ole_autoopen",
                ("maldoc",),
                "OLE document with an auto-executing macro",
                ("$ole = { D0 CF 11 E0 A1 B1 1A E1 }", '$auto = "AutoOpen" nocase'),
                "$ole at 0 and $auto",
            ),
            Rule(
                "dropper_ooxml_remote_template",
                ("maldoc",),
                "OOXML document fetching a remote template",
                ("$pk = { 50 4B 03 04 }", '$rel = "attachedTemplate" ascii'),
                "$pk at 0 and $rel",
            ),
            Rule(
                "dropper_pdf_launch",
                ("pdf",),
                "PDF with a Launch action",
                ('$pdf = "%PDF-"', '$launch = "/Launch"'),
                "$pdf at 0 and $launch",
            ),
        ),
        "dropper_legacy_macro",
        (),
    ),
    (
        "Linux botnets",
        ("elf",),
        (
            Rule(
                "botnet_mirai_table",
                ("mirai", "linux"),
                "Mirai-like obfuscated credential table",
                ("$elf = { 7F 45 4C 46 }", "$tbl = { 50 4D 4D 56 }"),
                "$elf at 0 and $tbl",
            ),
            Rule(
                "botnet_gafgyt_cnc",
                ("gafgyt",),
                "Gafgyt command strings",
                ('$a = "HTTPFLOOD" ascii', '$b = "KILLATTK" ascii'),
                "uint32(0) == 0x464C457F and any of them",
            ),
        ),
        "botnet_legacy_scanner",
        (),
    ),
    (
        "Android bankers",
        ("android",),
        (
            Rule(
                "banker_overlay_accessibility",
                ("android", "banker"),
                "Banker abusing accessibility overlays",
                ('$acc = "AccessibilityService" ascii', '$ovl = "TYPE_APPLICATION_OVERLAY"'),
                "uint32(0) == 0x04034B50 and all of them",
            ),
            Rule(
                "banker_sms_intercept",
                ("android",),
                "SMS interception for one-time passwords",
                ('$sms = "android.provider.Telephony.SMS_RECEIVED" ascii',),
                "$sms",
            ),
        ),
        "banker_legacy_webview",
        (),
    ),
    (
        "Network IOCs",
        ("url", "domain", "ip_address"),
        (
            Rule(
                "net_url_phishing_path",
                ("network", "phishing"),
                "New URL with a credential-phishing path",
                (),
                "vt.net.url.new_url and vt.net.url.path matches /\\/(login|verify|account)/",
            ),
            Rule(
                "net_domain_suspicious_tld",
                ("network",),
                "Newly seen domain on a cheap TLD",
                (),
                "vt.net.domain.new_domain and vt.net.domain.raw matches /\\.(top|xyz|click)$/",
            ),
            Rule(
                "net_ip_bulletproof_asn",
                ("network", "c2"),
                "IP in a bulletproof hosting network",
                (),
                'vt.net.ip.ip_as_owner icontains "ponynet" or vt.net.ip.reputation < -10',
            ),
        ),
        "net_legacy_feed",
        ("vt",),
    ),
)

_CROWDSOURCED = (
    ("malware_families", "Florian Roth", "https://github.com/Neo23x0/signature-base"),
    ("crime_loaders", "ditekSHen", "https://github.com/ditekshen/detection"),
    ("maldocs", "InQuest Labs", "https://github.com/InQuest/yara-rules-vt"),
    ("elf_malware", "Elastic Security", "https://github.com/elastic/protections-artifacts"),
)


def hunting_rulesets(rng: random.Random) -> list[HuntingRuleset]:
    return [
        HuntingRuleset(str(rng.randint(10**15, 10**16 - 1)), name, matches, rules, legacy, imports)
        for name, matches, rules, legacy, imports in _HUNTING
    ]


def hunting_ruleset_object(ruleset: HuntingRuleset, rng: random.Random, now: int) -> dict:
    created = now - rng.randint(30 * DAY, 3 * 365 * DAY)
    attrs: dict[str, Any] = {
        "name": ruleset.name,
        "rules": yara_source(ruleset.rules, ruleset.imports, "vt_pipeline emulator"),
        "enabled": True,
        "rule_names": ruleset.rule_names,
        "number_of_rules": len(ruleset.rules),
        "creation_date": created,
        "modification_date": rng.randint(created, now - DAY),
        "tags": sorted({tag for rule in ruleset.rules for tag in rule.tags}),
        "limit": 10000,
        "match_object_type": "url" if ruleset.imports else "file",
    }
    return object_envelope("hunting_ruleset", ruleset.id, "intelligence/hunting_rulesets", attrs)


def crowdsourced_rulesets(rng: random.Random) -> list[dict]:
    """Crowdsourced YARA rulesets quoted by files' crowdsourced_yara_results."""
    rulesets = []
    for name, author, source in _CROWDSOURCED:
        rules = tuple(
            Rule(
                f"{name.upper()}_{number:02d}",
                (),
                f"Detects {name.replace('_', ' ')} variant {number}",
                (f'$s = "{rng.getrandbits(48):012x}" ascii',),
                "$s",
            )
            for number in range(1, rng.randint(3, 4))
        )
        attrs = {
            "name": name,
            "rules": yara_source(rules, (), author),
            "source": source,
            "author": author,
            "rule_names": [rule.name for rule in rules],
        }
        rulesets.append(
            object_envelope("yara_ruleset", f"{rng.getrandbits(40):010x}", "yara_rulesets", attrs)
        )
    return rulesets
