"""The one way into onnxruntime and OpenVINO: telemetry off first, then import.

Both runtimes phone home by default, and what they record leaks model metadata
(graph names, producers, opsets, run durations):

* onnxruntime writes a telemetry database under ``~/.cache/Microsoft/`` unless
  ``ORT_DISABLE_TELEMETRY=1`` is set before it is imported;
* OpenVINO writes a client id and usage statistics under ``~/intel/`` and tries
  to reach an analytics host unless the consent file that ``opt_in_out --opt_out``
  writes (``~/intel/openvino_telemetry`` containing ``0``) exists, as
  ``openvino_telemetry.utils.opt_in_checker.OptInChecker.consent_file`` expects.

Every module that needs a runtime calls `onnxruntime()` / `openvino()` here
instead of importing it, so the switch happens exactly once, before any import.
"""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path
from types import ModuleType

from infaas.logs import get_logger

log = get_logger(__name__)

_lock = threading.Lock()
_done = False


def openvino_consent_file() -> Path:
    """Where openvino_telemetry looks for the user's opt-in / opt-out decision."""
    if platform.system() == "Windows":
        return (
            Path(os.path.expandvars("$LOCALAPPDATA")) / "Intel Corporation" / "openvino_telemetry"
        )
    return Path.home() / "intel" / "openvino_telemetry"


def disable_telemetry() -> None:
    """Switch both runtimes' telemetry off; idempotent, call before importing them."""
    global _done
    with _lock:
        if _done:
            return
        # Runtime configuration of a third-party library, not settings of ours:
        # onnxruntime reads this variable when it is imported.
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"
        consent = openvino_consent_file()
        try:
            if not consent.is_file() or consent.read_text().strip() != "0":
                consent.parent.mkdir(parents=True, exist_ok=True)
                consent.write_text("0")
        except OSError as e:  # a read-only home: OpenVINO then declines by itself
            log.warning("could not write the OpenVINO telemetry opt-out file %s: %s", consent, e)
        _done = True


def onnxruntime() -> ModuleType:
    """The onnxruntime module, imported with telemetry off."""
    disable_telemetry()
    import onnxruntime as ort

    ort.disable_telemetry_events()
    module: ModuleType = ort
    return module


def openvino() -> ModuleType:
    """The openvino module, imported with telemetry off."""
    disable_telemetry()
    import openvino as ov

    module: ModuleType = ov
    return module
