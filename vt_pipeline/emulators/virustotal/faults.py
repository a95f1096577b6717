"""Fault injection for the VirusTotal emulator: which request fails, and how.

A spec is a comma-separated list of rules ``ENDPOINT:KIND:RATE[:COUNT]``:

- ENDPOINT: an endpoint name (see ``ENDPOINTS``) or ``*`` for every endpoint;
- KIND: ``429``, ``500``, ``503``, ``timeout`` (held, then 504), ``truncated`` (the body stops
  short of its Content-Length) or ``malformed`` (200 with a body that is not valid JSON; corrupted
  bytes for a sample download);
- RATE: probability in [0, 1] that a matching request gets the fault;
- COUNT: how many times the rule may fire at most (a burst); unlimited when omitted.

Example: ``ioc_stream:429:0.3,file_download:truncated:0.2:5,*:503:0.05``. Rules are tried in
order, the first that fires wins, and draws come from a seeded RNG so a run is reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

ENDPOINTS = frozenset(
    {
        "ioc_stream",
        "ioc_stream_delete",
        "file",
        "file_download",
        "sample",
        "hunting_ruleset",
        "yara_ruleset",
        "ip_address",
        "domain",
        "domain_resolutions",
        "url",
        "file_upload",
        "file_upload_url",
        "url_submit",
        "analysis",
        "overall_quotas",
        # the enrichment expansions (expansions.py)
        "file_behaviour_mitre_trees",
        "sigma_rule",
        "file_analyse",
        "url_analyse",
        "collection",
        *(
            f"{kind}_{what}"
            for kind in ("file", "url", "domain", "ip_address")
            for what in ("comments", "associations")
        ),
    }
)
STATUS_FAULTS = frozenset({"429", "500", "503", "timeout"})  # replace the response
BODY_FAULTS = frozenset({"truncated", "malformed"})  # spoil a successful response


@dataclass(slots=True)
class FaultRule:
    endpoint: str
    kind: str
    rate: float
    remaining: int | None  # None: unlimited

    def applies(self, endpoint: str, kinds: frozenset[str]) -> bool:
        return self.endpoint in ("*", endpoint) and self.kind in kinds and self.remaining != 0


def parse_fault_spec(spec: str) -> list[FaultRule]:
    """Rules of a spec string; raises ValueError naming the bad rule."""
    rules = []
    for text in filter(None, (part.strip() for part in spec.split(","))):
        parts = text.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"fault rule {text!r} is not ENDPOINT:KIND:RATE[:COUNT]")
        endpoint, kind, rate_text = parts[:3]
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"fault rule {text!r}: unknown endpoint {endpoint!r}")
        if kind not in STATUS_FAULTS | BODY_FAULTS:
            raise ValueError(f"fault rule {text!r}: unknown kind {kind!r}")
        try:
            rate = float(rate_text)
            count = int(parts[3]) if len(parts) == 4 else None
        except ValueError as err:
            raise ValueError(f"fault rule {text!r}: bad rate or count") from err
        if not 0.0 <= rate <= 1.0 or (count is not None and count < 0):
            raise ValueError(f"fault rule {text!r}: rate must be in [0, 1] and count >= 0")
        rules.append(FaultRule(endpoint, kind, rate, count))
    return rules


class FaultInjector:
    """Decides, request by request, whether a fault fires (one seeded draw per matching rule)."""

    def __init__(self, spec: str = "", seed: int = 0) -> None:
        self.spec = spec
        self._rules = parse_fault_spec(spec)
        self._rng = random.Random(f"vt-faults:{seed}")

    def pick(self, endpoint: str, kinds: frozenset[str]) -> str | None:
        """The fault for this request among ``kinds``, or None."""
        for rule in self._rules:
            if rule.applies(endpoint, kinds) and self._rng.random() < rule.rate:
                if rule.remaining is not None:
                    rule.remaining -= 1
                return rule.kind
        return None
