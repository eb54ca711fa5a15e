"""A small HTTP client for convserve's API over urllib: no torch, no third-party packages."""

from __future__ import annotations

import json
import mimetypes
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode


class ApiError(Exception):
    """The server answered with an error (its problem detail), or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Client:
    """Talks to one convserve server; `api_key` is sent as a bearer token when set."""

    url: str
    api_key: str | None = None
    timeout_s: float = 60.0

    def predict(self, image: Path, top_k: int) -> dict[str, Any]:
        """The /v1/predict answer for one image file."""
        return self._post("/v1/predict", image, {"top_k": top_k})

    def explain(self, image: Path, top_k: int, target: str | None) -> dict[str, Any]:
        """The /v1/explain answer for one image file (target: a class label or index)."""
        query: dict[str, Any] = {"top_k": top_k}
        if target is not None:
            query["target"] = target
        return self._post("/v1/explain", image, query)

    def _post(self, path: str, image: Path, query: dict[str, Any]) -> dict[str, Any]:
        try:
            body = image.read_bytes()
        except OSError as exc:
            raise ApiError(f"cannot read {image}: {exc.strerror}") from exc
        content_type = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            f"{self.url.rstrip('/')}{path}?{urlencode(query)}",
            data=body,
            headers=headers,
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                answer: dict[str, Any] = json.load(response)
                return answer
        except urllib.error.HTTPError as exc:
            raise ApiError(_problem(exc), exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiError(f"cannot reach {self.url}: {reason}") from exc


def _problem(error: urllib.error.HTTPError) -> str:
    """'STATUS Title: detail' from a problem+json body, or the status line without one."""
    try:
        problem = json.loads(error.read())
        return f"{error.code} {problem['title']}: {problem['detail']}"
    except (ValueError, KeyError, TypeError, OSError):
        return f"{error.code} {error.reason}"
