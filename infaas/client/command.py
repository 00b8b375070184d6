"""The `infaas` subcommands that act as a principal of a running service: grant and
revoke (owner), tenant and owner create, tenant list (admin), tenant accept / unaccept
/ accepted (tenant), audit (tenant or owner), status.

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
    """As the administrator, create a tenant or model owner; then, as it, attest the key
    service and register (a tenant also uploads a fresh request key); save its credentials."""
    role = args.client_command.partition("-")[0]
    if role == "tenant":
        principal = admin.with_credentials(admin.create_tenant(args.name))
        principal.attest_keyservice()
        principal.register_tenant()
    else:
        principal = admin.with_credentials(admin.create_owner(args.name))
        principal.attest_keyservice()
        principal.register_owner()
    out = principal.save_credentials(
        args.out or settings.data_dir / "credentials" / f"{args.name}.json"
    )
    if args.json:
        print_json({role: args.name, "credentials": str(out)})
    else:
        print(f"{role} {args.name} created; its credentials are in {out} (mode 0600)")
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


def add_principal_commands(sub: Any, client_opts: ClientOptions) -> None:
    """grant / revoke, tenant {create,list,accept,unaccept,accepted}, owner create."""
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
            help=f"create a {role} with its own credentials",
            description=f"As the administrator, create a {role} and its API token; then, as "
            f"that {role}, attest the key service and register"
            + (" and upload a fresh request key" if role == "tenant" else "")
            + f". Writes the {role}'s credentials (0600) to --out (default "
            "DATA_DIR/credentials/NAME.json).",
        )
        client_opts(create, "admin")
        create.add_argument("name", help=f"{role} id")
        create.add_argument("--out", type=Path, help=f"where to write the {role}'s credentials")
        create.set_defaults(client_command=f"{role}-create")
        role_actions[role] = actions
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
