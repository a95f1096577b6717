"""Settings of the Livehunt ruleset sync, with upstream's stream connector's variable names.

A docker-compose environment of upstream's `stream/virustotal-livehunt-rules` moves over as it
is: `CONNECTOR_LIVE_STREAM_ID` (unset or upstream's placeholder `ChangeMe`: the sync is off),
`CONNECTOR_LIVE_STREAM_LISTEN_DELETE`, `CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES`,
`VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS` and `VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS` (upstream's
list syntax `["a@example.com"]`, or comma separated). `VIRUSTOTAL_LIVEHUNT_TOKEN` is one more
name of the deployment's VT key (see `resources.API_KEY_ENV_NAMES`): one key, one budget.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import Any, Literal

import dagster as dg
from pydantic import Field, field_validator

from vt_pipeline.config import invalid, is_env_reference, settings_from_env

VARIABLES = {
    "live_stream_id": "CONNECTOR_LIVE_STREAM_ID",
    "listen_delete": "CONNECTOR_LIVE_STREAM_LISTEN_DELETE",
    "no_dependencies": "CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES",
    "notification_emails": "VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS",
    "shared_owners": "VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS",
    "ruleset_limit": "VT_PIPELINE_HUNTING_RULES_LIMIT",
    "on_detection_off": "VT_PIPELINE_HUNTING_RULES_ON_DETECTION_OFF",
    "max_events": "VT_PIPELINE_HUNTING_RULES_MAX_EVENTS",
    "tick_seconds": "VT_PIPELINE_HUNTING_RULES_TICK_SECONDS",
}
_PLACEHOLDERS = {"", "changeme"}


def parse_names(name: str, raw: Any) -> list[str]:
    """Upstream's list syntax (`["a", "b"]`, `[]`) or a comma-separated list."""
    if isinstance(raw, list):
        return [str(v).strip() for v in raw if str(v).strip()]
    text = str(raw or "").strip()
    if text.startswith("["):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise invalid(name, raw, 'a list such as ["a@example.com", "b@example.com"]') from None
        if not isinstance(value, list | tuple):
            raise invalid(name, raw, 'a list such as ["a@example.com"]')
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in text.split(",") if part.strip()]


class HuntingRulesSettings(dg.ConfigurableResource):
    """Which live stream to read and how rulesets are made from YARA Indicators."""

    live_stream_id: str = Field(
        default="",
        description="CONNECTOR_LIVE_STREAM_ID: the OpenCTI live stream to read (e.g. one "
        "filtered on Indicators of pattern type YARA); empty: the sync is off.",
    )
    listen_delete: bool = Field(
        default=True,
        description="CONNECTOR_LIVE_STREAM_LISTEN_DELETE: an Indicator deleted in OpenCTI "
        "deletes its ruleset.",
    )
    no_dependencies: bool = Field(
        default=True, description="CONNECTOR_LIVE_STREAM_NO_DEPENDENCIES (sent to OpenCTI)."
    )
    notification_emails: str = Field(
        default="",
        description='VIRUSTOTAL_LIVEHUNT_NOTIFICATION_EMAILS: ["a@example.com"] or a,b: '
        "VT mails these addresses on each match of a managed ruleset.",
    )
    shared_owners: str = Field(
        default="",
        description='VIRUSTOTAL_LIVEHUNT_SHARED_OWNERS: ["user1"] or user1,user2: VT users '
        "made editors of each managed ruleset.",
    )
    ruleset_limit: int = Field(
        default=100,
        ge=1,
        le=10000,
        description="VT_PIPELINE_HUNTING_RULES_LIMIT: the rulesets' daily notification limit "
        "(upstream's 100).",
    )
    on_detection_off: Literal["disable", "delete"] = Field(
        default="disable",
        description="VT_PIPELINE_HUNTING_RULES_ON_DETECTION_OFF: what happens to the ruleset of "
        "an Indicator whose detection is turned off or that is revoked: disable (kept, id and "
        "history kept, enabled again when detection is back) or delete (upstream's).",
    )
    max_events: int = Field(
        default=200,
        ge=1,
        le=10000,
        description="VT_PIPELINE_HUNTING_RULES_MAX_EVENTS: live stream events read per tick.",
    )
    tick_seconds: int = Field(
        default=10,
        ge=1,
        le=20,
        description="VT_PIPELINE_HUNTING_RULES_TICK_SECONDS: longest read of the stream per tick.",
    )

    @field_validator("live_stream_id")
    @classmethod
    def _placeholder_is_unset(cls, value: str) -> str:
        if is_env_reference(value):
            return value
        return "" if value.strip().lower() in _PLACEHOLDERS else value.strip()

    @field_validator("notification_emails")
    @classmethod
    def _emails(cls, value: str) -> str:
        if is_env_reference(value):
            return value
        for email in parse_names(VARIABLES["notification_emails"], value):
            if "@" not in email or any(c.isspace() for c in email):
                raise invalid(VARIABLES["notification_emails"], value, "e-mail addresses")
        return value

    @field_validator("shared_owners")
    @classmethod
    def _owners(cls, value: str) -> str:
        if is_env_reference(value):
            return value
        parse_names(VARIABLES["shared_owners"], value)
        return value

    @field_validator("on_detection_off", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text not in {"disable", "delete"}:
                raise invalid(VARIABLES["on_detection_off"], value, "disable or delete")
            return text
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.live_stream_id)

    @property
    def emails(self) -> list[str]:
        return parse_names(VARIABLES["notification_emails"], self.notification_emails)

    @property
    def owners(self) -> list[str]:
        return parse_names(VARIABLES["shared_owners"], self.shared_owners)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HuntingRulesSettings:
        """From the variables; a bad value fails naming its variable."""
        return settings_from_env(cls, "", env, VARIABLES, fields=VARIABLES)
