"""Logs: one logger naming rule, JSON lines with redaction, one configuration.

Naming
    Every logger is ``get_logger(__name__)``: the module's dotted name under the
    ``infaas`` hierarchy (``scheduler/controller.py`` -> ``infaas.scheduler.controller``,
    ``infaas/keyservice/service.py`` -> ``infaas.keyservice.service``), so the
    one configuration on the ``infaas`` logger covers every package and a
    line names the module that wrote it.
Format
    `configure_logging` (called by entry points only: the CLI's ``serve``, a
    Serve replica's constructor) installs `JsonFormatter`: one JSON object
    per line with ``ts``, ``level``, ``logger``, ``msg`` and a fixed whitelist
    of metadata fields (`LOG_FIELDS`). Anything else passed as ``extra`` is
    dropped, and long mixed-case base64-like strings are replaced by
    ``[redacted]`` (API tokens look like that), as a second line of defence
    behind "never log secrets".
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
from typing import Any

ROOT_LOGGER = "infaas"
"""The logger every infaas logger descends from; `configure_logging` sets its level."""


def logger_name(module: str, channel: str = "") -> str:
    """The logger name for `module` (its ``__name__``), optionally a named `channel` below it."""
    name = (
        module
        if module == ROOT_LOGGER or module.startswith(ROOT_LOGGER + ".")
        else (f"{ROOT_LOGGER}.{module}")
    )
    return f"{name}.{channel}" if channel else name


def get_logger(module: str, channel: str = "") -> logging.Logger:
    """The logger of `module` (pass ``__name__``): ``infaas.<module>[.<channel>]``."""
    return logging.getLogger(logger_name(module, channel))


LOG_FIELDS: tuple[str, ...] = (
    "request_id",
    "tenant",
    "task",
    "variant",
    "model_id",
    "pool",
    "decision_ms",
    "latency_ms",
    "queue_ms",
    "batch",
    "slo_ms",
    "min_accuracy",
    "slo_met",
    "code",
    "replica",
    "status",
)
"""The only ``extra`` fields a log line carries: metadata, by name."""

# long base64/base64url runs mixing upper and lower case: API tokens, keys, ciphertext.
# Hex (measurements, hashes) and uuids are lower case and stay readable.
_SECRETISH = re.compile(r"(?=[A-Za-z0-9_+/-]*[a-z])(?=[A-Za-z0-9_+/-]*[A-Z])[A-Za-z0-9_+/-]{32,}=*")


def redact(text: str) -> str:
    """`text` with long mixed-case base64-like runs replaced by ``[redacted]``."""
    return _SECRETISH.sub("[redacted]", text) if len(text) >= 32 else text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, whitelisted metadata, exception."""

    def format(self, record: logging.LogRecord) -> str:
        try:
            msg = record.getMessage()
        except Exception:  # a bad format string must not lose the line
            msg = str(record.msg)
        doc: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(msg)[:2000],
        }
        fields = record.__dict__
        for name in LOG_FIELDS:
            value = fields.get(name)
            if value is None:
                continue
            if type(value) in (str, bool, int, float):
                doc[name] = redact(value)[:200] if type(value) is str else value
            else:
                doc[name] = redact(str(value))[:200]
        if record.exc_info and record.exc_info[0] is not None:
            etype, evalue, tb = record.exc_info
            doc["exc_type"] = etype.__name__
            doc["exc_msg"] = redact(str(evalue))[:500]
            # where, not what: frames without their locals or source lines
            doc["stack"] = [
                f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                for f in traceback.extract_tb(tb)[-8:]
            ]
        return json.dumps(doc, ensure_ascii=False, default=str)


class _InfaasHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so a second call replaces it."""


def configure_logging(
    level: int = logging.INFO, *, json_lines: bool = True, stream: Any = None
) -> None:
    """One handler on the root logger: JSON lines (or text); ``infaas`` loggers at `level`.

    For entry points only (the CLI's ``serve``, a Serve replica's constructor);
    idempotent. Other libraries' loggers pass warnings and above.
    """
    handler = _InfaasHandler(stream or sys.stderr)
    text = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(JsonFormatter() if json_lines else text)
    root = logging.getLogger()
    for h in list(root.handlers):
        if isinstance(h, _InfaasHandler):
            root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT_LOGGER).setLevel(level)
