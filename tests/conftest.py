"""Shared fixtures: store backends (SQLite always, PostgreSQL when configured), logs, clock.

Store tests take the ``db_url`` or ``store`` fixture and run once per backend.
PostgreSQL runs when ``VELOCITY_TEST_DATABASE_URL`` is set; each test gets a
schema of its own, dropped afterwards, so runs in parallel never collide. With
``VELOCITY_REQUIRE_POSTGRES=1`` (set by ``.ci/run``) the session fails if no
PostgreSQL test ran.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import sqlalchemy as sa
import structlog

from sales_velocity.sync.store import make_engine, upgrade

PG_URL = os.environ.get("VELOCITY_TEST_DATABASE_URL", "")
_postgres_tests_run = 0

FIXTURES = Path(__file__).parent / "fixtures"


OUR_FOLDERS = ("kernel", "connectors", "sync", "metrics", "notify", "scheduler")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when PostgreSQL was required but none ran, or a folder was imported bare.

    A folder imported under its bare name (``notify`` instead of ``sales_velocity.notify``)
    would be a second copy of our modules; only the working directory makes it importable.
    """
    bare = sorted(name for name in sys.modules if name.split(".")[0] in OUR_FOLDERS)
    if bare:
        print(f"\nERROR: imported by bare folder name, not as sales_velocity.*: {', '.join(bare)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    required = os.environ.get("VELOCITY_REQUIRE_POSTGRES") == "1"
    if required and _postgres_tests_run == 0 and session.testscollected:
        print("\nERROR: VELOCITY_REQUIRE_POSTGRES=1 but no PostgreSQL test ran")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database, once per backend."""
    global _postgres_tests_run
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'velocity.db'}"
        return
    if not PG_URL:
        pytest.skip("VELOCITY_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    _postgres_tests_run += 1
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a freshly migrated store, once per backend."""
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine on a freshly migrated SQLite store (for tests that need one backend)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'velocity.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts with structlog's default configuration."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture
def fixed_now() -> dt.datetime:
    """A pinned 'now': 2026-11-26 09:00 UTC."""
    return dt.datetime(2026, 11, 26, 9, 0, tzinfo=dt.UTC)
