"""Reading settings from environment variables: one parser, errors that name the variable.

Every setting of vt_pipeline comes from an environment variable (the upstream connectors' names
where they exist). A bad value must fail when the code location loads, with a message that names
the variable, the value and what is accepted - never `invalid literal for int()` inside a run.

- booleans accept true/false, 1/0, yes/no, on/off, y/n, in any case;
- integers accept an optional sign and digits, within the bounds the setting allows;
- lists are comma separated, blanks dropped;
- strings are taken as they are (an alert prefix keeps its trailing space).
An empty value counts as unset, except for strings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, get_args, get_origin

import pydantic

TRUE = frozenset({"true", "1", "yes", "y", "on"})
FALSE = frozenset({"false", "0", "no", "n", "off"})


class ConfigError(ValueError):
    """A setting whose value cannot be used; the message names the variable and the value."""


def invalid(name: str, raw: Any, accepted: str) -> ConfigError:
    """The one wording of a bad setting: `NAME='value' is not accepted: expected ...`."""
    return ConfigError(f"{name}={str(raw)[:200]!r} is not accepted: expected {accepted}")


def parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise invalid(name, raw, "true or false (also 1/0, yes/no, on/off)")


def parse_int(name: str, raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    text = raw.strip()
    try:
        value = int(text)
    except ValueError:
        raise invalid(name, raw, _int_range(minimum, maximum)) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise invalid(name, raw, _int_range(minimum, maximum))
    return value


def parse_list(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def env_int(
    name: str,
    default: int,
    env: Mapping[str, str] | None = None,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    """An integer variable, or `default` when it is unset or empty."""
    raw = (os.environ if env is None else env).get(name, "")
    return default if not raw.strip() else parse_int(name, raw, minimum, maximum)


def env_bool(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    raw = (os.environ if env is None else env).get(name, "")
    return default if not raw.strip() else parse_bool(name, raw)


def fields_from_env(
    model: type[pydantic.BaseModel],
    prefix: str,
    env: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Values for a settings model's fields from `PREFIX` + `FIELD_NAME` variables.

    `names` maps a field to a variable name of its own (instead of prefix + field). Only the
    variables that are set are returned, so unset ones keep the model's defaults. Integer
    bounds come from the field's `ge`/`le` constraints, and a value the model rejects raises a
    `ConfigError` naming the variable.
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    for field_name, field in model.model_fields.items():
        variable = (names or {}).get(field_name) or prefix + field_name.upper()
        raw = env.get(variable)
        if raw is None or (raw.strip() == "" and field.annotation is not str):
            continue
        values[field_name] = _parse(variable, raw, field)
    return values


def _parse(name: str, raw: str, field: Any) -> Any:
    annotation = field.annotation
    if annotation is bool:
        return parse_bool(name, raw)
    if annotation is int:
        minimum, maximum = _bounds(field)
        return parse_int(name, raw, minimum, maximum)
    if get_origin(annotation) is list and get_args(annotation) == (str,):
        return parse_list(raw)
    return raw


def _bounds(field: Any) -> tuple[int | None, int | None]:
    minimum = maximum = None
    for constraint in field.metadata:
        minimum = getattr(constraint, "ge", minimum)
        maximum = getattr(constraint, "le", maximum)
    return minimum, maximum


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer >= {minimum}"
    if maximum is not None:
        return f"an integer <= {maximum}"
    return "an integer"
