"""Joining a deployment: only the administrator's one-time enrolments make principals, and
the administrator never holds a party's key or token.

Attackers: the administrator's machine (its data directory and what `tenant create`
prints must hold no key of the tenant), a party replaying or editing its enrolment, a
forger without the enrolment key, a store writer adding principal records, and
whoever holds a revoked token.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from api.app import create_app
from infaas.attestation import SimulatedPlatformCA
from infaas.auth import TokenRegistry
from infaas.cli import main
from infaas.client import Client
from infaas.client.credentials import read_credentials
from infaas.envelope import new_key
from infaas.errors import (
    AttestationFailed,
    AuthenticationFailed,
    Conflict,
    DecryptionFailed,
    PermissionDenied,
    UnknownKey,
)
from infaas.keyservice import KeyServiceClient, create_keyservice_router
from infaas.keyservice.enrolment import (
    issue_enrolment,
    issue_revocation,
    load_or_create_enrolment_key,
    verify_statement,
)
from infaas.keyservice.trust import ed25519_raw
from infaas.settings import load_settings
from infaas.store import MemoryStore, SealedTable
from tests.deployment import (
    ADMIN_KEY,
    ADMIN_PUBLIC,
    KS_MEASUREMENT,
    Deployment,
    bundle,
    enrol,
    worker_verifier,
)
from tests.e2e.server import ThreadedServer
from tests.security.markers import encodings


@pytest.fixture
def dep(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Deployment:
    return Deployment.create(platform_ca, tmp_path)


def _edited(enrolment: str, **change: object) -> str:
    """`enrolment` with its signed body changed (the signature kept)."""
    prefix, body, sig = enrolment.split(".")
    fields = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) | change
    raw = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return f"{prefix}.{base64.urlsafe_b64encode(raw).rstrip(b'=').decode()}.{sig}"


def test_an_enrolment_registers_once(dep: Deployment) -> None:
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    enrolment = issue_enrolment(ADMIN_KEY, "acme", "tenant")
    token = dep.keys.register(enrolment)
    dep.keys.upload_tenant_key(token, "k1", new_key())
    dep.keys.grant(dep.ks_tokens["zoo"], "resnet", "acme")
    dep.keys.accept(token, "owner", "zoo")
    with pytest.raises(Conflict, match="used already"):
        dep.keys.register(enrolment)
    # nor after its holder was revoked: the enrolment itself is spent
    dep.keys.revoke_token(token)
    with pytest.raises(Conflict, match="used already"):
        dep.keys.register(enrolment)
    # a new enrolment lets the revoked principal back, with a new token and new keys only
    # (the key uploaded with the revoked token may have leaked with it)
    again = dep.keys.register(issue_enrolment(ADMIN_KEY, "acme", "tenant"))
    assert again != token
    worker = dep.worker_keys()
    with pytest.raises(UnknownKey):
        worker.tenant_key("acme", "resnet")  # no current key until it uploads one
    new = new_key()
    dep.keys.upload_tenant_key(again, "k2", new)
    assert worker.tenant_key("acme", "resnet").key == new
    with pytest.raises(UnknownKey, match="predates its re-enrolment"):
        worker.tenant_key("acme", "resnet", key_id="k1")
    assert dep.keys.consent(again).owners == ("zoo",)  # its own choices stay
    with pytest.raises(AuthenticationFailed, match=r"revoked|invalid"):
        dep.keys.consent(token)


def test_forged_edited_and_expired_enrolments_are_refused(dep: Deployment) -> None:
    forger = Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationFailed, match="not signed by this deployment"):
        dep.keys.register(issue_enrolment(forger, "mallory", "owner"))
    genuine = issue_enrolment(ADMIN_KEY, "acme", "tenant")
    for change in ({"role": "owner"}, {"id": "zoo"}, {"expires_at": 9e12}):
        with pytest.raises(AuthenticationFailed, match="forged or edited"):
            dep.keys.register(_edited(genuine, **change))
    # a statement of another purpose (a revocation) is no enrolment
    revocation = issue_revocation(ADMIN_KEY, "acme")
    with pytest.raises(AuthenticationFailed, match=r"is a revocation, where an? enrolment"):
        dep.keys.register("infaas-enrolment-v1." + revocation.partition(".")[2])
    expired = issue_enrolment(ADMIN_KEY, "late", "tenant", ttl_s=60, now=1.0)
    with pytest.raises(AuthenticationFailed, match="expired"):
        dep.keys.register(expired)
    # none of the refused attempts registered anyone; the genuine one still works once
    assert dep.store.get_sealed(SealedTable.PRINCIPAL, "mallory") is None
    enrol_token = dep.keys.register(genuine)
    assert enrol_token.startswith("acme:")


def test_a_key_service_without_an_administrator_enrols_nobody(
    platform_ca: SimulatedPlatformCA,
) -> None:
    service = Deployment.key_service(platform_ca, MemoryStore(), new_key(), enrolment_key=None)
    trust = bundle(platform_ca.root_pem, KS_MEASUREMENT, worker_verifier(platform_ca),
                   enrolment_key=None)  # fmt: skip
    keys = KeyServiceClient(service, trust.verifier(), policy_sha256=trust.policy_sha256)
    with pytest.raises(PermissionDenied, match="accepts no enrolment"):
        keys.register(issue_enrolment(ADMIN_KEY, "acme", "tenant"))


def test_a_key_service_trusting_another_administrator_is_refused(dep: Deployment) -> None:
    """The host starts a genuine key service with its own enrolment key (to enrol principals
    of its choosing): its policy hash differs, so clients refuse it before sending anything."""
    host_admin = ed25519_raw(Ed25519PrivateKey.generate().public_key())
    rogue = Deployment.key_service(dep.ca, MemoryStore(), new_key(), enrolment_key=host_admin)
    keys = KeyServiceClient(rogue, dep.trust.verifier(), policy_sha256=dep.trust.policy_sha256)
    with pytest.raises(AttestationFailed, match="another policy"):
        keys.attest()


def test_a_store_writer_cannot_add_a_principal(dep: Deployment) -> None:
    acme = enrol(dep.keys, "acme", "tenant")
    # copy acme's sealed record under another name, and write one of its own making
    record = dep.store.get_sealed(SealedTable.PRINCIPAL, "acme")
    assert record is not None
    dep.store.put_sealed(SealedTable.PRINCIPAL, "mallory", record)
    with pytest.raises(DecryptionFailed):
        dep.keys.consent("mallory:" + acme.partition(":")[2])
    dep.store.put_sealed(SealedTable.PRINCIPAL, "eve", b"\x00" * 64)
    with pytest.raises(DecryptionFailed):
        dep.keys.consent("eve:anything")
    # nor make a spent enrolment usable by overwriting its record: that fails closed
    enrolment = issue_enrolment(ADMIN_KEY, "carol", "tenant")
    dep.keys.register(enrolment)
    spent = verify_statement(enrolment, ADMIN_PUBLIC, "enrolment").enrolment_id
    assert spent is not None
    dep.store.put_sealed(SealedTable.ENROLMENT, spent, b"\x00" * 64)
    with pytest.raises(DecryptionFailed):
        dep.keys.register(enrolment)


def test_revocations_by_the_holder_and_the_administrator(dep: Deployment) -> None:
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    dep.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    worker = dep.worker_keys()
    assert worker.tenant_key("acme", "resnet").key == dep.tenant_keys["acme"]
    forger = Ed25519PrivateKey.generate()
    with pytest.raises(AuthenticationFailed, match="not signed"):
        dep.keys.revoke_token(revocation=issue_revocation(forger, "acme"))
    stale = issue_revocation(ADMIN_KEY, "acme", now=1.0)  # before acme's enrolment
    with pytest.raises(AuthenticationFailed, match="predates"):
        dep.keys.revoke_token(revocation=stale)
    assert dep.keys.revoke_token(revocation=issue_revocation(ADMIN_KEY, "acme")) == "acme"
    with pytest.raises(AuthenticationFailed, match="revoked"):
        dep.keys.accept(dep.ks_tokens["acme"], "owner", "zoo")
    # a revoked tenant's key is released no more (workers drop it when its lease ends)
    with pytest.raises(PermissionDenied, match="revoked"):
        worker.tenant_key("acme", "resnet")
    # an owner revokes its own (leaked) token: its models' keys are released no more
    dep.keys.revoke_token(dep.ks_tokens["zoo"])
    with pytest.raises(AuthenticationFailed, match="revoked"):
        dep.keys.grant(dep.ks_tokens["zoo"], "resnet", "acme")
    with pytest.raises(PermissionDenied, match="revoked"):
        worker.model_key("resnet")


# --- the command line: the administrator's side and the party's ------------------------------


@dataclass
class Site:
    url: str
    admin_dir: Path
    admin_creds: Path


@pytest.fixture
def site(platform_ca: SimulatedPlatformCA, tmp_path: Path) -> Iterator[Site]:
    """The control plane and the key service on one HTTP port; the administrator's data
    directory holds its credentials and enrolment key."""
    admin_dir = tmp_path / "admin"
    admin_key = load_or_create_enrolment_key(admin_dir)
    public = ed25519_raw(admin_key.public_key())
    store = MemoryStore()
    service = Deployment.key_service(platform_ca, store, new_key(), enrolment_key=public)
    trust = bundle(platform_ca.root_pem, KS_MEASUREMENT, worker_verifier(platform_ca),
                   enrolment_key=public)  # fmt: skip
    tokens = TokenRegistry(store)
    app = create_app(load_settings(data_dir=admin_dir, store_url="memory://"), store=store,
                     tokens=tokens)  # fmt: skip
    app.include_router(create_keyservice_router(service))
    with ThreadedServer(app, lifespan="auto") as server:
        admin = Client(server.url, api_token=tokens.issue("admin", "admin"), principal="admin",
                       role="admin", keyservice=trust)  # fmt: skip
        creds = admin.save_credentials(admin_dir / "credentials" / "admin.json")
        yield Site(server.url, admin_dir, creds)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _files(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_tenant_create_and_login_leave_no_tenant_key_with_the_administrator(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = ["--credentials", str(site.admin_creds), "--data-dir", str(site.admin_dir)]
    code, created, _ = _run(["tenant", "create", "acme", *admin, "--json"], capsys)
    assert code == 0
    enrolment_file = Path(json.loads(created)["enrolment_file"])
    assert enrolment_file.is_relative_to(site.admin_dir)
    # the tenant, on its own machine, with its own data directory
    tenant_dir = tmp_path / "acme-machine"
    code, out, _ = _run(["login", str(enrolment_file), "--data-dir", str(tenant_dir), "--json"],
                        capsys)  # fmt: skip
    assert code == 0, out
    creds = read_credentials(json.loads(out)["credentials"])
    assert creds["principal"] == "acme" and creds["request_key"] and creds["ks_token"]
    secrets_ = [base64.b64decode(creds["request_key"]), creds["ks_token"].encode()]
    seen_by_admin = created.encode() + _files(site.admin_dir)
    for secret in secrets_:
        for form in encodings(secret):
            assert form not in seen_by_admin, "the administrator holds a key of the tenant"
    # the tenant's credentials work with the key service
    tenant = ["--credentials", json.loads(out)["credentials"]]
    assert _run(["tenant", "accepted", *tenant, "--json"], capsys)[0] == 0
    # the enrolment is spent: a second login with it is refused
    code, _, err = _run(["login", str(enrolment_file), "--data-dir", str(tmp_path / "thief"),
                         "--json"], capsys)  # fmt: skip
    assert code == 1 and "used already" in err
    # an edited enrolment file (another name) is refused
    data = read_credentials(enrolment_file)
    data["enrolment"] = _edited(data["enrolment"], id="globex")
    data["principal"] = "globex"
    enrolment_file.write_text(json.dumps(data))
    code, _, err = _run(["login", str(enrolment_file), "--data-dir", str(tmp_path / "forger"),
                         "--json"], capsys)  # fmt: skip
    assert code == 4 and "forged or edited" in err
    # the administrator revokes acme: its API token and its key-service token stop at once
    assert _run(["token", "revoke", "acme", *admin, "--json"], capsys)[0] == 0
    code, _, err = _run(["tenant", "accepted", *tenant, "--json"], capsys)
    assert code == 4 and "revoked" in err
    assert _run(["models", *tenant, "--json"], capsys)[0] == 4


def test_only_the_administrator_issues_enrolments(
    site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Someone with the admin's API token but not its enrolment key (the host, which can
    write the store's token records) issues no enrolment."""
    elsewhere = tmp_path / "host"
    argv = ["tenant", "create", "mallory", "--credentials", str(site.admin_creds),
            "--data-dir", str(elsewhere), "--json"]  # fmt: skip
    code, _, err = _run(argv, capsys)
    assert code == 4 and "no administrator enrolment key" in err


def test_an_enrolment_issued_before_a_revocation_does_not_reopen_the_name(
    dep: Deployment,
) -> None:
    """The administrator issued acme two enrolments (the first one mislaid) and later
    revokes acme; whoever holds the unused first one cannot take the revoked name back,
    with the grants and consent that came with it."""
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    dep.add_tenant("acme", owner="zoo", grant=("resnet",), key_id="k1")
    mislaid = issue_enrolment(ADMIN_KEY, "acme", "tenant")
    dep.keys.revoke_token(revocation=issue_revocation(ADMIN_KEY, "acme"))
    with pytest.raises(AuthenticationFailed, match="issued before"):
        dep.keys.register(mislaid)
    # the holder's own revocation is final against older enrolments too
    dep.add_tenant("beta", owner="zoo", grant=("resnet",), key_id="k1")
    older = issue_enrolment(ADMIN_KEY, "beta", "tenant", now=1.0, ttl_s=9e12)
    dep.keys.revoke_token(dep.ks_tokens["beta"])
    with pytest.raises(AuthenticationFailed, match="issued before"):
        dep.keys.register(older)
    # an enrolment issued after the revocation lets the party back
    assert dep.keys.register(issue_enrolment(ADMIN_KEY, "acme", "tenant")).startswith("acme:")


def test_an_owner_back_after_a_revocation_has_no_model_key_from_before(dep: Deployment) -> None:
    """Whoever held zoo's leaked token made its own data key resnet's current one; the
    administrator revokes zoo and enrols it again: that key (nor any from before) is not
    released for resnet any more, until zoo uploads a new one."""
    dep.add_owner("zoo")
    dep.add_model_key("zoo", "resnet", "dk1")
    thief_key = new_key()
    dep.keys.upload_model_key(dep.ks_tokens["zoo"], "resnet", "dk-thief", thief_key)
    dep.keys.revoke_token(revocation=issue_revocation(ADMIN_KEY, "zoo"))
    zoo = dep.keys.register(issue_enrolment(ADMIN_KEY, "zoo", "owner"))
    worker = dep.worker_keys()
    for key_id in (None, "dk-thief", "dk1"):
        with pytest.raises(UnknownKey, match=r"predates|no key id"):
            worker.model_key("resnet", key_id=key_id)
    fresh = new_key()
    dep.keys.upload_model_key(zoo, "resnet", "dk2", fresh)
    assert worker.model_key("resnet").key == fresh
