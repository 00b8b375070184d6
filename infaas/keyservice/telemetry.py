"""The key service's telemetry: key releases and refusals, by error code, for the dashboard."""

from __future__ import annotations

import json
from typing import Any

from infaas.telemetry.recorder import Recorder


class KeyServiceTelemetry:
    """ASGI middleware counting the key service's key releases and refusals by error code.

    Only ``POST …/release`` is observed; a refusal's code is read from its JSON
    problem body (small, metadata only).
    """

    def __init__(self, app: Any, recorder: Recorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or not str(scope.get("path", "")).endswith("/release")
        ):
            await self.app(scope, receive, send)
            return
        status = 0
        body = bytearray()

        async def observe(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and len(body) < 65536:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self._count(status, bytes(body))

    def _count(self, status: int, body: bytes) -> None:
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if 200 <= status < 300:
            keys = doc.get("keys") if isinstance(doc, dict) else None
            self.recorder.released(len(keys) if isinstance(keys, list) else 0)
        else:
            code = doc.get("code") if isinstance(doc, dict) else None
            self.recorder.refused(code if isinstance(code, str) else f"http_{status}")
