"""A fake Microsoft Teams Workflows webhook on 127.0.0.1: it checks and records posted cards.

A Workflows flow "Post to a channel when a webhook request is received" takes
``{"type": "message", "attachments": [{"contentType":
"application/vnd.microsoft.card.adaptive", "content": <card>}]}`` and renders
Adaptive Cards up to version 1.4. The fake answers ``202 Accepted`` for a valid
envelope and records the card (``cards``); it answers ``400`` with the reason
for anything Teams would not render (wrong envelope, card version above 1.4,
an element or action that 1.4 does not have, an image without a URL). Tests
script a ``429`` or ``503`` with ``Retry-After`` (``fail``).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

__all__ = ["FakeTeams", "card_problems"]

CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
ELEMENTS_1_4 = {
    "TextBlock",
    "Image",
    "Media",
    "RichTextBlock",
    "TextRun",
    "Container",
    "ColumnSet",
    "Column",
    "FactSet",
    "ImageSet",
    "ActionSet",
    "Input.Text",
    "Input.Number",
    "Input.Date",
    "Input.Time",
    "Input.Toggle",
    "Input.ChoiceSet",
}
ACTIONS_1_4 = {
    "Action.OpenUrl",
    "Action.Submit",
    "Action.ShowCard",
    "Action.ToggleVisibility",
    "Action.Execute",
}
PATH = "/workflows/trigger"


def _walk(node: Any, where: str, problems: list[str]) -> None:
    if isinstance(node, list):
        for i, item in enumerate(node):
            _walk(item, f"{where}[{i}]", problems)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if isinstance(kind, str) and kind.startswith("Action."):
        if kind not in ACTIONS_1_4:
            problems.append(f"{where}: {kind} is not in Adaptive Cards 1.4")
        if kind == "Action.OpenUrl" and not str(node.get("url", "")).startswith(("https://", "http://")):
            problems.append(f"{where}: Action.OpenUrl needs an http(s) url")
    elif isinstance(kind, str) and kind not in ("AdaptiveCard",):
        if kind not in ELEMENTS_1_4:
            problems.append(f"{where}: {kind} is not an Adaptive Cards 1.4 element")
        if kind == "Image" and not str(node.get("url", "")).startswith(("https://", "http://", "data:")):
            problems.append(f"{where}: an Image needs a url")
        if kind == "TextBlock" and not isinstance(node.get("text"), str):
            problems.append(f"{where}: a TextBlock needs text")
        if kind == "FactSet" and not all(
            isinstance(f, dict) and isinstance(f.get("title"), str) and isinstance(f.get("value"), str)
            for f in node.get("facts", [])
        ):
            problems.append(f"{where}: every fact needs a title and a value")
    for key, value in node.items():
        if isinstance(value, (list, dict)):
            _walk(value, f"{where}.{key}", problems)


def card_problems(envelope: Any) -> list[str]:
    """What Teams would refuse in ``envelope`` (empty when it renders)."""
    if not isinstance(envelope, dict) or envelope.get("type") != "message":
        return ['the body must be {"type": "message", "attachments": [...]}']
    attachments = envelope.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["attachments must be a non-empty list"]
    problems: list[str] = []
    for i, att in enumerate(attachments):
        if not isinstance(att, dict) or att.get("contentType") != CONTENT_TYPE:
            problems.append(f"attachments[{i}].contentType must be {CONTENT_TYPE}")
            continue
        card = att.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            problems.append(f"attachments[{i}].content must be an AdaptiveCard")
            continue
        version = str(card.get("version", ""))
        try:
            major, minor = (int(x) for x in version.split("."))
        except ValueError:
            problems.append(f"attachments[{i}].content.version {version!r} is not a version")
            continue
        if (major, minor) > (1, 4):
            problems.append(f"attachments[{i}].content.version {version} is above 1.4 (Teams renders 1.4)")
        if not isinstance(card.get("body"), list) or not card["body"]:
            problems.append(f"attachments[{i}].content.body must be a non-empty list")
        _walk(card.get("body", []), f"attachments[{i}].content.body", problems)
        _walk(card.get("actions", []), f"attachments[{i}].content.actions", problems)
    return problems


@dataclass
class _Failure:
    status: int
    times: int
    retry_after: int | None


@dataclass
class FakeTeams:
    """The fake endpoint: ``cards`` holds every card accepted, ``requests`` counts every POST."""

    cards: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    refused: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []

    def fail(self, status: int, *, times: int = 1, retry_after: int | None = None) -> None:
        """Answer the next ``times`` posts with ``status`` (and ``Retry-After`` when given)."""
        self._failures.append(_Failure(status, times, retry_after))

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Run the fake on 127.0.0.1 in a thread; yields the webhook URL."""
        server = make_server("127.0.0.1", 0, self.wsgi, threaded=True)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_port}{PATH}?sig=SECRETSIG"
        finally:
            server.shutdown()
            thread.join(timeout=5)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        """The WSGI entry point."""
        return self._answer(Request(environ))(environ, start_response)

    def _answer(self, request: Request) -> Response:
        with self._lock:
            if request.method != "POST" or request.path != PATH:
                return Response("not found", 404)
            self.requests += 1
            for failure in self._failures:
                if failure.times > 0:
                    failure.times -= 1
                    headers = (
                        {"Retry-After": str(failure.retry_after)} if failure.retry_after is not None else {}
                    )
                    return Response("busy", failure.status, headers)
            if request.args.get("sig") != "SECRETSIG":
                return Response("unauthorized", 401)
            try:
                body = json.loads(request.get_data(as_text=True))
            except ValueError:
                return Response("body is not JSON", 400)
            problems = card_problems(body)
            if problems:
                self.refused.append(problems)
                return Response("; ".join(problems), 400)
            self.cards.extend(att["content"] for att in body["attachments"])
            return Response("", 202)
