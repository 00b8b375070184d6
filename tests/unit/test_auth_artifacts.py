"""API tokens stored hashed, and the sealed-artifact directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from infaas.artifacts import MODEL_PART, ArtifactStore, artifact_name, variant_part
from infaas.auth import TokenRegistry
from infaas.errors import AuthenticationFailed, Conflict, InvalidInput, NotFound, PermissionDenied
from infaas.store import MemoryStore


def test_tokens_verify_and_are_stored_hashed() -> None:
    store = MemoryStore()
    reg = TokenRegistry(store)
    token = reg.issue("acme", "tenant")
    assert reg.verify(token, "tenant").id == "acme"
    secret = token.split(".", 1)[1]
    dump = b"".join(store.token_records().values())
    assert secret.encode() not in dump and token.encode() not in dump
    with pytest.raises(AuthenticationFailed):
        reg.verify(token[:-1] + ("A" if token[-1] != "A" else "B"), "tenant")
    with pytest.raises(AuthenticationFailed, match="missing"):
        reg.verify(None, "tenant")
    with pytest.raises(AuthenticationFailed):
        reg.verify("garbage", "tenant")
    with pytest.raises(PermissionDenied, match="is a tenant"):
        reg.verify(token, "owner")
    with pytest.raises(Conflict):
        reg.issue("acme", "tenant")
    new = reg.issue("acme", "tenant", replace=True)
    with pytest.raises(AuthenticationFailed):
        reg.verify(token, "tenant")
    assert reg.verify(new).role == "tenant"
    assert reg.revoke("acme")
    with pytest.raises(AuthenticationFailed):
        reg.verify(new)


def test_admin_may_act_for_every_role() -> None:
    reg = TokenRegistry(MemoryStore())
    assert reg.verify(reg.issue("root", "admin"), "owner").role == "admin"


def test_artifacts(tmp_path: Path) -> None:
    arts = ArtifactStore(tmp_path / "a")
    name = artifact_name("zoo", "m1", variant_part("m1.int8.onnxruntime"))
    arts.put(name, b"sealed")
    assert arts.get(name) == b"sealed"
    assert arts.exists(name)
    with pytest.raises(NotFound):
        arts.get(artifact_name("zoo", "nope", MODEL_PART))
    # only opaque names: a caller's model or variant id never becomes a file name
    for bad in ["../x", "a/b", "", ".hidden", "m1.int8.onnxruntime", name.upper()]:
        with pytest.raises(InvalidInput):
            arts.put(bad, b"x")
    arts.delete(name)
    assert not arts.exists(name)
