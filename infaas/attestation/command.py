"""`infaas evidence verify`: parse a quote, run every check, print fields and the verdict."""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from infaas.attestation.policy import AttestationPolicy
from infaas.attestation.quote import parse_quote
from infaas.attestation.verify import (
    CheckResult,
    inspect_quote,
    load_roots,
    quote_summary,
)
from infaas.errors import AttestationFailed


def evidence_verify_command(args: argparse.Namespace) -> int:
    """Exit 0 only if the quote verifies and satisfies the policy (if one is given)."""
    console = Console()
    raw = args.quote.read_bytes()
    policy = AttestationPolicy.from_yaml(args.policy) if args.policy else None
    roots = []
    try:
        if args.root:
            roots.extend(load_roots(args.root.read_bytes()))
        if policy is not None:
            roots.extend(policy.roots)
    except (OSError, ValueError, AttestationFailed) as exc:
        console.print(f"[red]cannot load trusted roots: {exc}[/red]")
        return 2
    if not roots:
        console.print(
            "[red]no trusted root: pass --root PEM or a --policy naming trusted_roots[/red]"
        )
        return 2
    collateral = json.loads(args.collateral.read_text()) if args.collateral else None
    now_arg = getattr(args, "now", None)
    now = (
        datetime.fromisoformat(str(now_arg).replace("Z", "+00:00"))
        if now_arg
        else datetime.now(UTC)
    )
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)

    checks, verified = inspect_quote(raw, roots, now=now, collateral=collateral)
    policy_checks: list[CheckResult] = []
    if verified is not None and policy is not None:
        policy_checks = list(policy.evaluate(verified, None, now.timestamp()).checks)
    ok = verified is not None and all(c.ok for c in policy_checks)

    fields: dict[str, Any] = {}
    with contextlib.suppress(AttestationFailed):
        fields = verified.summary() if verified is not None else quote_summary(parse_quote(raw))

    if args.json:
        print(
            json.dumps(
                {
                    "quote": str(args.quote),
                    "fields": fields,
                    "checks": [c.__dict__ for c in checks],
                    "policy": [c.__dict__ for c in policy_checks],
                    "verdict": "verified" if ok else "rejected",
                    "ok": ok,
                    "checked_at": now.isoformat(),
                },
                sort_keys=True,
            )
        )
        return 0 if ok else 1

    ftable = Table(title=f"{args.quote}", show_header=False)
    ftable.add_column("field")
    ftable.add_column("value", overflow="fold")
    for k, v in fields.items():
        ftable.add_row(k, json.dumps(v) if isinstance(v, list) else str(v))
    console.print(ftable)
    ctable = Table(title=f"checks at {now.isoformat()}")
    ctable.add_column("check")
    ctable.add_column("result")
    ctable.add_column("detail", overflow="fold")
    for c in [*checks, *(CheckResult(f"policy: {p.name}", p.ok, p.detail) for p in policy_checks)]:
        ctable.add_row(c.name, "[green]pass[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    console.print(ctable)
    if verified is not None and verified.simulated:
        console.print("[yellow]simulated evidence — not confidential[/yellow]")
    console.print("[bold green]VERIFIED[/bold green]" if ok else "[bold red]REJECTED[/bold red]")
    return 0 if ok else 1
