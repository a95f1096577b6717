"""Livehunt ruleset management (`/intelligence/hunting_rulesets`) and notifications for them.

Shapes from the reference (`virustotal-expansions.md` section 8: SPEC yara-hunting, vt-py's
examples, upstream's `stream/virustotal-livehunt-rules` client): a ruleset is a
`hunting_ruleset` object whose attributes are name, rules, enabled, limit,
notification_emails, match_object_type, creation_date, modification_date, number_of_rules,
rule_names and tags; a list is `{"data": [...], "meta": {"cursor"}, "links": {"self", "next"}}`.
The corpus's generated rulesets are listed too (they belong to the key's user) and can be
edited like created ones; the corpus itself is never modified (edits live here).

Decisions where the reference says UNCONFIRMED: rules VirusTotal cannot compile are refused
with 400 `InvalidArgumentError` (plyara stands in for libyara's compiler); the list's page size
is at most 40 (as `/ioc_stream`); a ruleset created without `limit` gets 100; `filter` accepts
`name:`, `enabled:`, `rules:` and `tag:` terms, matched as full words (case-insensitive); editors
are users or groups. List links point at the request's URL (VT's at `/users/{user}/...`).

`notify(ruleset_id, file_id)` is what Livehunt does when a managed ruleset matches a file: a
notification on `/ioc_stream` whose context names the ruleset and its first rule.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

import plyara

from vt_pipeline.emulators.virustotal.objects import object_envelope

MAX_LIMIT = 40
DEFAULT_LIMIT = 10
_RULE_NAME = re.compile(r"^\s*(?:(?:private|global)\s+)*rule\s+([A-Za-z_]\w*)", re.MULTILINE)
_WRITABLE = frozenset({"name", "rules", "enabled", "limit", "notification_emails"})
_WRITABLE |= {"match_object_type"}


class RulesetError(ValueError):
    """A request VirusTotal refuses: (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def rule_names(rules: str) -> list[str]:
    """The names of the rules of a source, in order."""
    return _RULE_NAME.findall(rules)


def check_rules(rules: Any) -> None:
    """Refuse what VirusTotal's YARA compiler would (plyara stands in for it)."""
    if not isinstance(rules, str) or not rules.strip():
        raise RulesetError(400, "InvalidArgumentError", "rules must be a non-empty string")
    try:
        parsed = plyara.Plyara().parse_string(rules)
    except Exception as exc:  # plyara raises several types for bad text
        raise RulesetError(400, "InvalidArgumentError", f"YARA compile error: {exc}") from None
    if not parsed:
        raise RulesetError(400, "InvalidArgumentError", "YARA compile error: no rule")


class HuntingRulesets:
    """The key's Livehunt rulesets: the corpus's ones, then those created through the API."""

    def __init__(
        self,
        corpus_rulesets: Mapping[str, dict],
        clock: Callable[[], float],
        add_notification: Callable[[str, str, str, str, int], dict],
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._rulesets: dict[str, dict] = {k: copy.deepcopy(v) for k, v in corpus_rulesets.items()}
        self._deleted: set[str] = set()
        self._editors: dict[str, list[dict[str, str]]] = {}
        self._next = 7_000_000_000_000_000
        self._add_notification = add_notification

    # -- reads ----------------------------------------------------------------------------------
    def get(self, ruleset_id: str) -> dict | None:
        with self._lock:
            found = self._rulesets.get(ruleset_id)
            return copy.deepcopy(found) if found is not None else None

    def all(self) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(r) for r in self._rulesets.values()]

    def editors(self, ruleset_id: str) -> list[dict[str, str]]:
        with self._lock:
            return list(self._editors.get(ruleset_id, []))

    def page(self, query: Mapping[str, str]) -> tuple[list[dict], str | None]:
        """One page of the list (filter, order, limit, cursor) and the next cursor."""
        try:
            limit = int(query.get("limit") or DEFAULT_LIMIT)
        except ValueError:
            raise RulesetError(400, "InvalidArgumentError", "invalid limit") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise RulesetError(400, "InvalidArgumentError", f"limit must be 1 to {MAX_LIMIT}")
        offset = _decode_cursor(query.get("cursor") or "")
        terms = _parse_filter(query.get("filter") or "")
        with self._lock:
            items = [r for r in self._rulesets.values() if all(t(r) for t in terms)]
            order = (query.get("order") or "").strip()
            if order:
                key = order.rstrip("+-")
                if key not in {"name", "creation_date", "modification_date"}:
                    raise RulesetError(400, "InvalidArgumentError", f"invalid order {order!r}")
                items.sort(key=lambda r: r["attributes"][key], reverse=order.endswith("-"))
            page = [copy.deepcopy(r) for r in items[offset : offset + limit]]
        more = offset + limit < len(items)
        return page, _encode_cursor(offset + limit) if more else None

    # -- writes ---------------------------------------------------------------------------------
    def create(self, body: Any) -> dict:
        attrs = _attributes(body, "hunting_ruleset")
        if not isinstance(attrs.get("name"), str) or not attrs["name"].strip():
            raise RulesetError(400, "InvalidArgumentError", "name is required")
        check_rules(attrs.get("rules"))
        _check_object_type(attrs)
        now = int(self._clock())
        with self._lock:
            self._next += 1
            ruleset_id = str(self._next)
            values = {
                "name": attrs["name"],
                "rules": attrs["rules"],
                "enabled": bool(attrs.get("enabled", True)),
                "limit": int(attrs.get("limit", 100)),
                "notification_emails": list(attrs.get("notification_emails") or []),
                "match_object_type": attrs.get("match_object_type", "file"),
                "creation_date": now,
                "modification_date": now,
            }
            obj = object_envelope(
                "hunting_ruleset", ruleset_id, "intelligence/hunting_rulesets", _derived(values)
            )
            self._rulesets[ruleset_id] = obj
            return copy.deepcopy(obj)

    def patch(self, ruleset_id: str, body: Any) -> dict:
        attrs = _attributes(body, "hunting_ruleset")
        data = body["data"]
        if data.get("id") not in (None, ruleset_id):
            raise RulesetError(400, "InvalidArgumentError", "data.id does not match the path")
        unknown = set(attrs) - _WRITABLE
        if unknown:
            raise RulesetError(400, "InvalidArgumentError", f"read-only: {sorted(unknown)}")
        if "rules" in attrs:
            check_rules(attrs["rules"])
        _check_object_type(attrs)
        with self._lock:
            obj = self._rulesets.get(ruleset_id)
            if obj is None:
                raise RulesetError(404, "NotFoundError", f'Ruleset "{ruleset_id}" not found')
            values = {**obj["attributes"], **attrs, "modification_date": int(self._clock())}
            obj["attributes"] = _derived(values)
            return copy.deepcopy(obj)

    def delete(self, ruleset_id: str) -> None:
        with self._lock:
            if self._rulesets.pop(ruleset_id, None) is None:
                raise RulesetError(404, "NotFoundError", f'Ruleset "{ruleset_id}" not found')
            self._deleted.add(ruleset_id)
            self._editors.pop(ruleset_id, None)

    def add_editors(self, ruleset_id: str, body: Any) -> None:
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(
            isinstance(d, dict) and d.get("type") in {"user", "group"} and d.get("id") for d in data
        ):
            raise RulesetError(400, "InvalidArgumentError", "data must be a list of users")
        with self._lock:
            if ruleset_id not in self._rulesets:
                raise RulesetError(404, "NotFoundError", f'Ruleset "{ruleset_id}" not found')
            known = self._editors.setdefault(ruleset_id, [])
            for item in data:
                editor = {"type": str(item["type"]), "id": str(item["id"])}
                if editor not in known:
                    known.append(editor)

    def notify(self, ruleset_id: str, file_id: str, date: int | None = None) -> dict:
        """Livehunt's notification when the (enabled) ruleset matches the file."""
        obj = self.get(ruleset_id)
        if obj is None:
            raise RulesetError(404, "NotFoundError", f'Ruleset "{ruleset_id}" not found')
        attrs = obj["attributes"]
        if not attrs.get("enabled"):
            raise RulesetError(400, "FailedDependencyError", "the ruleset is disabled")
        names = attrs.get("rule_names") or ["unknown"]
        when = int(self._clock()) if date is None else int(date)
        return self._add_notification(ruleset_id, str(attrs["name"]), names[0], file_id, when)


def _check_object_type(attrs: dict[str, Any]) -> None:
    """The documented values (`file`, `url`, `domain`, `ip`) and vt-py's `ip_address`."""
    kind = attrs.get("match_object_type", "file")
    if kind not in {"file", "url", "domain", "ip", "ip_address"}:
        raise RulesetError(400, "InvalidArgumentError", f"invalid match_object_type {kind!r}")


def _derived(values: dict[str, Any]) -> dict[str, Any]:
    """Attributes VirusTotal computes from the rules."""
    names = rule_names(str(values.get("rules") or ""))
    return {**values, "rule_names": names, "number_of_rules": len(names)}


def _attributes(body: Any, expected: str) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or data.get("type") != expected:
        raise RulesetError(400, "InvalidArgumentError", f'data.type must be "{expected}"')
    attrs = data.get("attributes")
    if not isinstance(attrs, dict):
        raise RulesetError(400, "InvalidArgumentError", "data.attributes must be an object")
    return attrs


def _parse_filter(text: str) -> list[Callable[[dict], bool]]:
    terms: list[Callable[[dict], bool]] = []
    for term in text.split():
        key, _, value = term.partition(":")
        if not value:
            raise RulesetError(400, "InvalidArgumentError", f"invalid filter term {term!r}")
        if key == "enabled":
            wanted = value.lower() == "true"
            terms.append(lambda r, w=wanted: bool(r["attributes"].get("enabled")) == w)
        elif key in {"name", "rules"}:
            terms.append(lambda r, k=key, v=value: _has_word(str(r["attributes"].get(k)), v))
        elif key == "tag":
            terms.append(lambda r, v=value: v in (r["attributes"].get("tags") or []))
        else:
            raise RulesetError(400, "InvalidArgumentError", f"invalid filter term {term!r}")
    return terms


def _has_word(text: str, word: str) -> bool:
    """A full word, "delimited by non-alphanumeric characters" (VT's filter documentation)."""
    pattern = rf"(?<![A-Za-z0-9]){re.escape(word)}(?![A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def _encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, ValueError):
        raise RulesetError(400, "InvalidArgumentError", "invalid cursor") from None
