"""Real loopback receivers for delivery tests: a slow HTTP webhook and an SMTP server that stalls."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

from tests.notify.smtp import Inbox, Received, free_port


@dataclass
class Hook:
    """What the webhook receiver took (every body it read in full) and how it answers."""

    delay: float = 0.0
    """Seconds to wait after reading the body, before answering."""
    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    """Status and headers for the next requests, in order; 200 once they run out."""
    bodies: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    first: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self) -> tuple[int, dict[str, str]]:
        """The next scripted answer."""
        with self.lock:
            return self.answers.pop(0) if self.answers else (200, {})


@contextmanager
def webhook_receiver(delay: float = 0.0) -> Iterator[Hook]:
    """A threaded HTTP server on 127.0.0.1 that keeps each POSTed JSON body, then answers (late)."""
    hook = Hook(delay=delay)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with hook.lock:
                hook.bodies.append(json.loads(body))
                hook.keys.append(self.headers.get("Idempotency-Key", ""))
            hook.first.set()
            status, headers = hook.answer()
            time.sleep(hook.delay)
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")
            except OSError:  # the client gave up waiting: it has gone
                pass

        def log_message(self, *_args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


class StallingInbox(Inbox):
    """Keeps the message when its body has arrived, then waits ``stall`` seconds before saying 250."""

    def __init__(self, stall: float) -> None:
        super().__init__()
        self.stall = stall

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Keep the envelope, stall, accept."""
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        await asyncio.sleep(self.stall)
        return "250 OK"


@contextmanager
def stalling_smtp_server(stall: float) -> Iterator[tuple[StallingInbox, int]]:
    """A real SMTP server (aiosmtpd) on loopback that answers the end of DATA ``stall`` seconds late."""
    inbox = StallingInbox(stall)
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield inbox, controller.port
    finally:
        controller.stop()
