"""Reading settings from environment variables: one parser, errors that name the variable.

Every setting of vt_pipeline comes from an environment variable (the upstream connectors' names
where they exist). A bad value must fail when the code location loads, with a message that names
the variable, the value and what is accepted - never `invalid literal for int()` inside a run.

- booleans accept true/false, 1/0, yes/no, on/off, y/n, in any case;
- integers accept an optional sign and digits, within the bounds the setting allows;
- lists are comma separated, blanks dropped;
- strings are taken as they are (an alert prefix keeps its trailing space);
- URLs must be http(s) with a host (`http_url`).
An empty value counts as unset, except for strings.

The same checks guard values set per run in the launchpad: settings models carry `ge`/`le`
bounds and pydantic validators whose messages use `invalid()` with the upstream variable's name,
so a bad run config fails when the run starts (resource initialization), before any VT call.
Messages never contain a secret: no validator looks at a token or an API key's value.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import pydantic

M = TypeVar("M", bound=pydantic.BaseModel)

TRUE = frozenset({"true", "1", "yes", "y", "on"})
FALSE = frozenset({"false", "0", "no", "n", "off"})


class ConfigError(ValueError):
    """Settings whose values cannot be used; each problem names the variable and the value.

    A ValueError, so that a pydantic validator raising it reports it as a value error.
    """

    def __init__(self, *problems: str) -> None:
        self.problems = list(problems)
        if len(problems) == 1:
            super().__init__(problems[0])
        else:
            super().__init__("\n".join([f"{len(problems)} settings are not accepted:", *problems]))


def invalid(name: str, raw: Any, accepted: str) -> ConfigError:
    """The one wording of a bad setting: `NAME='value' is not accepted: expected ...`."""
    return ConfigError(f"{name}={str(raw)[:200]!r} is not accepted: expected {accepted}")


def is_env_reference(value: Any) -> bool:
    """An `EnvVar` given at definition time: its text is a variable's name, not the value.

    Validators let it through; Dagster resolves it when the run starts and validates again.
    """
    return isinstance(value, dg.EnvVar)


def combined(errors: list[ConfigError]) -> ConfigError:
    """One error for several bad variables, so an operator fixes them all in one go."""
    if len(errors) == 1:
        return errors[0]
    return ConfigError(*[problem for error in errors for problem in error.problems])


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
    fields: Collection[str] | None = None,
) -> dict[str, Any]:
    """Values for a settings model's fields from `PREFIX` + `FIELD_NAME` variables.

    `names` maps a field to a variable name of its own (instead of prefix + field); `fields`
    limits the fields read (default: all). Only the variables that are set are returned, so
    unset ones keep the model's defaults. Integer bounds come from the field's `ge`/`le`
    constraints; every value that cannot be parsed is reported in one `ConfigError` naming the
    variables. `settings_from_env` also builds the model, reporting what its validators reject.
    """
    values, errors = _read(model, prefix, os.environ if env is None else env, names, fields)
    if errors:
        raise combined(errors)
    return values


def settings_from_env(
    model: type[M],
    prefix: str,
    env: Mapping[str, str] | None = None,
    names: Mapping[str, str] | None = None,
    fields: Collection[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> M:
    """The model from its variables (see `fields_from_env`) plus `extra` values (e.g. EnvVar
    secrets, never read here); one `ConfigError` lists every variable that is not accepted,
    whether it could not be parsed or the model's validators refused it."""
    env = os.environ if env is None else env
    values, errors = _read(model, prefix, env, names, fields)
    variables = {name: _variable(name, prefix, names) for name in model.model_fields}
    try:
        built = build(model, {**values, **(extra or {})}, variables)
    except ConfigError as exc:
        errors.append(exc)
    if errors:
        raise combined(errors)
    return built


def build(model: type[M], values: Mapping[str, Any], variables: Mapping[str, str]) -> M:
    """The model from values read from variables; what it rejects becomes a ConfigError.

    `variables` maps a field to its environment variable, so that a message from pydantic's own
    checks still names the variable (validators that raise `invalid()` already do).
    """
    try:
        return model(**values)
    except pydantic.ValidationError as exc:
        errors: list[ConfigError] = []
        for error in exc.errors(include_url=False):
            cause = (error.get("ctx") or {}).get("error")
            if isinstance(cause, ConfigError):
                errors.append(cause)
                continue
            field = str(error["loc"][0]) if error["loc"] else ""
            name = variables.get(field, field or model.__name__)
            errors.append(invalid(name, values.get(field, ""), error["msg"]))
        raise combined(errors) from None


def _read(
    model: type[pydantic.BaseModel],
    prefix: str,
    env: Mapping[str, str],
    names: Mapping[str, str] | None,
    fields: Collection[str] | None,
) -> tuple[dict[str, Any], list[ConfigError]]:
    values: dict[str, Any] = {}
    errors: list[ConfigError] = []
    for field_name, field in model.model_fields.items():
        if fields is not None and field_name not in fields:
            continue
        variable = _variable(field_name, prefix, names)
        raw = env.get(variable)
        if raw is None or (raw.strip() == "" and field.annotation is not str):
            continue
        try:
            values[field_name] = _parse(variable, raw, field)
        except ConfigError as exc:
            errors.append(exc)
    return values, errors


def _variable(field_name: str, prefix: str, names: Mapping[str, str] | None) -> str:
    return (names or {}).get(field_name) or prefix + field_name.upper()


def http_url(name: str, raw: str, example: str, strip_suffixes: tuple[str, ...] = ()) -> str:
    """An http(s) base URL: scheme and host required, no credentials, query or fragment.

    Returned without a trailing slash and without any of `strip_suffixes` (e.g. `/api/v3` that
    the client appends itself). A URL the client cannot even send is a configuration error, to be
    refused before the first request: retrying it would only wait.
    """
    text = raw.strip()
    accepted = f"an http:// or https:// URL with a host, e.g. {example}"
    if re.search(r"[\s\x00-\x1f\x7f]", text):
        raise invalid(name, raw, accepted + " (no spaces or control characters)")
    parts = urlsplit(text)
    if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
        raise invalid(name, raw, accepted)
    if "@" in parts.netloc:
        masked = urlunsplit((parts.scheme, "***@" + parts.netloc.rsplit("@", 1)[1], "", "", ""))
        raise invalid(name, masked, "a URL without credentials (they would show in logs)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        raise invalid(name, raw, accepted + " and a port from 1 to 65535") from None
    if parts.query or parts.fragment:
        raise invalid(name, raw, accepted + ", without ?query or #fragment")
    path = parts.path.rstrip("/")
    for suffix in strip_suffixes:
        if path.lower().endswith(suffix.lower()):
            path = path[: -len(suffix)].rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def writable_directory(name: str, path: str) -> str:
    """`path` when this process can create (or already has) it as a writable directory.

    Checked without creating anything, from the nearest existing ancestor, so that a storage
    directory on a read-only volume or under a file fails at load, not in a run's first write.
    """
    probe = Path(path).absolute()
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        usable = probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)
    except OSError:
        usable = False
    if not usable:
        raise invalid(
            name, path, f"a directory this process can create and write ({probe} is not one)"
        )
    return path


def one_of(
    name: str, raw: str, accepted: Collection[str], aliases: Mapping[str, str] | None = None
) -> str:
    """A value from a fixed set, compared case-insensitively; returned lower-cased, canonical."""
    key = raw.strip().lower()
    key = (aliases or {}).get(key, key)
    if key not in accepted:
        raise invalid(name, raw, "one of " + ", ".join(accepted))
    return key


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
