"""Alertmanager's API v2 over HTTP: the `netwatch.observability.silences.Alertmanager` port.

Blocking (urllib), one request per call, with a timeout: a daemon calls it from a worker
thread, never from its event loop, and an Alertmanager that is down must cost it at most
`timeout_s` per call. Every failure (unreachable, timeout, an HTTP error, an answer that is
not JSON) is an `AlertmanagerError` naming the request; nothing is retried here.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_TIMEOUT_S = 2.0
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # thousands of silences fit; a runaway answer does not


class AlertmanagerError(Exception):
    """Alertmanager could not be reached, timed out, refused, or answered nonsense."""


class HttpAlertmanager:
    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S):
        """`url`: Alertmanager's base URL (http or https), e.g. http://alertmanager:9093.
        Raises ValueError for another scheme or no host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r} is not an http(s) URL with a host")
        self.base = url.rstrip("/")
        self.timeout_s = timeout_s

    def silences(self) -> list[dict[str, Any]]:
        found = self._call("GET", "/api/v2/silences")
        if not isinstance(found, list):
            raise AlertmanagerError(f"GET {self.base}/api/v2/silences: not a list")
        return found

    def create(self, body: Mapping[str, Any]) -> str:
        answer = self._call("POST", "/api/v2/silences", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("silenceID"), str):
            raise AlertmanagerError(f"POST {self.base}/api/v2/silences: no silenceID")
        return answer["silenceID"]

    def expire(self, silence_id: str) -> None:
        self._call("DELETE", f"/api/v2/silence/{quote(silence_id, safe='')}")

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        url = self.base + path
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                raw = answer.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as exc:
            detail = exc.read(500).decode(errors="replace").strip()
            raise AlertmanagerError(f"{method} {url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise AlertmanagerError(f"{method} {url}: {reason}") from None
        if len(raw) > MAX_ANSWER_BYTES:
            raise AlertmanagerError(f"{method} {url}: answer over {MAX_ANSWER_BYTES} bytes")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise AlertmanagerError(f"{method} {url}: the answer is not JSON") from None
