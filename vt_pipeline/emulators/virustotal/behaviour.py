"""`GET /files/{id}/behaviour_mitre_trees`: the ATT&CK techniques VT's sandboxes saw.

Shape (shared/reference/virustotal-expansions.md section 3, SPEC): `{"data": {<sandbox name>:
{"tactics": [{id, name, description, link, techniques: [{id, name, description, link,
signatures: [{severity, description}]}]}]}}, "links": {"self": ...}}`; an empty sandbox is
`{"tactics": []}`, a file without behaviour reports `{"data": {}}`, an unknown file a 404. The
same technique may sit under several tactics, as in VT's trees.

A synthetic corpus gives each analysed, detected file one or two sandboxes (Zenbox and
VirusTotal Jujubox for Linux files) with three to seven techniques of its platform, from an RNG
of its own; a captured corpus has no behaviour (`{"data": {}}`): nothing is invented for it.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from aiohttp import web

from vt_pipeline.emulators.virustotal.api import Handler, json_ok
from vt_pipeline.emulators.virustotal.objects import API_ROOT, is_analysed

if TYPE_CHECKING:
    from vt_pipeline.emulators.virustotal.api import VirusTotalAPI

TACTICS = {
    "TA0002": "Execution",
    "TA0003": "Persistence",
    "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion",
    "TA0007": "Discovery",
    "TA0011": "Command and Control",
    "TA0040": "Impact",
}
# ATT&CK technique id -> (name, tactic ids, platforms): names as attack.mitre.org gives them.
TECHNIQUES: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "T1059.001": ("PowerShell", ("TA0002",), ("windows",)),
    "T1053.005": ("Scheduled Task", ("TA0002", "TA0003", "TA0004"), ("windows",)),
    "T1547.001": ("Registry Run Keys / Startup Folder", ("TA0003", "TA0004"), ("windows",)),
    "T1055": ("Process Injection", ("TA0004", "TA0005"), ("windows", "linux")),
    "T1027": ("Obfuscated Files or Information", ("TA0005",), ("windows", "linux", "android")),
    "T1070.004": ("File Deletion", ("TA0005",), ("windows", "linux")),
    "T1497": ("Virtualization/Sandbox Evasion", ("TA0005", "TA0007"), ("windows", "android")),
    "T1082": ("System Information Discovery", ("TA0007",), ("windows", "linux", "android")),
    "T1057": ("Process Discovery", ("TA0007",), ("windows", "linux")),
    "T1012": ("Query Registry", ("TA0007",), ("windows",)),
    "T1083": ("File and Directory Discovery", ("TA0007",), ("windows", "linux", "android")),
    "T1071.001": ("Web Protocols", ("TA0011",), ("windows", "linux", "android")),
    "T1105": ("Ingress Tool Transfer", ("TA0011",), ("windows", "linux")),
    "T1053.003": ("Cron", ("TA0002", "TA0003", "TA0004"), ("linux",)),
    "T1486": ("Data Encrypted for Impact", ("TA0040",), ("windows", "linux")),
}
_SEVERITIES = ("HIGH", "MEDIUM", "LOW", "INFO")


def _link(kind: str, mitre_id: str) -> str:
    return f"https://attack.mitre.org/{kind}/{mitre_id.replace('.', '/')}/"


def _platform(attrs: dict[str, Any]) -> str:
    return {"elf": "linux", "android": "android"}.get(str(attrs.get("type_tag")), "windows")


def mitre_trees(obj: dict[str, Any]) -> dict[str, Any]:
    """The `data` of a synthetic file's behaviour_mitre_trees (`{}` when it has none)."""
    attrs = obj.get("attributes") or {}
    malicious = int((attrs.get("last_analysis_stats") or {}).get("malicious") or 0)
    if not is_analysed(obj) or malicious <= 0:
        return {}
    rng = random.Random(f"vt-behaviour:{obj['id']}")
    platform = _platform(attrs)
    sandboxes = ["VirusTotal Jujubox"] if platform == "linux" else ["Zenbox"]
    if rng.random() < 0.4:
        sandboxes.append("VirusTotal Observer" if platform != "linux" else "Zenbox Linux")
    fitting = sorted(t for t, (_, _, platforms) in TECHNIQUES.items() if platform in platforms)
    trees: dict[str, Any] = {}
    for sandbox in sandboxes:
        picked = rng.sample(fitting, min(len(fitting), rng.randint(3, 7)))
        tactics: dict[str, list[dict[str, Any]]] = {}
        for technique_id in sorted(picked):
            name, tactic_ids, _ = TECHNIQUES[technique_id]
            technique = {
                "id": technique_id,
                "name": name,
                "description": f"{name} (MITRE ATT&CK {technique_id}).",
                "link": _link("techniques", technique_id),
                "signatures": [
                    {
                        "severity": rng.choice(_SEVERITIES),
                        "description": f"{sandbox} observed behaviour matching {name}",
                    }
                ],
            }
            for tactic_id in tactic_ids:
                tactics.setdefault(tactic_id, []).append(technique)
        trees[sandbox] = {
            "tactics": [
                {
                    "id": tactic_id,
                    "name": TACTICS[tactic_id],
                    "description": f"The adversary's {TACTICS[tactic_id].lower()} tactic.",
                    "link": _link("tactics", tactic_id),
                    "techniques": techniques,
                }
                for tactic_id, techniques in sorted(tactics.items())
            ]
        }
    if rng.random() < 0.2:
        trees["CAPE Sandbox"] = {"tactics": []}  # a sandbox that ran and saw nothing mapped
    return trees


def behaviour_mitre_trees(api: VirusTotalAPI) -> Handler:
    """The handler, over `api`'s files (the corpus's and those uploaded)."""

    async def handle(request: web.Request) -> web.Response:
        found = api._file_or_error(request.match_info["id"])
        if isinstance(found, web.Response):
            return found
        data = mitre_trees(found) if api.corpus.assess_gti is not None else {}
        link = f"{API_ROOT}/files/{found['id']}/behaviour_mitre_trees"
        return json_ok({"data": data, "links": {"self": link}})

    return handle
