"""One logger naming rule: every logger is ``infaas.<module>``, so one configuration covers all."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from infaas.logs import configure_logging, get_logger, logger_name

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("infaas", "variants", "profiler", "scheduler", "enclave_workers", "api")


def test_logger_names_derive_from_the_module() -> None:
    assert logger_name("scheduler.controller") == "infaas.scheduler.controller"
    assert logger_name("infaas.keyservice.service") == "infaas.keyservice.service"
    assert logger_name("infaas") == "infaas"
    assert logger_name("infaas.telemetry.recorder", "requests") == (
        "infaas.telemetry.recorder.requests"
    )


def test_no_module_types_a_logger_name_by_hand() -> None:
    # third-party loggers (httpx) may be tuned by name; ours are never typed by hand
    names = "|".join(PACKAGES)
    hand_typed = re.compile(rf"getLogger\(\s*[\"'](?:{names})\b")
    offenders = [
        str(path.relative_to(ROOT))
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if hand_typed.search(path.read_text()) and path.name != "logs.py"
    ]
    assert offenders == []


def test_the_one_configuration_covers_every_package() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), logging.getLogger("infaas").level)
    try:
        configure_logging(logging.INFO, stream=stream)
        for module in ("scheduler.routing", "enclave_workers.runtime", "api.serve"):
            get_logger(module).info("hello from %s", module)
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
        logging.getLogger("infaas").setLevel(saved[2])
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["logger"] for line in lines] == [
        "infaas.scheduler.routing",
        "infaas.enclave_workers.runtime",
        "infaas.api.serve",
    ]
