"""Config helpers every package's settings model uses.

* ``TimeZoneName``: a settings field holding an IANA zone, checked when read;
* ``validation_problems``/``validate_settings``: pydantic errors as ``ConfigProblem``s
  with dotted key paths (``sources[1].access_token``), never with the input value;
* ``expand_env``: ``${NAME}``, ``${NAME:-default}`` and ``${file:/run/secrets/x}`` in
  every string of a TOML document (an unset ``NAME`` is read from the file named by
  ``NAME_FILE`` when that is set, as Docker and Kubernetes mount secrets), each
  unset variable or unreadable file a problem at its key path, secret-looking values
  remembered for the log redactor;
* ``secret_values``: every ``SecretStr`` inside validated settings.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, SecretStr, ValidationError

from sales_velocity.kernel.errors import ConfigError, ConfigProblem

__all__ = [
    "ENV_REF",
    "SECRET_ENV_NAME",
    "TimeZoneName",
    "expand_env",
    "known_keys",
    "nearest_key",
    "secret_values",
    "validate_settings",
    "validation_problems",
]

M = TypeVar("M", bound=BaseModel)

SECRET_ENV_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|WEBHOOK|CREDENTIAL", re.I)
ENV_REF = re.compile(r"\$\{(?:file:([^}]+)|([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?)\}")
MAX_SECRET_FILE_BYTES = 64 * 1024


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (use an IANA name like Europe/Oslo)") from None
    return value


TimeZoneName = Annotated[str, AfterValidator(_known_zone)]
"""A settings field holding an IANA time zone name, checked when the config is read."""



def validation_problems(error: ValidationError, prefix: str = "",
                        model: type[BaseModel] | None = None) -> list[ConfigProblem]:
    """Turn a pydantic ``ValidationError`` into problems with dotted key paths.

    Secret values never appear: only the key path and a message are kept.
    pydantic's wording is rewritten for people who edit a TOML file ("must be a
    list, like ["digest"]"), and with ``model`` given, an unknown key comes with
    the nearest known one ("did you mean `currency`?").
    """
    problems = []
    for item in error.errors(include_url=False):
        parts = [prefix] if prefix else []
        for loc in item["loc"]:
            if isinstance(loc, int):
                parts[-1:] = [f"{parts[-1]}[{loc}]"] if parts else [f"[{loc}]"]
            else:
                parts.append(str(loc))
        if item["type"] == "extra_forbidden":
            message = "unknown key"
            known = known_keys(model, item["loc"][:-1]) if model is not None else []
            guess = nearest_key(str(item["loc"][-1]), known)
            if guess:
                message += f" (did you mean `{guess}`?)"
        else:
            message = _plain(item)
        problems.append(ConfigProblem(".".join(parts), message))
    return problems


_LIST_TYPES = {"list_type", "tuple_type", "set_type", "frozen_set_type"}
_WORDS = {
    "missing": "required",
    "string_type": "must be text, in quotes",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "dict_type": "must be a table (a [section] or { key = value })",
    "model_type": "must be a table (a [section] or { key = value })",
    "model_attributes_type": "must be a table (a [section] or { key = value })",
}


def _plain(item: Any) -> str:
    """Pydantic's message for one error, in the words of a config file."""
    kind = item["type"]
    if kind in _LIST_TYPES:
        value = item.get("input")
        example = (f'[{_quote(value)}]' if isinstance(value, str) and re.fullmatch(r"[a-z_]{1,24}", value)
                   else '["a", "b"]')
        return f"must be a list, like {example}"
    if kind in _WORDS:
        return _WORDS[kind]
    message = str(item["msg"])
    for old, new in (("Value error, ", ""), ("Assertion failed, ", ""), ("Input should be ", "must be "),
                     ("String should ", "must "), ("List should ", "must "),
                     ("greater than or equal to ", "at least "), ("less than or equal to ", "at most ")):
        message = message.replace(old, new)
    return message


def _quote(value: str) -> str:
    return '"' + value + '"'


def known_keys(model: type[BaseModel], loc: tuple[int | str, ...] | list[int | str]) -> list[str]:
    """The keys a table at ``loc`` inside ``model`` accepts (empty when it cannot tell)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int):
            continue
        info = current.model_fields.get(part)
        current = _model_in(info.annotation) if info is not None else None
    if current is None:
        return []
    return [info.alias or name for name, info in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation like ``list[Model] | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _model_in(typing.get_args(annotation)[0])
    if origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def nearest_key(key: str, known: list[str]) -> str | None:
    """The known key closest to a mistyped ``key`` (``curency`` -> ``currency``), or ``None``."""
    matches = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not matches:
        matches = [k for k in known if k.lower() == key.lower().replace("-", "_")]
    return matches[0] if matches else None


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
        raise ConfigError(validation_problems(exc, path, model)) from None


def expand_env(value: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem],
               secrets: list[str]) -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and ``${file:PATH}`` in every string.

    An unset ``VAR`` is read from the file ``VAR_FILE`` names, when set. Each
    unset variable or unreadable file becomes one problem at its key path; values
    of secret-looking variables and of every file are remembered as secrets.
    """
    if isinstance(value, dict):
        return {k: expand_env(v, env, f"{path}.{k}" if path else k, problems, secrets)
                for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, env, f"{path}[{i}]", problems, secrets) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        file_name, name, default = match.group(1), match.group(2), match.group(3)
        if file_name is not None:
            return _read_secret_file(file_name.strip(), path, f"${{file:{file_name}}}", problems, secrets)
        if name in env and env[name] != "":
            if SECRET_ENV_NAME.search(name):
                secrets.append(env[name])
            return env[name]
        if env.get(f"{name}_FILE"):
            return _read_secret_file(env[f"{name}_FILE"], path, f"{name}_FILE", problems, secrets)
        if default is not None:
            return default
        problems.append(ConfigProblem(path, f"environment variable {name} is not set "
                                            f"(nor {name}_FILE)"))
        return ""

    return ENV_REF.sub(substitute, value)


def _read_secret_file(name: str, path: str, origin: str, problems: list[ConfigProblem],
                      secrets: list[str]) -> str:
    """The content of a mounted secret file, without its trailing newline."""
    file = Path(name)
    try:
        if file.stat().st_size > MAX_SECRET_FILE_BYTES:
            raise ValueError(f"larger than {MAX_SECRET_FILE_BYTES // 1024} KiB")
        text = file.read_text(encoding="utf-8").rstrip("\r\n")
    except FileNotFoundError:
        problems.append(ConfigProblem(path, f"secret file {name} ({origin}) does not exist"))
        return ""
    except IsADirectoryError:
        problems.append(ConfigProblem(path, f"secret file {name} ({origin}) is a directory"))
        return ""
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        problems.append(ConfigProblem(path, f"secret file {name} ({origin}) cannot be read: {reason}"))
        return ""
    if not text:
        problems.append(ConfigProblem(path, f"secret file {name} ({origin}) is empty"))
        return ""
    secrets.append(text)
    return text


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
