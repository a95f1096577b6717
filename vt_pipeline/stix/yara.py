"""Find one YARA rule in a ruleset source and rebuild it as a stand-alone pattern (plyara).

Livehunt notifications name the rule that matched; the ruleset holds many rules. The Indicator
pattern is that rule alone, rebuilt by `plyara.utils.rebuild_yara_rule` like upstream, so the
pattern (and the Indicator id derived from it) does not change when other rules of the ruleset
are edited. Parsing is slow (~1 ms per rule), so `YaraRulesetCache` parses each distinct source
once per bundle build. A source plyara cannot parse raises `YaraParseError`, never anything else.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import plyara
import plyara.core
import plyara.utils

from vt_pipeline.virustotal.objects import parse_timestamp

# plyara logs every parse problem at WARNING on its own; we report them as YaraParseError.
logging.getLogger("plyara").setLevel(logging.ERROR)

_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n", "t": "\t", "r": "\r"}


class YaraParseError(ValueError):
    """A YARA ruleset source that plyara cannot parse (or that is not text at all)."""


@dataclass(frozen=True)
class YaraRule:
    """One rule of a ruleset: its name, rebuilt source and metadata."""

    name: str
    source: str  # rebuilt by plyara: the Indicator pattern
    metadata: dict[str, str | int | bool] = field(default_factory=dict)  # first value per key

    @property
    def description(self) -> str | None:
        value = self.metadata.get("description")
        if isinstance(value, str) and value.strip():
            return unescape_yara_string(value.strip())
        return None

    @property
    def date(self) -> int | None:
        """The `date` metadata as unix seconds, when it is a recognizable date."""
        return parse_rule_date(self.metadata.get("date"))


def parse_ruleset(source: Any) -> dict[str, YaraRule]:
    """All rules of a source by name (the first rule of a duplicated name wins).

    Any failure of plyara becomes YaraParseError: the source is untrusted text, and one bad
    ruleset must not abort a whole bundle.
    """
    if not isinstance(source, str):
        raise YaraParseError(f"ruleset source is {type(source).__name__}, not text")
    try:
        with _PARSER_LOCK:
            parsed = _parser().parse_string(source)
        rules: dict[str, YaraRule] = {}
        for raw in parsed:
            name = raw["rule_name"]
            if name in rules:
                continue
            metadata: dict[str, str | int | bool] = {}
            for entry in raw.get("metadata") or []:
                for key, value in entry.items():
                    metadata.setdefault(key, value)
            rules[name] = YaraRule(name, plyara.utils.rebuild_yara_rule(raw), metadata)
    except Exception as exc:  # untrusted text: whatever plyara raises means "cannot parse"
        raise YaraParseError(f"cannot parse YARA ruleset: {type(exc).__name__}: {exc}") from exc
    return rules


class _ReusablePlyara(plyara.Plyara):
    """plyara's parser, built once per process and reset between sources.

    `plyara.Plyara()` builds yacc's LR tables every time (~30 ms, nearly all of the parse of a
    Livehunt ruleset), and `clear()` rebuilds them too. `reset()` is `clear()` without that:
    the state of the previous parse goes, the parser stays (a fresh lexer, as `clear()` makes).
    """

    def reset(self) -> None:
        for accumulator in (
            self.rules,
            self.current_rule,
            self.string_modifiers,
            self.imports,
            self.includes,
            self.terms,
            self.scopes,
            self.tags,
            self.comments,
            self._rule_comments,
            self._stringnames,
        ):
            accumulator.clear()
        self._raw_input = None
        self._meta_start = self._meta_end = None
        self._strings_start = self._strings_end = None
        self._condition_start = self._condition_end = None
        self.lexer = plyara.core.lex.lex(module=self, debug=False)


_PARSER_LOCK = threading.Lock()  # one parse at a time: the parser holds its state


@functools.cache
def _shared_parser() -> _ReusablePlyara:
    return _ReusablePlyara()


def _parser() -> _ReusablePlyara:
    """The process's parser, reset for a new source (call with `_PARSER_LOCK` held)."""
    parser = _shared_parser()
    parser.reset()
    return parser


@functools.lru_cache(maxsize=256)
def _parsed_ruleset(source: str) -> Mapping[str, YaraRule] | YaraParseError:
    """Each distinct ruleset source is parsed once per process (plyara takes tens of ms per
    ruleset, and one run maps many windows that share the same few rulesets). Parse errors are
    remembered too. Pure: the result depends on the text only."""
    try:
        return MappingProxyType(parse_ruleset(source))
    except YaraParseError as exc:
        return exc


def find_rule(source: Any, rule_name: str) -> YaraRule | None:
    """The rule `rule_name` of `source`, None when absent; YaraParseError if unparseable."""
    if not isinstance(source, str):
        raise YaraParseError(f"ruleset source is {type(source).__name__}, not text")
    parsed = _parsed_ruleset(source)
    if isinstance(parsed, YaraParseError):
        raise parsed
    return parsed.get(rule_name)


def unescape_yara_string(value: str) -> str:
    """plyara keeps YARA escapes (`\\"`, `\\\\`, `\\n`) in metadata values; undo them for prose."""
    return _ESCAPE.sub(lambda m: _ESCAPED.get(m.group(1), m.group(1)), value)


def parse_rule_date(value: Any) -> int | None:
    """A rule's `date` metadata (`2024-01-31`, `2024/01/31`, `2024.01.31`, ISO date-time) as unix
    seconds in UTC; None for anything else (numbers are ambiguous and ignored)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"\d{4}[/.]\d{2}[/.]\d{2}", text):
        text = text.replace("/", "-").replace(".", "-")
    if not re.match(r"\d{4}-\d{2}-\d{2}", text):
        return None
    return parse_timestamp(text)
