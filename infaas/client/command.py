"""The `infaas` subcommands that act as a principal of a running service: grant and
revoke, owner retire-key (owner), tenant and owner create, tenant list, token revoke
(admin; --self: any principal), tenant accept / unaccept / accepted (tenant), audit
(tenant or owner), status.

`add_principal_commands` adds their parsers to the CLI's. Each handler takes the
parsed arguments, the settings and a `Client` built from the principal's
credentials file (the CLI does that), prints a human line or
``--json``, and returns the exit code; errors propagate as `infaas.errors`
types, which the CLI turns into exit codes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infaas.client.client import Client
from infaas.client.enrolment import (
    PartyRole,
    issue_enrolment_file,
    login,
    read_enrolment_file,
    write_enrolment_file,
)
from infaas.errors import InfaasError
from infaas.keyservice.enrolment import PRIVATE_FILE, issue_revocation, load_enrolment_key
from infaas.keyservice.models import ConsentKind
from infaas.settings import Settings


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def status_command(args: argparse.Namespace, client: Client) -> int:
    """Readiness of the service: 0 when ready, 1 when degraded."""
    health = client.status()
    if args.json:
        print_json({"url": client.base_url, **health.model_dump(mode="json")})
    else:
        print(f"infaas at {client.base_url}: {health.status} (TEE backend {health.tee_backend})")
        if health.simulated_tee:
            print("WARNING: SIMULATED TEE — NOT CONFIDENTIAL")
        for key, value in sorted(health.detail.items()):
            if key != "warning":
                print(f"  {key}: {value}")
    return 0 if health.status == "ok" else 1


def grant_command(args: argparse.Namespace, settings: Settings, owner: Client) -> int:
    """A model owner lets a tenant use (or stops it using) one of its models."""
    if args.client_command == "grant":
        owner.grant(args.model_id, args.tenant)
    else:
        owner.revoke(args.model_id, args.tenant)
    done = "granted" if args.client_command == "grant" else "revoked"
    if args.json:
        print_json({"model_id": args.model_id, "tenant": args.tenant, "action": done})
    else:
        print(f"{args.tenant} {done} {args.model_id}")
    return 0


def tenant_list_command(args: argparse.Namespace, settings: Settings, admin: Client) -> int:
    tenants = admin.tenants()
    if args.json:
        print_json([t.model_dump(mode="json") for t in tenants])
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="tenants")
    table.add_column("tenant")
    table.add_column("name")
    for t in tenants:
        table.add_row(t.tenant_id, t.name)
    Console().print(table)
    return 0


def principal_create_command(args: argparse.Namespace, settings: Settings, admin: Client) -> int:
    """As the administrator, create a tenant or model owner: its API token and a one-time
    enrolment signed with the administrator's enrolment key, written to an enrolment file
    for the party (which logs in with it on its own machine: no key of it is made here)."""
    role: PartyRole = "tenant" if args.client_command == "tenant-create" else "owner"
    key = load_enrolment_key(settings.data_dir)
    data = issue_enrolment_file(admin, key, args.name, role)
    out = write_enrolment_file(
        args.out or settings.data_dir / "enrolments" / f"{args.name}.json", data
    )
    if args.json:
        print_json({role: args.name, "enrolment_file": str(out)})
    else:
        print(
            f"{role} {args.name} created; give it {out} (mode 0600, usable once): on its own "
            f"machine it runs `infaas login {out.name}`, which makes its keys there"
        )
    return 0


def login_command(args: argparse.Namespace, settings: Settings) -> int:
    """As a new tenant or owner, on its own machine: attest the key service, make the
    key-service token (and a tenant's request key) here, register with the enrolment,
    write the credentials file."""
    data = read_enrolment_file(args.enrolment)
    with login(data, base_url=args.url) as client:
        out = client.save_credentials(
            args.out or settings.data_dir / "credentials" / f"{client.principal}.json"
        )
    if args.json:
        print_json({str(data["role"]): client.principal, "credentials": str(out)})
    else:
        print(f"logged in as {data['role']} {client.principal}; credentials in {out} (mode 0600)")
    return 0


def token_revoke_command(args: argparse.Namespace, settings: Settings, client: Client) -> int:
    """As the administrator, revoke a principal's API token and key-service token; with
    --self, as any principal, revoke the credentials' own key-service token."""
    if args.own:
        client.revoke_ks_token()
        if args.json:
            print_json({"revoked": client.principal, "keyservice_token": True})
        else:
            print(
                f"{client.principal}: your key-service token is revoked (the key service "
                "refuses it and releases your keys no more); ask the administrator for a new "
                "enrolment to come back"
            )
        return 0
    key = load_enrolment_key(settings.data_dir)
    api = client.revoke_api_token(args.name)
    client.revoke_keyservice_token(issue_revocation(key, args.name))
    if args.json:
        print_json({"revoked": args.name, "api_token": api, "keyservice_token": True})
    else:
        print(
            f"{args.name}: key-service token revoked (its keys are released no more)"
            + ("; API token revoked" if api else "; it had no API token")
        )
    return 0


def retire_key_command(args: argparse.Namespace, settings: Settings, owner: Client) -> int:
    """As a model owner, retire one data key id of one of its models for good."""
    owner.retire_model_key(args.model_id, args.key_id)
    if args.json:
        print_json({"model": args.model_id, "retired_key_id": args.key_id})
    else:
        print(
            f"{args.model_id}: data key {args.key_id} is retired; the key service never "
            "releases it again, and workers stop serving the model under it within a second"
        )
    return 0


def models_command(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    infos = client.models(task=args.task)
    if args.json:
        print_json([i.model_dump(mode="json") for i in infos])
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models and variants")
    for col in ("model", "task", "state", "variant", "p50 b1 ms", "accuracy", "load ms"):
        table.add_column(col)
    for info in infos:
        state = info.job.state if info.job else "?"
        profiles = {p.variant_id: p for p in info.profiles}
        if not info.variants:
            table.add_row(info.model.model_id, info.model.task, state, "-", "", "", "")
        for v in info.variants:
            p = profiles.get(v.variant_id)
            table.add_row(
                info.model.model_id,
                info.model.task,
                state,
                v.variant_id,
                f"{p.p50_batch1_ms:.2f}" if p else "",
                f"{p.accuracy:.3f} ({p.accuracy_kind})" if p else "",
                f"{p.load_ms:.0f}" if p else "",
            )
    Console().print(table)
    return 0


def onnx_input_name(data: bytes) -> str:
    import onnx

    model = onnx.load_model_from_string(data)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise InfaasError(f"the model has inputs {names}; pass --input-name")
    return str(names[0])


def register_command(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    import numpy as np

    data = args.model.read_bytes()
    with np.load(args.validation) as z:
        if "x" not in z.files:
            raise InfaasError(f"{args.validation} has no 'x' array")
        x = np.asarray(z["x"])
        y = np.asarray(z["y"]) if "y" in z.files else None
    num_classes = args.num_classes
    if num_classes is None:
        known = {t.name: t for t in client.tasks()}
        if args.task not in known:
            raise InfaasError(f"task {args.task!r} is new: pass --num-classes")
        num_classes = known[args.task].num_classes
    client.attest_keyservice()
    job = client.upload_model(
        args.model_id,
        args.task,
        args.architecture or args.model_id,
        data,
        x,
        y,
        num_classes=num_classes,
        input_name=args.input_name or onnx_input_name(data),
        declared_accuracy=args.declared_accuracy,
    )
    for tenant in args.grant:
        client.grant(args.model_id, tenant)
    if not args.no_wait:
        job = client.wait_ready(args.model_id, progress=not args.json)
    if args.json:
        print_json(job.model_dump(mode="json"))
    else:
        print(f"model {args.model_id}: {job.state} {job.message}".rstrip())
    return 0


def consent_command(args: argparse.Namespace, settings: Settings, tenant: Client) -> int:
    """A tenant accepts (or stops accepting) a model owner or one model, or lists them."""
    kind: ConsentKind = "model" if args.model else "owner"
    if args.tenant_command == "accept":
        policy = tenant.accept(args.name, kind=kind)
    elif args.tenant_command == "unaccept":
        policy = tenant.unaccept(args.name, kind=kind)
    else:
        policy = tenant.accepted()
    if args.json:
        print_json(policy.model_dump(mode="json"))
        return 0
    owners = ", ".join(policy.owners) or "none"
    models = ", ".join(f"{m} (of {o})" for m, o in policy.models.items()) or "none"
    print(f"tenant {tenant.principal} accepts owners: {owners}; models: {models}")
    return 0


def audit_command(args: argparse.Namespace, settings: Settings, principal: Client) -> int:
    """A tenant or model owner reads its own audit trail at the key service."""
    trail = principal.audit()
    if args.json:
        print_json(trail)
        return 0
    for entry in trail:
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(entry["at"])))
        rest = {k: v for k, v in entry.items() if k not in ("seq", "event", "at") and v is not None}
        print(f"{entry['seq']:>4} {at} {entry['event']}: " + json.dumps(rest, sort_keys=True))
    return 0


ClientOptions = Callable[[argparse.ArgumentParser, str], None]
"""The CLI's adder of --credentials/--url/--json (and the handler) for a principal."""
PlainOptions = Callable[[argparse.ArgumentParser, Callable[..., int]], None]
"""The CLI's adder of --data-dir (and `handler(args, settings)`) for a command without
credentials."""


def add_principal_commands(sub: Any, client_opts: ClientOptions, plain_opts: PlainOptions) -> None:
    """grant / revoke, tenant {create,list,accept,unaccept,accepted}, owner create, login,
    token revoke."""
    for action in ("grant", "revoke"):
        gr = sub.add_parser(
            action,
            help=f"{action} a tenant the use of a model (model owner)",
            description=f"As the model's owner, {action} TENANT the use of MODEL: the key "
            "service then releases (or no longer releases) the model's key for the tenant's "
            "requests. Uses DATA_DIR/credentials/zoo-owner.json by default.",
        )
        client_opts(gr, "zoo-owner")
        gr.add_argument("model_id", metavar="MODEL", help="model id")
        gr.add_argument("tenant", metavar="TENANT", help="tenant id")
        gr.set_defaults(client_command=action)

    role_actions: dict[str, Any] = {}
    for role, what in (
        ("tenant", "tenants: create, list (admin); accept model owners (tenant)"),
        ("owner", "model owners (admin)"),
    ):
        group = sub.add_parser(role, help=what)
        actions = group.add_subparsers(dest=f"{role}_command", metavar="ACTION", required=True)
        create = actions.add_parser(
            "create",
            help=f"create a {role}: its enrolment file (no key of it is made here)",
            description=f"As the administrator, create a {role}: its API token and a "
            "one-time enrolment signed with the administrator's enrolment key "
            f"(DATA_DIR/{PRIVATE_FILE}), written (0600) to --out (default "
            f"DATA_DIR/enrolments/NAME.json). Hand that file to the {role}: on its own "
            "machine `infaas login FILE` makes its key-service token"
            + (" and request key" if role == "tenant" else "")
            + " there and registers.",
        )
        client_opts(create, "admin")
        create.add_argument("name", help=f"{role} id")
        create.add_argument("--out", type=Path, help="where to write the enrolment file")
        create.set_defaults(client_command=f"{role}-create")
        role_actions[role] = actions
    retire = role_actions["owner"].add_parser(
        "retire-key",
        help="retire one data key id of your model (model owner)",
        description="As a model owner: the key service never releases data key KEY_ID of "
        "MODEL again; if it is the model's current key, workers stop serving the model "
        "within a second (their lease ends). `infaas audit` lists your models' key ids. "
        "Uses DATA_DIR/credentials/zoo-owner.json by default.",
    )
    client_opts(retire, "zoo-owner")
    retire.add_argument("model_id", metavar="MODEL", help="model id")
    retire.add_argument("key_id", metavar="KEY_ID", help="the data key id to retire")
    retire.set_defaults(client_command="retire-key")
    tenant_actions = role_actions["tenant"]
    listing = tenant_actions.add_parser("list", help="list tenants (admin)")
    client_opts(listing, "admin")
    listing.set_defaults(client_command="tenant-list")
    for action, what in (
        ("accept", "let this tenant's requests reach a model owner's models (or one model)"),
        ("unaccept", "withdraw an acceptance"),
    ):
        ta = tenant_actions.add_parser(
            action,
            help=what,
            description=f"As a tenant: {what}. A model owner's grant alone never sends your "
            "requests to its models; the key service releases your key for a model only when "
            "the owner granted it and you accepted it or its owner. Uses "
            "DATA_DIR/credentials/demo.json by default.",
        )
        client_opts(ta, "demo")
        ta.add_argument("name", help="model owner id (or model id with --model)")
        ta.add_argument("--model", action="store_true", help="NAME is one model, not an owner")
        ta.set_defaults(client_command="tenant-consent")
    audit = sub.add_parser(
        "audit",
        help="this tenant's or owner's own audit trail (key service)",
        description="As a tenant or model owner: what the key service did that concerns you "
        "(grants, consent, key ids, key releases and the worker measurement each went to; "
        "not lease renewals). Only your own key-service token reads it. Uses "
        "DATA_DIR/credentials/demo.json by default.",
    )
    client_opts(audit, "demo")
    audit.set_defaults(client_command="audit")
    accepted = tenant_actions.add_parser(
        "accepted",
        help="the owners and models this tenant accepted",
        description="As a tenant: list the owners and models your requests may reach (once "
        "their owner grants them). Uses DATA_DIR/credentials/demo.json by default.",
    )
    client_opts(accepted, "demo")
    accepted.set_defaults(client_command="tenant-consent", model=False)

    lg = sub.add_parser(
        "login",
        help="join a deployment with an enrolment file (as the new tenant or owner)",
        description="On your own machine: attest the key service against the enrolment "
        "file's trust bundle, make your key-service token (and, as a tenant, your request "
        "key) here, register with the one-time enrolment and write your credentials (0600) "
        "to --out (default DATA_DIR/credentials/NAME.json). Neither the administrator nor "
        "the key service ever holds your token or key in the clear.",
    )
    plain_opts(lg, login_command)
    lg.add_argument("enrolment", type=Path, metavar="ENROLMENT_FILE")
    lg.add_argument("--out", type=Path, help="where to write your credentials")
    lg.add_argument("--url", help="infaas base URL (default: the enrolment file's)")
    lg.add_argument("--json", action="store_true", help="machine-readable output")

    tok = sub.add_parser("token", help="API and key-service tokens (admin)")
    tok_actions = tok.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    rv = tok_actions.add_parser(
        "revoke",
        help="revoke a principal's tokens (admin), or your own key-service token (--self)",
        description="As the administrator: delete NAME's API token (the control plane and "
        "the workers refuse it within a second) and send the key service a revocation "
        "signed with the enrolment key (it refuses NAME's key-service token at once and "
        "releases its keys no more: workers stop serving them when their one-second lease "
        "ends). A new enrolment lets NAME back. With --self, as any tenant or owner (a "
        "token you think leaked): revoke the key-service token in your own credentials.",
    )
    client_opts(rv, "admin")
    who = rv.add_mutually_exclusive_group(required=True)
    who.add_argument("name", nargs="?", help="tenant or owner id (admin)")
    who.add_argument(
        "--self",
        dest="own",
        action="store_true",
        help="revoke the key-service token of --credentials (its holder's own)",
    )
    rv.set_defaults(client_command="token-revoke")
