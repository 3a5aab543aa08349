"""Independent reads run side by side on stores that allow it, in order and with errors intact."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from sales_velocity.metrics.concurrent import can_read_concurrently, read_concurrently
from sales_velocity.sync.store import make_engine


def _thread_and_answer(engine: sa.Engine, answer: int) -> tuple[str, int]:
    with engine.connect() as conn:
        value = conn.execute(sa.text(f"SELECT {answer}")).scalar_one()
    return threading.current_thread().name, int(value)


def test_results_come_back_in_call_order_from_worker_threads(store: sa.Engine) -> None:
    """Each call runs on its own worker thread and connection; results keep the order of the calls."""
    results = read_concurrently(store, [functools.partial(_thread_and_answer, store, n) for n in (3, 1, 2)])
    assert [answer for _, answer in results] == [3, 1, 2]
    assert all(name.startswith("velocity-read") for name, _ in results)


def test_an_error_in_one_call_is_raised(store: sa.Engine) -> None:
    """A failing call's exception reaches the caller, not a silent None."""
    def broken() -> None:
        with store.connect() as conn:
            conn.execute(sa.text("SELECT * FROM no_such_table"))

    with pytest.raises(sa.exc.DBAPIError, match="no_such_table"):
        read_concurrently(store, [lambda: _thread_and_answer(store, 1), broken])


def test_in_memory_sqlite_runs_the_calls_one_after_the_other() -> None:
    """An in-memory database is private to its connection: the calls stay on the caller's thread."""
    engine = make_engine("sqlite://")
    assert not can_read_concurrently(engine)
    results = read_concurrently(engine, [functools.partial(_thread_and_answer, engine, n) for n in (1, 2)])
    assert results == [(threading.current_thread().name, 1), (threading.current_thread().name, 2)]


def test_a_sqlite_file_and_postgresql_read_concurrently(tmp_path: Path) -> None:
    """A SQLite file is shared by its connections, so it reads concurrently; so does a server."""
    assert can_read_concurrently(make_engine(f"sqlite:///{tmp_path / 'velocity.db'}"))
    assert can_read_concurrently(sa.create_engine("postgresql+psycopg://u@127.0.0.1/db"))
