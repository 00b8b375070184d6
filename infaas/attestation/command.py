"""`infaas evidence verify`: parse evidence, run every check, print fields and the verdict.

Production by default: without `--policy` the CLI applies
`AttestationPolicy.cli_default()` (debug and simulated evidence refused, TCB
UpToDate when `--collateral` is given, measurements reported but not required).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import Encoding
from rich.console import Console
from rich.table import Table

from infaas.attestation.evidence import CheckResult
from infaas.attestation.policy import AttestationPolicy, VerifiedEvidence
from infaas.attestation.quote import parse_quote
from infaas.attestation.snp import REPORT_LEN, inspect_snp_report, parse_snp_report
from infaas.attestation.spdm import decode_gpu_report, inspect_gpu_report, parse_gpu_report
from infaas.attestation.verify import inspect_quote, load_roots, quote_summary
from infaas.errors import AttestationFailed

PLATFORMS = ("auto", "sgx", "tdx", "snp", "nvidia")


def detect_platform(raw: bytes) -> str:
    """The evidence kind from its bytes: Intel DCAP quote, SEV-SNP report or SPDM report."""
    if len(raw) >= 8 and int.from_bytes(raw[0:2], "little") in (3, 4, 5) and raw[2:4] == b"\2\0":
        tee = int.from_bytes(raw[4:8], "little")
        return "tdx" if tee == 0x81 else "sgx"
    if (
        len(raw) >= REPORT_LEN
        and int.from_bytes(raw[0:4], "little") in (2, 3)
        and int.from_bytes(raw[0x34:0x38], "little") == 1
    ):
        return "snp"
    gpu = decode_gpu_report(raw)
    if gpu[:2] == b"\x11\xe0" or (gpu[:1] == b"\x10" and gpu[1:2] == b"\xe0"):
        return "nvidia"
    return "unknown"


def _now(args: argparse.Namespace) -> datetime:
    now_arg = getattr(args, "now", None)
    now = (
        datetime.fromisoformat(str(now_arg).replace("Z", "+00:00"))
        if now_arg
        else datetime.now(UTC)
    )
    return now if now.tzinfo else now.replace(tzinfo=UTC)


def _load_certs(paths: list[Path]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for p in paths:
        out.extend(load_roots(p.read_bytes()))
    return out


def _unverified_fields(platform: str, raw: bytes) -> dict[str, Any]:
    """The evidence's fields as parsed, for evidence that did not verify."""
    if platform in ("sgx", "tdx"):
        return quote_summary(parse_quote(raw))
    if platform == "snp":
        return parse_snp_report(raw).summary()
    if platform == "nvidia":
        return parse_gpu_report(raw).summary()
    return {}


def evidence_verify_command(args: argparse.Namespace) -> int:
    """Exit 0 only if the evidence verifies and satisfies the policy (production by default)."""
    console = Console()
    path: Path = getattr(args, "evidence", None) or args.quote
    raw = path.read_bytes()
    platform = getattr(args, "platform", None) or "auto"
    if platform == "auto":
        platform = detect_platform(raw)
    try:
        policy = (
            AttestationPolicy.from_yaml(args.policy)
            if args.policy
            else AttestationPolicy.cli_default()
        )
        roots: list[x509.Certificate] = []
        if args.root:
            roots.extend(load_roots(args.root.read_bytes()))
        roots.extend(policy.roots)
        extra_certs = (
            _load_certs(list(getattr(args, "cert", None) or [])) if platform != "snp" else []
        )
    except (OSError, ValueError, AttestationFailed) as exc:
        console.print(f"[red]cannot load policy or certificates: {exc}[/red]")
        return 2
    if platform == "nvidia":
        # the device chain carries NVIDIA's root; it is trusted only if its pin matches
        pins = {p.lower() for p in policy.gpu.root_sha256}
        roots.extend(c for c in extra_certs if c.fingerprint(SHA256()).hex() in pins)
    if not roots:
        console.print(
            "[red]no trusted root: pass --root PEM or a --policy naming trusted_roots[/red]"
        )
        return 2
    try:
        collateral = json.loads(args.collateral.read_text()) if args.collateral else None
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot read collateral: {exc}[/red]")
        return 2
    now = _now(args)

    checks: list[CheckResult]
    verified: VerifiedEvidence | None = None
    policy_checks: list[CheckResult] = []
    fields: dict[str, Any] = {}
    if platform in ("sgx", "tdx"):
        chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in extra_certs) or None
        checks, verified = inspect_quote(
            raw, roots, now=now, collateral=collateral, pck_chain_pem=chain_pem
        )
    elif platform == "snp":
        vcek = args.cert[0].read_bytes() if getattr(args, "cert", None) else None
        checks, verified = inspect_snp_report(
            raw, vcek, roots, now=now, pinned_arks=policy.snp.ark_sha256
        )
    elif platform == "nvidia":
        checks, verified = inspect_gpu_report(raw, extra_certs, roots, now=now)
    else:
        checks = [CheckResult("parse", False, f"unknown evidence format ({platform})")]
    if verified is not None:
        policy_checks = list(policy.evaluate(verified, None, now.timestamp()).checks)
    with contextlib.suppress(AttestationFailed):
        fields = verified.summary() if verified is not None else _unverified_fields(platform, raw)
    ok = verified is not None and all(c.ok for c in policy_checks)
    simulated = verified is not None and verified.simulated

    if args.json:
        print(
            json.dumps(
                {
                    "evidence": str(path),
                    "platform": platform,
                    "fields": fields,
                    "checks": [c.__dict__ for c in checks],
                    "policy": [c.__dict__ for c in policy_checks],
                    "policy_source": str(args.policy) if args.policy else "production default",
                    "verdict": "verified" if ok else "rejected",
                    "ok": ok,
                    "checked_at": now.isoformat(),
                },
                sort_keys=True,
            )
        )
        return 0 if ok else 1

    ftable = Table(title=f"{path} ({platform})", show_header=False)
    ftable.add_column("field")
    ftable.add_column("value", overflow="fold")
    for k, v in fields.items():
        ftable.add_row(k, json.dumps(v) if isinstance(v, list | dict) else str(v))
    console.print(ftable)
    ctable = Table(title=f"checks at {now.isoformat()}")
    ctable.add_column("check")
    ctable.add_column("result")
    ctable.add_column("detail", overflow="fold")
    for c in [*checks, *(CheckResult(f"policy: {p.name}", p.ok, p.detail) for p in policy_checks)]:
        ctable.add_row(c.name, "[green]pass[/green]" if c.ok else "[red]FAIL[/red]", c.detail)
    console.print(ctable)
    if not args.policy:
        console.print("policy: production default (pass --policy to list measurements)")
    if simulated:
        console.print("[yellow]simulated evidence — not confidential[/yellow]")
    console.print("[bold green]VERIFIED[/bold green]" if ok else "[bold red]REJECTED[/bold red]")
    return 0 if ok else 1
