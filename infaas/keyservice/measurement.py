"""The key service's code identity: what its evidence measures (the MRENCLAVE stand-in)."""

from __future__ import annotations

from pathlib import Path

from infaas.measurement import REPO, measure_closure

# The module the key service's replica is started from: Ray imports it to build
# `KeyServiceIngress`, so everything it imports runs in the key service (and
# tests/unit/test_measurement.py fails if the class lives elsewhere).
KEYSERVICE_ENTRY = "infaas.keyservice.deployment"


def keyservice_measurement(root: Path = REPO) -> bytes:
    """What the key service's evidence measures: the code its replica runs.

    The import closure of `KEYSERVICE_ENTRY` by package-relative path
    (`infaas.measurement`), so the verifier, policy, store and envelope code it
    runs count, and the client, the CLI and the example zoo do not.
    """
    return measure_closure(KEYSERVICE_ENTRY, b"infaas-keyservice/v1", root)
