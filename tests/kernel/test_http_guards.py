"""Redirects, total deadlines and response size caps against real loopback servers (issue 14, items 7, 8).

Every server here is a real socket on 127.0.0.1: a redirector and a recorder on
two ports (two origins), a server that trickles its answer a byte at a time, one
that never answers, one that sends too much. Deadlines are short parameters.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sales_velocity.connectors.hubspot import HubSpotConnector, HubSpotSettings
from sales_velocity.connectors.pipedrive import PipedriveConnector, PipedriveSettings
from sales_velocity.kernel.errors import DeliveryError, RemoteError
from sales_velocity.kernel.http import (
    CrossHostRedirectError,
    RequestDeadlineError,
    ResponseTooLargeError,
    RetryPolicy,
    new_session,
    request,
)
from sales_velocity.notify.channels import WebhookChannel, WebhookSettings
from sales_velocity.notify.message import Message

TOKEN = "pd-secret-token-0c9a41"
KEY = "webhook-key-77e1f0"
ONCE = RetryPolicy(max_attempts=1)


class Server:
    """A threaded HTTP server on a free loopback port; ``seen`` holds (path, headers) it got."""

    def __init__(self, answer: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                answer(self)

            do_GET = do_POST = _any

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"

    @contextmanager
    def running(self) -> Iterator[Server]:
        """Serve in a thread for the block."""
        thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                  daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


def json_answer(body: Any) -> Callable[[BaseHTTPRequestHandler], None]:
    """An answer: 200 with ``body`` as JSON."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    return answer


def redirect_to(target: Callable[[], str], status: int = 302) -> Callable[[BaseHTTPRequestHandler], None]:
    """An answer: ``status`` to ``target()`` plus the request's path."""
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", target() + handler.path)
        handler.send_header("Content-Length", "0")
        handler.end_headers()
    return answer


@pytest.fixture
def recorder() -> Iterator[Server]:
    """The other host: answers every request with a Pipedrive-like empty page."""
    with Server(json_answer({"success": True, "data": [],
                             "additional_data": {"next_cursor": None}})).running() as server:
        yield server


@pytest.fixture
def redirector(recorder: Server) -> Iterator[Server]:
    """The configured host: redirects everything to ``recorder`` (another port, so another origin)."""
    with Server(redirect_to(lambda: recorder.url)).running() as server:
        yield server


def pipedrive(url: str, **extra: Any) -> PipedriveConnector:
    """A Pipedrive connector on ``url``, waits that take no time."""
    settings = PipedriveSettings.model_validate({
        "name": "crm", "kind": "pipedrive", "api_token": TOKEN, "company_domain": "acme",
        "base_url": url, "max_attempts": 1, **extra})
    return PipedriveConnector(settings, sleep=lambda _s: None)


class TestRedirects:
    def test_pipedrive_token_never_reaches_another_host(self, redirector: Server, recorder: Server) -> None:
        """A redirect to another port is refused: the second server never sees x-api-token."""
        with pytest.raises(CrossHostRedirectError) as caught:
            pipedrive(redirector.url).pipelines()
        assert redirector.seen[0][1]["x-api-token"] == TOKEN  # the configured host got it
        assert all(TOKEN not in json.dumps(seen) for seen in recorder.seen)
        assert recorder.seen == []
        message = str(caught.value)
        assert f"redirected to another host (http://127.0.0.1:{recorder.httpd.server_port})" in message
        assert TOKEN not in message

    def test_webhook_key_never_reaches_another_host(self, recorder: Server) -> None:
        """A webhook POST redirected (307) to another host fails, not followed; the key and body stay home."""
        with Server(redirect_to(lambda: recorder.url, status=307)).running() as hop:
            settings = WebhookSettings.model_validate({
                "name": "hook", "kind": "webhook", "url": hop.url + "/in",
                "headers": {"X-Api-Key": KEY}, "max_attempts": 1})
            message = Message(kind="digest", key="digest:2026-11-26", subject="s", text="t",
                              markdown="m", html="<p>h</p>", slack={}, data={})
            with pytest.raises(DeliveryError, match=r"redirected \(HTTP 307\); configure the final URL"):
                WebhookChannel(settings).send(message)
            assert hop.seen[0][1]["x-api-key"] == KEY
        assert recorder.seen == []

    def test_a_redirect_on_the_same_host_is_followed(self, recorder: Server) -> None:
        """Same scheme, host and port: followed, with the session's headers (it is the same server)."""
        def moved(handler: BaseHTTPRequestHandler) -> None:
            if handler.path == "/old":
                handler.send_response(301)
                handler.send_header("Location", "/new")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
            else:
                json_answer({"ok": True})(handler)

        with Server(moved).running() as server:
            session = new_session({"x-api-token": TOKEN})
            response = request(session, "GET", server.url + "/old", what="GET /old", policy=ONCE)
        assert response.json() == {"ok": True}
        assert [(path, headers["x-api-token"]) for path, headers in server.seen] == [
            ("/old", TOKEN), ("/new", TOKEN)]

    def test_hubspot_redirect_is_refused_with_a_clear_error(self, recorder: Server) -> None:
        """The HubSpot client (urllib3) follows no redirect; the error says so; the token stays home."""
        with Server(redirect_to(lambda: recorder.url)).running() as hop:
            settings = HubSpotSettings(name="hs", access_token="hs-token-ab12", base_url=hop.url)
            connector = HubSpotConnector(settings, sleep=lambda _s: None)
            with pytest.raises(CrossHostRedirectError) as caught:
                connector.pipelines()
        assert recorder.seen == []
        assert "HubSpot answered a redirect (HTTP 302 to http://127.0.0.1:" in str(caught.value)
        assert "hs-token-ab12" not in str(caught.value)


# --------------------------------------------------------------------------- slow servers


@contextmanager
def raw_server(serve: Serve) -> Iterator[str]:
    """A loopback TCP server running ``serve(conn)`` per connection; yields its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def loop() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=_guarded, args=(serve, conn, stop), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


Serve = Callable[[socket.socket, threading.Event], None]


def _guarded(serve: Serve, conn: socket.socket, stop: threading.Event) -> None:
    with conn:
        try:
            conn.recv(65536)  # the request
            serve(conn, stop)
        except OSError:
            pass


def trickle(head: bytes, body: bytes, every: float = 0.3) -> Serve:
    """Send ``head`` at once, then ``body`` a byte every ``every`` s (each well inside the read timeout)."""
    def serve(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        for byte in body:
            if stop.wait(every):
                return
            conn.sendall(bytes([byte]))
    return serve


def silent(conn: socket.socket, stop: threading.Event) -> None:
    """Take the request and never answer."""
    stop.wait(30)


BODY = json.dumps({"success": True, "data": [], "additional_data": {}}).encode()
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(BODY)).encode() + b"\r\n\r\n")


def elapsed(fn: Callable[[], Any]) -> float:
    """Seconds ``fn()`` took."""
    start = time.monotonic()
    fn()
    return time.monotonic() - start


class TestDeadlines:
    @pytest.mark.parametrize(("head", "body"), [
        (HEAD, BODY),  # headers at once, the body a byte at a time
        (b"", HEAD + BODY),  # even the status line and headers a byte at a time
    ], ids=["body", "headers"])
    def test_a_trickling_server_cannot_outlast_the_deadline(self, head: bytes, body: bytes) -> None:
        """Each byte comes within the 2 s read timeout, but the 1.5 s total deadline ends the request."""
        with raw_server(trickle(head, body)) as url:
            def call() -> None:
                with pytest.raises(RequestDeadlineError, match=r"total deadline of 1\.5 s"):
                    request(new_session(), "GET", url, what="GET trickle", policy=ONCE,
                            timeout=(2.0, 2.0), deadline_s=1.5)
            took = elapsed(call)
        assert 1.4 < took < 4.0  # the whole answer would take len(body) * 0.3 s (20+ s)

    def test_a_server_that_never_answers_costs_the_deadline(self) -> None:
        """No answer at all: the deadline, not the 30 s read timeout, ends it; and it is not retried."""
        with raw_server(silent) as url:
            def call() -> None:
                with pytest.raises(RequestDeadlineError):
                    request(new_session(), "GET", url, what="GET silent", policy=RetryPolicy(max_attempts=4),
                            timeout=(2.0, 30.0), deadline_s=1.0, sleep=lambda _s: None)
            took = elapsed(call)
        assert took < 3.0

    def test_retries_stay_inside_the_deadline(self) -> None:
        """Read timeouts are retried, but none starts past the deadline: 20 attempts cost 1.5 s, not 8."""
        accepted: list[int] = []

        def count_and_wait(conn: socket.socket, stop: threading.Event) -> None:
            accepted.append(1)
            stop.wait(30)

        with raw_server(count_and_wait) as url:
            def call() -> None:
                with pytest.raises(RemoteError, match=r"total deadline of 1\.5 s"):
                    request(new_session(), "GET", url, what="GET slow", timeout=(2.0, 0.4),
                            policy=RetryPolicy(max_attempts=20, base_delay=0.05, max_delay=0.1),
                            deadline_s=1.5)
            took = elapsed(call)
        assert took < 2.5
        assert 2 <= len(accepted) < 20

    def test_pipedrive_source_names_itself_and_its_deadline(self) -> None:
        """The connector's request_deadline_seconds applies to every request of the source."""
        with raw_server(trickle(HEAD, BODY)) as url:
            connector = pipedrive(url, request_deadline_seconds=1.0)
            with pytest.raises(RequestDeadlineError) as caught:
                elapsed(connector.pipelines)
        assert str(caught.value).startswith("Pipedrive GET /api/v2/pipelines: no complete answer within "
                                            "the total deadline of 1 s")

    def test_hubspot_requests_have_the_deadline_too(self) -> None:
        """The HubSpot client's urllib3 connections are cut at the deadline as well."""
        pipelines = json.dumps({"results": []}).encode()
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(pipelines)).encode() + b"\r\n\r\n")
        with raw_server(trickle(head, pipelines)) as url:
            settings = HubSpotSettings(name="hs", access_token="t", base_url=url,
                                       request_deadline_seconds=1.0)
            connector = HubSpotConnector(settings, sleep=lambda _s: None)
            def call() -> None:
                with pytest.raises(RequestDeadlineError, match="HubSpot GET /crm/v3/pipelines/deals"):
                    connector.pipelines()
            took = elapsed(call)
        assert took < 3.0


class TestResponseSize:
    @pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
    def test_a_response_over_the_maximum_is_refused(self, chunked: bool) -> None:
        """2 MiB against a 1 MiB cap: refused, with or without a Content-Length."""
        big = b"x" * (2 * 1024 * 1024)

        def answer(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            if chunked:
                handler.send_header("Transfer-Encoding", "chunked")
                handler.end_headers()
                for start in range(0, len(big), 65536):
                    part = big[start:start + 65536]
                    handler.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                handler.wfile.write(b"0\r\n\r\n")
            else:
                handler.send_header("Content-Length", str(len(big)))
                handler.end_headers()
                handler.wfile.write(big)

        with Server(answer).running() as server:
            connector = pipedrive(server.url, max_response_mib=1)
            with pytest.raises(ResponseTooLargeError, match="larger than the maximum of 1,048,576 bytes"):
                connector.pipelines()
            small = request(new_session(), "GET", server.url, what="GET big", policy=ONCE,
                            max_bytes=3 * 1024 * 1024)
            assert len(small.content) == len(big)

    def test_hubspot_deal_pages_are_capped(self) -> None:
        """A HubSpot deal page over ``max_response_mib`` is refused."""
        from sales_velocity.kernel.testing.fake_hubspot import FakeHubSpot, make_connector

        portal = FakeHubSpot()
        portal.add_deals(150, dealname="x" * 20_000)  # a 100-deal page is about 2 MB
        with portal.serve():
            connector = make_connector(portal, max_response_mib=1)
            with pytest.raises(ResponseTooLargeError, match="HubSpot: the response is larger"):
                list(connector.deals(None))
