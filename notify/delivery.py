"""At most once over HTTP and SMTP: retry only what cannot have been processed.

A receiver that takes a message and answers late must not get it again. So a
send is retried (within this run) only when the request cannot have reached the
receiver:

* HTTP: the connection could not be made (refused, DNS, connect timeout, TLS
  handshake), or the receiver answered 429, or 503 with ``Retry-After`` (it
  says it did not process the request and when to come back).
* SMTP: anything before the message body was sent (connect, EHLO, login,
  MAIL, RCPT, the ``DATA`` command itself).

When the request went out and no answer came (an HTTP read timeout, a reset
connection, a gateway's 504; an SMTP timeout or disconnect after the body was
sent), the outcome is :class:`DeliveryUncertain`: the outbox records it as
``unknown``, like a crash mid-send, and never sends it again by itself.
A message that can never be sent as it is (an address that cannot be used, a
message that cannot be built) raises :class:`MessageRejected`: its row fails
for good and the channel stays up for the next message.

Error texts never carry a URL or a server's echo of one (a Slack URL is a secret).
"""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import requests
import urllib3.exceptions

from sales_velocity.kernel.errors import DeliveryError
from sales_velocity.kernel.http import RetryPolicy, backoff_delay, parse_retry_after

__all__ = ["DeliveryUncertain", "MessageRejected", "post_at_most_once", "send_mail_at_most_once"]


class DeliveryUncertain(DeliveryError):
    """The request went out and no answer came: it may have arrived. Never re-sent automatically."""

    def __init__(self, message: str, *, channel_down: bool = True) -> None:
        super().__init__(message, channel_down=channel_down)


class MessageRejected(DeliveryError):
    """This message can never be delivered as it is; the channel itself is fine."""

    def __init__(self, message: str) -> None:
        super().__init__(message, channel_down=False)


def _never_sent(exc: requests.RequestException) -> bool:
    """Whether the request failed before any byte of it could reach the receiver."""
    if isinstance(exc, requests.ConnectTimeout | requests.exceptions.SSLError
                  | requests.exceptions.ProxyError):
        return True
    if not isinstance(exc, requests.ConnectionError):
        return False
    seen: set[int] = set()
    stack: list[Any] = [exc]
    while stack:  # requests wraps urllib3's MaxRetryError, whose ``reason`` says what happened
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(item, BaseException):
            stack += [*item.args, getattr(item, "reason", None), item.__cause__, item.__context__]
    return False


def post_at_most_once(
    session: requests.Session,
    url: str,
    *,
    what: str,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    timeout: tuple[float, float],
    max_attempts: int,
    sleep: Callable[[float], None] = time.sleep,
    max_delay: float = 30.0,
) -> None:
    """POST ``payload`` as JSON; retry only when the receiver cannot have processed it.

    Redirects are not followed (a POST's secret headers stay with the configured host).

    Raises:
        DeliveryUncertain: sent, but no answer (read timeout, reset, 504).
        DeliveryError: not delivered; ``channel_down`` for connect errors, 5xx,
            redirects and unusable URLs, not for other 4xx.
    """
    policy = RetryPolicy(max_attempts=max_attempts, base_delay=1.0, max_delay=max_delay)
    attempt = 0
    while True:
        attempt += 1
        wait: float | None = None
        try:
            response = session.post(url, json=dict(payload), headers=dict(headers), timeout=timeout,
                                    allow_redirects=False)
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema, requests.exceptions.InvalidHeader,
                urllib3.exceptions.LocationParseError) as exc:
            raise DeliveryError(f"{what}: the configured URL cannot be used ({type(exc).__name__})") from None
        except requests.RequestException as exc:
            if not _never_sent(exc):
                raise DeliveryUncertain(
                    f"{what}: sent, but no answer came ({type(exc).__name__}); it may have arrived, "
                    "so it is not sent again"
                ) from None
            reason = f"{what}: cannot connect ({type(exc).__name__})"
        else:
            status = response.status_code
            response.close()
            if 200 <= status < 300:
                return
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            if status == 429 or (status == 503 and retry_after is not None):
                reason = f"{what}: the receiver asked to wait (HTTP {status})"
                wait = retry_after
            elif status == 504:
                raise DeliveryUncertain(
                    f"{what}: the gateway timed out waiting for the receiver (HTTP 504); "
                    "it may have arrived, so it is not sent again"
                )
            elif 300 <= status < 400:
                raise DeliveryError(f"{what}: redirected (HTTP {status}); configure the final URL")
            elif status >= 500:
                raise DeliveryError(f"{what}: server error (HTTP {status})")
            else:
                raise DeliveryError(f"{what}: request failed (HTTP {status})", channel_down=False)
        if attempt >= max_attempts:
            raise DeliveryError(f"{reason} (gave up after {attempt} attempts)")
        sleep(min(max(wait, 0.0), max_delay) if wait is not None else backoff_delay(attempt, policy))


# --------------------------------------------------------------------------- SMTP


class _Phase:
    """Where an SMTP transaction got to: ``body_sent`` once the message's final dot went out."""

    body_sent = False


def _data(smtp: smtplib.SMTP, body: bytes, phase: _Phase) -> tuple[int, bytes]:
    """``smtplib.SMTP.data`` with a mark between sending the body and reading the reply."""
    smtp.putcmd("data")
    code, reply = smtp.getreply()
    if code != 354:
        raise smtplib.SMTPDataError(code, reply)
    quoted = re.sub(rb"(?m)^\.", b"..", re.sub(rb"(?:\r\n|\n|\r(?!\n))", b"\r\n", body))
    if not quoted.endswith(b"\r\n"):
        quoted += b"\r\n"
    smtp.send(quoted + b".\r\n")
    phase.body_sent = True
    return smtp.getreply()


def send_mail_at_most_once(
    connect: Callable[[], smtplib.SMTP],
    body: bytes,
    *,
    from_addr: str,
    to_addrs: Sequence[str],
    reason: Callable[[BaseException], str],
) -> None:
    """Send ``body`` (the flattened message, CRLF line ends) in one SMTP transaction.

    Once the body went out, the outcome is never reported as "not delivered".

    Raises:
        DeliveryUncertain: the body was sent and no reply came (timeout, disconnect).
        DeliveryError: refused (sender, every recipient, the data: this message
            only) or the server could not be used (channel down).
    """
    phase = _Phase()
    smtp: smtplib.SMTP | None = None
    done = False
    try:
        smtp = connect()
        smtp.ehlo_or_helo_if_needed()
        code, reply = smtp.mail(from_addr)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, reply, from_addr)
        refused = {}
        for rcpt in to_addrs:
            code, reply = smtp.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, reply)
        if len(refused) == len(to_addrs):
            raise smtplib.SMTPRecipientsRefused(refused)
        code, reply = _data(smtp, body, phase)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)
        done = True
    except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as exc:
        raise DeliveryError(reason(exc), channel_down=False) from None
    except (OSError, smtplib.SMTPException) as exc:
        if phase.body_sent:
            raise DeliveryUncertain(
                f"the SMTP server took the message but did not confirm it ({reason(exc)}); "
                "it may have arrived, so it is not sent again"
            ) from None
        raise DeliveryError(reason(exc), channel_down=True) from None
    finally:
        if smtp is not None:
            try:  # once delivered, QUIT's fate changes nothing; after a failure, just hang up
                if done:
                    smtp.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                smtp.close()
