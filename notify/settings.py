"""Settings the ``notify`` package owns: the ``[notify]`` and ``[reminders]`` tables.

``scheduler.py`` calls :func:`load_notify_settings` with both raw tables; every
problem in either, including each channel's, comes back in one ``ConfigError``
with its key path (``notify.channels[1].webhook_url: Field required``).

The reminder thresholds extend ``metrics.hygiene.HygieneSettings``, so the same
object drives the hygiene rules::

    [reminders]
    remind_every_days = 3
    inactive_days = 14
    stuck_days = 30
    [[reminders.overrides]]           # per pipeline, or per stage of it
    pipeline = "Enterprise"           # id or name
    stage = "Negotiation"             # optional
    stuck_days = 45
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SkipValidation, ValidationError, field_validator

from sales_velocity.kernel.addresses import address_problem
from sales_velocity.kernel.config import validation_problems
from sales_velocity.kernel.errors import ConfigError, ConfigProblem
from sales_velocity.metrics.hygiene import HygieneSettings
from sales_velocity.notify.channels import Channel, build_channel

__all__ = ["NotifySettings", "RemindersSettings", "load_notify_settings"]

Locale = Literal["en", "nb"]


class NotifySettings(BaseModel):
    """The ``[notify]`` table; ``channels`` holds the built channels."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    locale: Locale = Field(default="en", description='Language of every message: "en" or "nb".')
    fallback_to: str | None = Field(
        default=None,
        description="Address for reminders of owners without one (listed by owner).",
    )
    channels: SkipValidation[tuple[Channel, ...]] = Field(default=(), description="From [[notify.channels]].")
    top_deals: int = Field(default=10, ge=0, le=100, description="Worst stalled deals in the digest.")
    top_scopes: int = Field(default=15, ge=1, le=500, description="Rows per pipeline/owner table.")
    max_deals_per_reminder: int = Field(
        default=25, ge=1, le=1000,
        description='Deals listed in one reminder message (worst first); the rest as "and N more".',
    )
    chart: bool = Field(default=True, description="Embed a velocity trend chart in the HTML e-mail.")
    chart_days: int = Field(default=90, ge=7, le=730, description="Days of history in the trend chart.")
    movement: Literal["weekly", "daily", "never"] = Field(
        default="weekly",
        description="Pipeline movement section: in the first digest of each week, every digest, or never.",
    )
    movement_week_starts: Literal[
        "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    ] = Field(default="monday", description="The day a week starts on, for movement = \"weekly\".")
    movement_days: int = Field(default=7, ge=1, le=92, description="Days the movement section covers.")
    forecast: bool = Field(
        default=True, description="One line per horizon: the won value expected in the next 30/60/90 days.",
    )
    movement_top: int = Field(default=10, ge=0, le=100, description="Largest moves listed deal by deal.")
    max_data_age_hours: int = Field(
        default=26,
        ge=1,
        le=24 * 90,
        description="A source whose last good sync is older than this gets a warning on top of the digest.",
    )
    expire_after_days: int = Field(
        default=7,
        ge=1,
        le=90,
        description="Undelivered messages older than this are dropped, not sent.",
    )

    @field_validator("fallback_to")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        problem = address_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(f"not an e-mail address: {value!r} ({problem})")
        return value


class RemindersSettings(HygieneSettings):
    """The ``[reminders]`` table: the hygiene thresholds plus how often to repeat."""

    remind_every_days: int = Field(
        default=3,
        ge=1,
        le=365,
        description="Repeat a (deal, rule) reminder this often while it holds.",
    )


def load_notify_settings(
    raw_notify: Mapping[str, Any],
    raw_reminders: Mapping[str, Any],
    context: Mapping[str, Any] | None = None,
) -> tuple[NotifySettings, RemindersSettings]:
    """Validate ``[notify]`` (building each channel) and ``[reminders]``.

    Args:
        raw_notify: the ``[notify]`` table, environment variables expanded.
        raw_reminders: the ``[reminders]`` table.
        context: validation context (``config_dir``).

    Raises:
        ConfigError: every problem in both tables, each with its key path.
    """
    problems: list[ConfigProblem] = []
    channels: list[Channel] = []
    raw_channels = raw_notify.get("channels", [])
    if not isinstance(raw_channels, list):
        problems.append(ConfigProblem("notify.channels", "must be a list of tables ([[notify.channels]])"))
        raw_channels = []
    names: dict[str, int] = {}
    for i, table in enumerate(raw_channels):
        path = f"notify.channels[{i}]"
        if not isinstance(table, Mapping):
            problems.append(ConfigProblem(path, "must be a table"))
            continue
        name = table.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(
                    ConfigProblem(
                        f"{path}.name",
                        f"duplicate channel name {name!r} (also notify.channels[{names[name]}])",
                    )
                )
            names.setdefault(name, i)
        try:
            channels.append(build_channel(table, path, context))
        except ConfigError as exc:
            problems.extend(exc.problems)
    notify: NotifySettings | None = None
    rest = {k: v for k, v in raw_notify.items() if k != "channels"}
    try:
        notify = NotifySettings.model_validate(
            {**rest, "channels": tuple(channels)}, context=dict(context or {})
        )
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "notify"))
    reminders: RemindersSettings | None = None
    try:
        reminders = RemindersSettings.model_validate(dict(raw_reminders), context=dict(context or {}))
    except ValidationError as exc:
        problems.extend(validation_problems(exc, "reminders"))
    if problems or notify is None or reminders is None:
        raise ConfigError(problems)
    return notify, reminders
