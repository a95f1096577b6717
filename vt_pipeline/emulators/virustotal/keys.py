"""What an API key of the emulator may do, as VirusTotal decides it per key, not per request.

- `premium`: Livehunt and downloads (403 ForbiddenError without it).
- `gti`: licensed for Google Threat Intelligence, so a lookup that also carries the `x-tool`
  header gets `gti_assessment` (see `gti`). A VirusTotal key without the licence never gets one,
  whatever headers it sends.
- `gti_enterprise`: GTI's threat objects (collections, an object's `associations`), which need
  GTI Enterprise or Enterprise Plus; a `gti` key without it gets 403 there (`gti_collections`).

`api_keys={"k": True}` is the fully licensed key (premium and GTI), `False` a public key (neither);
`ApiKey(gti=False)` is a premium VirusTotal key that Google Threat Intelligence does not cover.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiKey:
    """The privileges of one key."""

    premium: bool = True
    gti: bool = True
    gti_enterprise: bool = True


PUBLIC = ApiKey(premium=False, gti=False)


def as_api_key(value: bool | ApiKey) -> ApiKey:
    """A key's privileges from the short form: True is `ApiKey()`, False is `PUBLIC`."""
    if isinstance(value, ApiKey):
        return value
    return ApiKey() if value else PUBLIC


def api_keys(keys: Mapping[str, bool | ApiKey] | None) -> dict[str, ApiKey]:
    """The emulator's keys (default: one fully licensed key, ``demo``)."""
    return {key: as_api_key(value) for key, value in (keys or {"demo": True}).items()}
