"""A total deadline for one HTTP request, enforced on the socket.

A read timeout bounds each wait for bytes, not the request: a server that
trickles one byte every few seconds, in its headers or its body, keeps a
``requests`` or ``urllib3`` call alive for as long as it likes. ``watched``
starts a timer for the whole request; when it fires, the socket of the
connection the request is using is shut down, so the blocked read returns at
once, and ``watched`` raises ``RequestDeadlineError`` instead of the broken
connection's error.

Connections are found through urllib3's connection classes: ``guard_pool_manager``
makes a pool manager (a ``requests`` adapter's, or the HubSpot client's) build
``_WatchedHTTPConnection``/``_WatchedHTTPSConnection``, which attach themselves
to the calling thread's current watch whenever they connect or send. Outside a
``watched`` block they behave exactly like urllib3's own.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import requests.adapters
import urllib3
import urllib3.connection
import urllib3.connectionpool

from sales_velocity.kernel.errors import FatalAPIError

__all__ = ["GuardedAdapter", "RequestDeadlineError", "guard_pool_manager", "guard_session", "watched"]

_current = threading.local()


class RequestDeadlineError(FatalAPIError):
    """A request was not answered in full within its total deadline (not retried: the run moves on)."""


class _Watch:
    """One request's deadline: which connection to cut, and whether the time is up."""

    def __init__(self) -> None:
        self.expired = False
        self._conn: Any = None
        self._lock = threading.Lock()

    def attach(self, conn: Any) -> None:
        with self._lock:
            self._conn = conn
            if self.expired:
                _shutdown(conn)

    def fire(self) -> None:
        with self._lock:
            self.expired = True
            if self._conn is not None:
                _shutdown(self._conn)


def _shutdown(conn: Any) -> None:
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _attach(conn: Any) -> None:
    watch = getattr(_current, "watch", None)
    if watch is not None:
        watch.attach(conn)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def connect(self) -> None:
        _attach(self)
        super().connect()
        _attach(self)  # now with a socket: cut it at once if the deadline passed while connecting

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def connect(self) -> None:
        _attach(self)
        super().connect()
        _attach(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def guard_pool_manager(manager: urllib3.PoolManager) -> urllib3.PoolManager:
    """Make ``manager`` build watched connections (pools it already made are dropped)."""
    manager.clear()
    manager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
    return manager


class GuardedAdapter(requests.adapters.HTTPAdapter):
    """A ``requests`` adapter whose connections obey ``watched`` deadlines."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Build urllib3's pool manager, then switch it to watched connections."""
        super().init_poolmanager(*args, **kwargs)
        guard_pool_manager(self.poolmanager)


def guard_session(session: requests.Session) -> requests.Session:
    """Mount ``GuardedAdapter`` for http and https where ``session`` has ``requests``' default adapter.

    An adapter someone mounted on purpose (a subclass) is left as it is.
    """
    for prefix in ("https://", "http://"):
        if type(session.adapters.get(prefix)) is requests.adapters.HTTPAdapter:
            session.mount(prefix, GuardedAdapter())
    return session


@contextmanager
def watched(seconds: float, what: str, *, deadline_s: float | None = None) -> Iterator[None]:
    """Run the block as one request that must be answered in full within ``seconds``.

    ``deadline_s`` is the deadline the message names, when ``seconds`` is what is left of it.

    Raises:
        RequestDeadlineError: the time ran out (whatever error the cut connection raised).
    """
    watch = _Watch()
    timer = threading.Timer(seconds, watch.fire)
    timer.daemon = True
    previous = getattr(_current, "watch", None)
    _current.watch = watch
    timer.start()
    try:
        yield
    except Exception:
        if watch.expired:
            raise RequestDeadlineError(
                f"{what}: no complete answer within the total deadline of {deadline_s or seconds:g} s "
                "(the server answered too slowly or not at all); not retried") from None
        raise
    finally:
        timer.cancel()
        _current.watch = previous
