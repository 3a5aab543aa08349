"""Config helpers every package's settings model uses.

* ``TimeZoneName``: a settings field holding an IANA zone, checked when read;
* ``validation_problems``/``validate_settings``: pydantic errors as ``ConfigProblem``s
  with dotted key paths (``sources[1].access_token``), never with the input value;
* ``expand_env``: ``${NAME}`` and ``${NAME:-default}`` in every string of a TOML
  document, each unset variable a problem at its key path, secret-looking values
  remembered for the log redactor;
* ``secret_values``: every ``SecretStr`` inside validated settings.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, SecretStr, ValidationError

from sales_velocity.kernel.errors import ConfigError, ConfigProblem

__all__ = [
    "ENV_REF",
    "SECRET_ENV_NAME",
    "TimeZoneName",
    "expand_env",
    "secret_values",
    "validate_settings",
    "validation_problems",
]

M = TypeVar("M", bound=BaseModel)

SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|WEBHOOK|CREDENTIAL", re.I)
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Oslo)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""A settings field holding an IANA time zone name, checked when the config is read."""



def validation_problems(error: ValidationError, prefix: str = "") -> list[ConfigProblem]:
    """Turn a pydantic ``ValidationError`` into problems with dotted key paths.

    Secret values never appear: only the key path and pydantic's message are kept.
    """
    problems = []
    for item in error.errors(include_url=False, include_input=False):
        parts = [prefix] if prefix else []
        for loc in item["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
            else:
                parts.append(str(loc))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        problems.append(ConfigProblem(".".join(parts), message))
    return problems


def validate_settings(
    model: type[M],
    raw: Mapping[str, Any],
    path: str,
    context: Mapping[str, Any] | None = None,
) -> M:
    """Validate ``raw`` against ``model``, raising one ``ConfigError`` with every problem.

    ``context`` reaches validators as ``info.context`` (e.g. ``config_dir``, to
    resolve relative paths against the config file's folder).
    """
    try:
        return model.model_validate(dict(raw), context=dict(context or {}))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, path)) from None


def expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem],
               secrets: list[str]) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string, recording unset variables."""
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else k, problems, secrets)
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and env[name] != "":
            if SECRET_ENV_NAME.search(name):
                secrets.append(env[name])
            return env[name]
        if default is not None:
            return default
        problems.append(ConfigProblem(path, f"environment variable {name} is not set"))
        return ""

    return ENV_REF.sub(substitute, value)


def secret_values(obj: Any, seen: set[int] | None = None) -> Iterator[str]:
    """Every ``SecretStr`` value inside validated settings (for the log redactor)."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, SecretStr):
        yield obj.get_secret_value()
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from secret_values(getattr(obj, name), seen)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from secret_values(item, seen)
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from secret_values(item, seen)
    elif hasattr(obj, "settings"):
        yield from secret_values(obj.settings, seen)
