"""A stateful fake of the Slack Web API (the methods the bot channel calls), served on 127.0.0.1.

It answers like ``https://slack.com/api/<method>``: a bearer token with a set of
scopes, ``{"ok": false, "error": "missing_scope", "needed": ...}`` when the
token lacks one, users looked up by e-mail (``users_not_found`` otherwise),
channels by name or id, messages and thread replies (``ts``, ``thread_ts``),
direct messages (``chat.postMessage`` to a user id lands in that user's DM), and
the current upload flow behind ``files_upload_v2``: ``files.getUploadURLExternal``
hands out an upload URL on this server, the bytes are POSTed there, and
``files.completeUploadExternal`` shares the file into a channel or thread.

Tests script a ``429`` with ``Retry-After`` (``rate_limit``) and read back what
was posted (``messages``, ``in_channel``, ``dms``, ``files``) and every request
(``log``, without the token).
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

__all__ = ["ALL_SCOPES", "FakeSlack", "Posted", "SharedFile"]

ALL_SCOPES = frozenset({"chat:write", "users:read", "users:read.email", "files:write"})
SCOPES = {
    "chat.postMessage": "chat:write",
    "users.lookupByEmail": "users:read.email",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}


@dataclass
class Posted:
    """One message as Slack stored it."""

    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]]
    thread_ts: str | None = None


@dataclass
class SharedFile:
    """One uploaded file and where it was shared."""

    id: str
    filename: str
    title: str
    content: bytes
    channel: str | None = None
    thread_ts: str | None = None


@dataclass
class _Limit:
    method: str
    retry_after: int
    times: int


@dataclass
class FakeSlack:
    """The fake workspace: a bot token, its scopes, users, channels and what was posted."""

    token: str = "xoxb-fake-token"
    scopes: set[str] = field(default_factory=lambda: set(ALL_SCOPES))
    users: dict[str, str] = field(default_factory=dict)
    """User id by e-mail (lower case)."""
    channels: dict[str, str] = field(default_factory=lambda: {"sales": "C0SALES"})
    """Channel id by name (without ``#``)."""
    messages: list[Posted] = field(default_factory=list)
    files: list[SharedFile] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    base_url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._limits: list[_Limit] = []
        self._uploads: dict[str, dict[str, Any]] = {}

    # ----------------------------------------------------------------- scripting and reading

    def add_user(self, email: str) -> str:
        """Give ``email`` a Slack account; return its user id."""
        user_id = f"U{next(self._ids):05d}"
        self.users[email.lower()] = user_id
        return user_id

    def rate_limit(self, method: str, *, retry_after: int = 3, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` with 429 and ``Retry-After``."""
        self._limits.append(_Limit(method, retry_after, times))

    def in_channel(self, name: str) -> list[Posted]:
        """Top-level messages of a channel (not thread replies)."""
        channel_id = self.channels[name.lstrip("#")]
        return [m for m in self.messages if m.channel == channel_id and m.thread_ts is None]

    def replies(self, channel_id: str, ts: str) -> list[Posted]:
        """Replies in the thread of ``ts``."""
        return [m for m in self.messages if m.channel == channel_id and m.thread_ts == ts]

    def dms(self, email: str) -> list[Posted]:
        """Direct messages the bot sent to the user of ``email``."""
        user = self.users[email.lower()]
        return [m for m in self.messages if m.channel == "D" + user]

    def calls(self, method: str) -> int:
        """How many requests went to ``method``."""
        return sum(1 for line in self.log if line == method)

    # ----------------------------------------------------------------- the server

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the fake on 127.0.0.1 in a thread; yields its API base URL (``.../api``)."""
        server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_port}"
        try:
            yield self.base_url + "/api"
        finally:
            server.shutdown()
            thread.join(timeout=5)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI entry point."""
        request = Request(environ)
        return self._answer(request)(environ, start_response)

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body), status, headers or {}, content_type="application/json")

    @staticmethod
    def _args(request: Request) -> dict[str, Any]:
        args: dict[str, Any] = dict(request.args)
        if request.mimetype == "application/json":
            args.update(request.get_json(silent=True) or {})
        else:
            args.update(request.form)
        return args

    def _answer(self, request: Request) -> Response:
        with self._lock:
            upload = re.fullmatch(r"/upload/(F\w+)", request.path)
            if upload:
                return self._receive(upload.group(1), request)
            method = request.path.removeprefix("/api/")
            self.log.append(method)
            for limit in self._limits:
                if limit.method == method and limit.times > 0:
                    limit.times -= 1
                    return self._json(
                        {"ok": False, "error": "ratelimited"}, 429, {"Retry-After": str(limit.retry_after)}
                    )
            if request.headers.get("Authorization") != f"Bearer {self.token}":
                return self._json({"ok": False, "error": "invalid_auth"})
            needed = SCOPES.get(method)
            if needed and needed not in self.scopes:
                return self._json(
                    {
                        "ok": False,
                        "error": "missing_scope",
                        "needed": needed,
                        "provided": ",".join(sorted(self.scopes)),
                    }
                )
            args = self._args(request)
            handler = {
                "auth.test": self._auth_test,
                "chat.postMessage": self._post_message,
                "users.lookupByEmail": self._lookup,
                "files.getUploadURLExternal": self._upload_url,
                "files.completeUploadExternal": self._complete,
            }.get(method)
            if handler is None:
                return self._json({"ok": False, "error": "unknown_method"}, 404)
            return self._json(handler(args))

    def _auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "team": "Fake Co", "user": "velocity", "bot_id": "B0BOT"}

    def _channel_id(self, value: str) -> str | None:
        if value in self.channels.values():
            return value
        if value.startswith("U") and value in self.users.values():
            return "D" + value
        return self.channels.get(value.lstrip("#"))

    def _post_message(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = self._channel_id(str(args.get("channel", "")))
        if channel is None:
            return {"ok": False, "error": "channel_not_found"}
        blocks = args.get("blocks") or []
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        text = str(args.get("text") or "")
        if not text and not blocks:
            return {"ok": False, "error": "no_text"}
        thread_ts = args.get("thread_ts") or None
        if thread_ts is not None and not any(
            m.ts == thread_ts and m.channel == channel for m in self.messages
        ):
            return {"ok": False, "error": "thread_not_found"}
        ts = f"1700000000.{next(self._ts):06d}"
        self.messages.append(Posted(channel, ts, text, blocks, thread_ts))
        return {"ok": True, "channel": channel, "ts": ts, "message": {"text": text, "ts": ts}}

    def _lookup(self, args: dict[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("email", "")).lower())
        if user is None:
            return {"ok": False, "error": "users_not_found"}
        return {"ok": True, "user": {"id": user, "profile": {"email": args["email"]}}}

    def _upload_url(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not str(args.get("length", "")).isdigit():
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._ids):05d}"
        self._uploads[file_id] = {
            "filename": args["filename"],
            "length": int(args["length"]),
            "content": None,
        }
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    def _receive(self, file_id: str, request: Request) -> Response:
        upload = self._uploads.get(file_id)
        if upload is None:
            return Response("unknown upload", 404)
        if request.mimetype == "multipart/form-data":
            content = next(iter(request.files.values())).read() if request.files else b""
        else:
            content = request.get_data(parse_form_data=False)
        if len(content) != upload["length"]:
            return Response(f"expected {upload['length']} bytes, got {len(content)}", 400)
        upload["content"] = content
        return Response("OK - " + str(len(content)), 200)

    def _complete(self, args: dict[str, Any]) -> dict[str, Any]:
        files = args.get("files") or "[]"
        listed = json.loads(files) if isinstance(files, str) else files
        channel = args.get("channel_id")
        if channel is not None and channel not in self.channels.values() and not channel.startswith("D"):
            return {"ok": False, "error": "channel_not_found"}
        thread_ts = args.get("thread_ts") or None
        done = []
        for item in listed:
            upload = self._uploads.pop(item["id"], None)
            if upload is None or upload["content"] is None:
                return {"ok": False, "error": "file_not_found"}
            shared = SharedFile(
                item["id"],
                upload["filename"],
                item.get("title") or upload["filename"],
                upload["content"],
                channel,
                thread_ts,
            )
            self.files.append(shared)
            done.append({"id": shared.id, "title": shared.title, "name": shared.filename})
        return {"ok": True, "files": done}
