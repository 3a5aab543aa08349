"""A quick look at whether a service's host answers, before a slower real call is tried.

``velocity check`` probes each source's endpoint with one TCP connection and a
short timeout, so an unreachable host fails in seconds (not after the retry
policy's half a minute), and the message names host and port.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from sales_velocity.kernel.errors import RemoteError

__all__ = ["endpoint_of", "probe", "probe_endpoint"]


def endpoint_of(settings: Any) -> tuple[str, int] | None:
    """``(host, port)`` of a plugin's HTTP endpoint (``base_url``/``root_url``/an http ``path``), if any."""
    for name in ("base_url", "root_url", "url", "path"):
        value = getattr(settings, name, None)
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            parts = urlsplit(value)
            if parts.hostname:
                return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    return None


def probe(host: str, port: int, *, timeout: float) -> None:
    """Open and close one TCP connection to ``host:port``.

    Raises:
        RemoteError: the name does not resolve, the connection is refused or it timed out.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except socket.gaierror as exc:
        reason = f"the name does not resolve ({exc.strerror})"
    except TimeoutError:
        reason = f"no answer within {timeout:g}s"
    except ConnectionRefusedError:
        reason = "connection refused"
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
    raise RemoteError(f"cannot reach {host}:{port}: {reason}")


def probe_endpoint(settings: Any, *, timeout: float) -> None:
    """Probe the endpoint of ``settings`` when it has one (a local CSV file has none)."""
    endpoint = endpoint_of(settings)
    if endpoint is not None:
        probe(*endpoint, timeout=timeout)
