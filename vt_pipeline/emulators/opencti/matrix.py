"""OpenCTI's relationship matrix: which core relationships it accepts between two entity types.

Transcribed from `stixCoreRelationshipsMapping` and `checkStixCoreRelationshipMapping` in
OpenCTI-Platform/opencti `opencti-platform/opencti-graphql/src/database/stix.ts` (commit
014e9c06; reference doc section 12), for every source type vt_pipeline sends relationships
from: the observables it enriches or relates (files, artifacts, domains, hostnames, IPs, URLs),
Indicators, and the knowledge GTI, families and ATT&CK add (Malware, Attack-Pattern,
Intrusion-Set, Campaign, Threat-Actor, Tool, Infrastructure, Vulnerability). The rules:
- `related-to` and `revoked-by` are accepted between any two types;
- a key `<from>_Stix-Cyber-Observable` accepts its relationships towards every observable;
- otherwise the relationship must be listed under `<from>_<to>`.
A source type outside the transcribed set is not checked (the project sends none).
"""

from __future__ import annotations

OBSERVABLE = "Stix-Cyber-Observable"
ANY_PAIR = frozenset({"related-to", "revoked-by"})
_THREAT_ACTORS = ("Threat-Actor", "Threat-Actor-Group")
_LOCATIONS = ("Position", "City", "Administrative-Area", "Country", "Region")
_IDENTITIES = ("Individual", "Organization", "Sector", "System")


def _each(targets: tuple[str, ...], *relationships: str) -> dict[str, tuple[str, ...]]:
    return {target: relationships for target in targets}


# from type -> to type -> accepted relationship types (besides related-to and revoked-by)
MATRIX: dict[str, dict[str, tuple[str, ...]]] = {
    "Attack-Pattern": {
        "Attack-Pattern": ("subtechnique-of", "derived-from"),
        **_each(_IDENTITIES, "targets"),
        "Event": ("targets",),
        **_each(_LOCATIONS, "targets"),
        "Malware": ("delivers", "uses"),
        "Tool": ("uses",),
        "Vulnerability": ("targets",),
    },
    "Campaign": {
        "Attack-Pattern": ("uses",),
        "Channel": ("uses",),
        "Narrative": ("uses",),
        "Event": ("targets",),
        **_each(_IDENTITIES, "targets"),
        "Infrastructure": ("compromises", "uses"),
        "Intrusion-Set": ("attributed-to",),
        **_each(_LOCATIONS, "originates-from", "targets"),
        "Malware": ("uses",),
        **_each((*_THREAT_ACTORS, "Threat-Actor-Individual"), "attributed-to"),
        "Tool": ("uses",),
        "Vulnerability": ("targets",),
        "Campaign": ("derived-from",),
    },
    "Indicator": {
        OBSERVABLE: ("based-on",),
        "Attack-Pattern": ("indicates",),
        "Campaign": ("indicates",),
        "Observed-Data": ("based-on",),
        "Incident": ("indicates",),
        "Indicator": ("derived-from",),
        "Infrastructure": ("indicates",),
        "Intrusion-Set": ("indicates",),
        "Malware": ("indicates",),
        **_each((*_THREAT_ACTORS, "Threat-Actor-Individual"), "indicates"),
        "Tool": ("indicates",),
        "Vulnerability": ("indicates",),
    },
    "Infrastructure": {
        OBSERVABLE: ("consists-of",),
        "Domain-Name": ("communicates-with",),
        "IPv4-Addr": ("communicates-with",),
        "IPv6-Addr": ("communicates-with",),
        "Url": ("communicates-with",),
        "Observed-Data": ("consists-of",),
        "Infrastructure": (
            "communicates-with",
            "consists-of",
            "controls",
            "uses",
            "derived-from",
            "supports",
        ),
        **_each(_LOCATIONS, "located-at"),
        "Malware": ("controls", "delivers", "hosts"),
        "Tool": ("hosts",),
        "Vulnerability": ("has",),
        "Software": ("consists-of", "hosts", "technology", "technology-to", "technology-from"),
        "Organization": ("belongs-to",),
        "Attack-Pattern": ("detects",),
    },
    "Intrusion-Set": {
        "Attack-Pattern": ("uses",),
        "Channel": ("uses",),
        "Narrative": ("uses",),
        **_each(_IDENTITIES, "targets"),
        "Event": ("targets",),
        "Infrastructure": ("compromises", "hosts", "owns", "uses"),
        **_each(_LOCATIONS, "originates-from", "targets"),
        "Malware": ("uses",),
        **_each((*_THREAT_ACTORS, "Threat-Actor-Individual"), "attributed-to"),
        "Tool": ("uses",),
        "Vulnerability": ("targets",),
        "StixFile": ("uses",),
        "Intrusion-Set": ("derived-from", "part-of"),
        "Campaign": ("attributed-to",),
    },
    "Malware": {
        "Domain-Name": ("communicates-with",),
        "StixFile": ("downloads", "drops"),
        "IPv4-Addr": ("communicates-with",),
        "IPv6-Addr": ("communicates-with",),
        "Attack-Pattern": ("uses",),
        **_each(_IDENTITIES, "targets"),
        "Event": ("targets",),
        "Infrastructure": ("beacons-to", "exfiltrates-to", "targets", "uses"),
        "Intrusion-Set": ("authored-by",),
        **_each(_LOCATIONS, "originates-from", "targets"),
        "Malware": ("controls", "downloads", "drops", "uses", "variant-of", "derived-from"),
        **_each((*_THREAT_ACTORS, "Threat-Actor-Individual"), "authored-by"),
        "Tool": ("downloads", "drops", "uses"),
        "Vulnerability": ("exploits", "targets"),
        "Url": ("communicates-with",),
    },
    **{
        actor: {
            "Attack-Pattern": ("uses",),
            "Channel": ("uses",),
            "Narrative": ("uses",),
            "Campaign": ("participates-in",),
            "Individual": ("attributed-to", "impersonates", "targets"),
            "Organization": ("attributed-to", "impersonates", "targets"),
            "Sector": ("targets",),
            "System": ("targets",),
            "Event": ("targets",),
            "Infrastructure": ("compromises", "hosts", "owns", "uses"),
            **_each(_LOCATIONS, "located-at", "targets"),
            "Malware": ("uses",),
            "Tool": ("uses",),
            "Vulnerability": ("targets",),
            "StixFile": ("uses",),
            **(
                {
                    "Threat-Actor-Group": ("part-of", "cooperates-with", "derived-from"),
                    "Threat-Actor-Individual": ("cooperates-with", "derived-from"),
                }
                if actor == "Threat-Actor-Group"
                else {}
            ),
        }
        for actor in _THREAT_ACTORS
    },
    "Tool": {
        "Individual": ("targets",),
        "Organization": ("targets",),
        "Sector": ("targets",),
        "Event": ("targets",),
        "Attack-Pattern": ("uses",),
        "Infrastructure": ("targets", "uses"),
        **_each(_LOCATIONS, "targets"),
        "System": ("targets",),
        "Malware": ("delivers", "drops"),
        "Vulnerability": ("has", "targets"),
        "Tool": ("derived-from",),
    },
    "Vulnerability": {"Vulnerability": ("derived-from",)},
    "Country": {"Region": ("located-at",), "Country": ("derived-from",)},
    # Observables
    "Hostname": {
        "Artifact": ("drops",),
        "Attack-Pattern": ("uses",),
        "Domain-Name": ("communicates-with", "resolves-to"),
        "IPv4-Addr": ("communicates-with", "resolves-to"),
        "IPv6-Addr": ("communicates-with", "resolves-to"),
        "StixFile": ("drops",),
        "Hostname": ("derived-from",),
    },
    "Url": {"Narrative": ("uses",), "Url": ("derived-from",)},
    "Artifact": {
        "Narrative": ("uses",),
        "Artifact": ("interpreted-by", "derived-from"),
        "StixFile": ("interpreted-by",),
        "IPv4-Addr": ("communicates-with",),
        "IPv6-Addr": ("communicates-with",),
        "Domain-Name": ("communicates-with",),
        "Attack-Pattern": ("uses",),
    },
    "IPv4-Addr": {
        **_each(_LOCATIONS, "located-at"),
        "Mac-Addr": ("resolves-to",),
        "Autonomous-System": ("belongs-to",),
        "Organization": ("belongs-to",),
        "Individual": ("belongs-to",),
        "IPv4-Addr": ("derived-from", "communicates-with"),
    },
    "IPv6-Addr": {
        **_each(_LOCATIONS, "located-at"),
        "Mac-Addr": ("resolves-to",),
        "Autonomous-System": ("belongs-to",),
        "Organization": ("belongs-to",),
        "Individual": ("belongs-to",),
        "IPv6-Addr": ("derived-from",),
    },
    "Domain-Name": {
        "Domain-Name": ("resolves-to", "derived-from"),
        "Hostname": ("resolves-to", "derived-from"),
        "IPv4-Addr": ("resolves-to",),
        "IPv6-Addr": ("resolves-to",),
        "Narrative": ("uses",),
        "Organization": ("belongs-to",),
        "Individual": ("belongs-to",),
    },
    "StixFile": {
        "Narrative": ("uses",),
        "Attack-Pattern": ("uses",),
        "StixFile": ("drops", "downloads", "interpreted-by", "derived-from"),
        "Artifact": ("interpreted-by",),
        "IPv4-Addr": ("communicates-with",),
        "IPv6-Addr": ("communicates-with",),
        "Domain-Name": ("communicates-with",),
        "Vulnerability": ("targets", "demonstrates"),
    },
}


def accepts(from_type: str, to_type: str, relationship: str, to_is_observable: bool) -> bool:
    """Whether OpenCTI creates `relationship` from a `from_type` to a `to_type` entity
    (`checkStixCoreRelationshipMapping`). A source type not transcribed is not checked."""
    if relationship in ANY_PAIR or from_type not in MATRIX:
        return True
    targets = MATRIX[from_type]
    if to_is_observable and relationship in targets.get(OBSERVABLE, ()):
        return True
    return relationship in targets.get(to_type, ())


def refusal(from_type: str, to_type: str, relationship: str) -> str:
    """OpenCTI's message for a relationship outside its matrix."""
    return f"The relationship type {relationship} is not allowed between {from_type} and {to_type}"
