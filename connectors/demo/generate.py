"""Write the bundled demo pipeline, ``connectors/demo/demo_deals.csv``, deterministically.

Run ``python -m connectors.demo.generate [OUTPUT]``. The same seed always gives the
same bytes. The deals are created over the 12 months before ``AS_OF`` (2026-11-26),
in two pipelines and for five owners, with realistic cycle lengths, a win rate
near 25 % and the hygiene problems the reminders look for: no next step, an
overdue next step, a passed expected close date, a long time in one stage, weeks
without activity, and a few deals without an amount. Each deal carries the stages
it went through (``stage_history``), so "where deals wait" has data. Datetimes are written naive,
meaning local time in the feed's time zone (Europe/Oslo by default); the ``demo`` source
(``connectors.demo.connector``) shifts them so the demo always ends today.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["AS_OF", "COLUMNS", "DEFAULT_OUTPUT", "SEED", "generate", "main", "write_csv"]

AS_OF = dt.date(2026, 11, 26)
SEED = 20261126
DEALS = 400
CURRENCY = "NOK"
WINDOW_DAYS = 90
DEFAULT_OUTPUT = Path(__file__).with_name("demo_deals.csv")

COLUMNS = (
    "id", "title", "amount", "currency", "pipeline", "stage", "status", "owner", "owner_email",
    "created_at", "closed_at", "expected_close_date", "stage_entered_at", "next_step",
    "next_activity_at", "last_activity_at", "stage_history",
)

OWNERS = (
    ("Kari Nordmann", "kari.nordmann@example.com"),
    ("Ola Hansen", "ola.hansen@example.com"),
    ("Ingrid Berg", "ingrid.berg@example.com"),
    ("Lars Johansen", "lars.johansen@example.com"),
    ("Sofie Lien", "sofie.lien@example.com"),
)


@dataclass(frozen=True)
class _PipelineShape:
    name: str
    share: float
    win_rate: float
    median_amount: float
    spread: float
    open_stages: tuple[str, ...]
    products: tuple[str, ...]


PIPELINES = (
    _PipelineShape(
        "New Business", 0.7, 0.20, 140_000, 0.6,
        ("Prospecting", "Qualified", "Proposal", "Negotiation"),
        ("CRM rollout", "Analytics licence", "Onboarding package", "Integration project", "Pilot"),
    ),
    _PipelineShape(
        "Renewals", 0.3, 0.36, 60_000, 0.4,
        ("Qualified", "Proposal", "Negotiation"),
        ("Annual renewal", "Support renewal", "Licence expansion"),
    ),
)

_PREFIXES = (
    "Fjord", "Nordlys", "Bjørke", "Havbris", "Solvik", "Tindra", "Skog", "Vestkyst", "Isbre",
    "Lofoten", "Kvitfjell", "Øst", "Granitt", "Elvebakk", "Måke", "Stavanger", "Trøndelag",
)
_SUFFIXES = ("Bygg AS", "Energi AS", "Logistikk AS", "Helse AS", "Data AS", "Sjømat AS", "Finans ASA")
NEXT_STEPS = (
    "Send revised proposal", "Book demo with CFO", "Follow up on pricing questions",
    "Schedule technical deep dive", "Get legal sign-off on contract", "Call champion about budget",
    "Share customer references", "Agree on rollout plan", "Workshop with end users",
    "Confirm decision date",
)


def _at(day: dt.date, rng: random.Random) -> dt.datetime:
    """A working-hours time on ``day`` (naive: local time)."""
    return dt.datetime.combine(day, dt.time(rng.randint(8, 16), rng.choice((0, 15, 30, 45))))


def _iso(value: dt.datetime | dt.date | None) -> str:
    return "" if value is None else value.isoformat()


def _amount(shape: _PipelineShape, rng: random.Random) -> int:
    value = rng.lognormvariate(math.log(shape.median_amount), shape.spread)
    return max(5_000, int(round(value, -3)))


def _deal(n: int, rng: random.Random, companies: list[str]) -> dict[str, str]:
    shape = rng.choices(PIPELINES, weights=[p.share for p in PIPELINES])[0]
    owner, email = rng.choice(OWNERS)
    created_day = AS_OF - dt.timedelta(days=rng.randint(1, 365))
    created = _at(created_day, rng)
    won = rng.random() < shape.win_rate
    cycle = round(rng.triangular(30, 150, 70)) if won else rng.randint(20, 120)
    close_day = created_day + dt.timedelta(days=cycle)
    zombie = rng.random() < 0.03  # old deal nobody closed: stuck in its stage
    row = {
        "id": f"D-{1000 + n}",
        "title": f"{rng.choice(companies)} – {rng.choice(shape.products)}",
        "amount": str(_amount(shape, rng)),
        "currency": CURRENCY,
        "pipeline": shape.name,
        "owner": owner,
        "owner_email": email,
        "created_at": _iso(created),
        "next_step": "",
        "next_activity_at": "",
    }
    if close_day < AS_OF and not zombie:
        closed = _at(close_day, rng)
        slip = dt.timedelta(days=rng.randint(-20, 10))
        row.update(
            stage="Won" if won else "Lost",
            status="won" if won else "lost",
            closed_at=_iso(closed),
            expected_close_date=_iso(close_day - slip),
            stage_entered_at=_iso(closed),
            last_activity_at=_iso(closed - dt.timedelta(days=rng.randint(0, 3))),
        )
        return row
    age = (AS_OF - created_day).days
    progress = min(age / max(cycle, 1), 0.99)
    stages = shape.open_stages
    index = min(int(progress * len(stages)), len(stages) - 1)
    if zombie:
        index = rng.randrange(len(stages))
    entered_day = created_day + dt.timedelta(days=int(age * index / len(stages)))
    if zombie:
        entered_day = max(created_day, AS_OF - dt.timedelta(days=rng.randint(60, 150)))
    expected = max(close_day, AS_OF + dt.timedelta(days=rng.randint(5, 60)))
    if zombie or rng.random() < 0.10:
        expected = AS_OF - dt.timedelta(days=rng.randint(1, 30))  # the close date has passed
    hygiene = rng.random()
    if hygiene < 0.12:
        pass  # no next step at all
    elif hygiene < 0.24:
        row["next_step"] = rng.choice(NEXT_STEPS)
        row["next_activity_at"] = _iso(_at(AS_OF - dt.timedelta(days=rng.randint(1, 20)), rng))
    else:
        row["next_step"] = rng.choice(NEXT_STEPS)
        row["next_activity_at"] = _iso(_at(AS_OF + dt.timedelta(days=rng.randint(1, 14)), rng))
    quiet = rng.randint(21, 60) if zombie or rng.random() < 0.15 else rng.randint(1, 10)
    last_day = max(created_day, AS_OF - dt.timedelta(days=quiet))
    row.update(
        stage=stages[index],
        status="open",
        closed_at="",
        expected_close_date=_iso(expected),
        stage_entered_at=_iso(_at(entered_day, rng)),
        last_activity_at=_iso(_at(last_day, rng)),
    )
    if rng.random() < 0.04:
        row["amount"] = ""  # nobody has priced it yet
    return row


STAGE_WEIGHTS = {"Prospecting": 1.0, "Qualified": 1.5, "Proposal": 2.5, "Negotiation": 3.0}
"""How long deals tend to stay in each open stage, relative to each other (for the stage history)."""


def _stage_history(n: int, row: dict[str, str]) -> str:
    """The stages deal ``n`` went through and when, as ``Stage@time; ...``, derived from its row.

    No random draws (the other columns stay what they were): a won deal went
    through every open stage, a lost one dropped out after some, an open one is
    in its current stage since ``stage_entered_at``. The time between creation
    and the last entry is shared out by ``STAGE_WEIGHTS``, varied per deal.
    """
    stages = next(p.open_stages for p in PIPELINES if p.name == row["pipeline"])
    start = dt.datetime.fromisoformat(row["created_at"])
    if row["status"] in ("won", "lost"):
        last = dt.datetime.fromisoformat(row["closed_at"])
        passed = stages if row["status"] == "won" else stages[: 1 + n % len(stages)]
    else:
        last = dt.datetime.fromisoformat(row["stage_entered_at"])
        passed = stages[: stages.index(row["stage"])]
    weights = [STAGE_WEIGHTS[s] * (1 + (n * (i + 3)) % 7 / 10) for i, s in enumerate(passed)]
    span, total, entries, done = last - start, sum(weights), [], 0.0
    for stage, weight in zip(passed, weights, strict=True):
        entries.append((stage, start + span * (done / total)))
        done += weight
    return "; ".join(f"{stage}@{when.replace(second=0, microsecond=0).isoformat()}"
                     for stage, when in [*entries, (row["stage"], last)])


def generate(seed: int = SEED, count: int = DEALS) -> list[dict[str, str]]:
    """Return the demo deals as rows of strings, in creation order."""
    rng = random.Random(seed)  # noqa: S311 - reproducible demo data, not crypto
    companies = [f"{p} {s}" for p in _PREFIXES for s in _SUFFIXES]
    rows = [_deal(n, rng, companies) for n in range(count)]
    rows.sort(key=lambda r: r["created_at"])
    for n, row in enumerate(rows, start=1):
        row["id"] = f"D-{1000 + n}"
        row["stage_history"] = _stage_history(n, row)
    _check_defined(rows)
    return rows


def _check_defined(rows: list[dict[str, str]]) -> None:
    """Every scope (all, each pipeline, each owner) needs a won deal with an amount in the window."""
    start = AS_OF - dt.timedelta(days=WINDOW_DAYS)
    won = [
        r for r in rows
        if r["status"] == "won" and r["amount"] and start < dt.date.fromisoformat(r["closed_at"][:10])
    ]
    scopes = [("pipeline", p.name) for p in PIPELINES] + [("owner", o) for o, _ in OWNERS]
    for key, value in scopes:
        if not any(r[key] == value for r in won):
            raise RuntimeError(f"demo data has no won deal in the window for {key} {value!r}")


def write_csv(rows: list[dict[str, str]], path: Path) -> None:
    """Write rows under the canonical header, UTF-8, with Unix line ends."""
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    """Write the demo file (to ``argv[0]`` when given) and say where."""
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else DEFAULT_OUTPUT
    rows = generate()
    write_csv(rows, path)
    print(f"wrote {len(rows)} demo deals to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
