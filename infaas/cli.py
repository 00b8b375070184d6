"""The `infaas` command line: parses arguments, builds settings, calls the library.

This module is the composition root of the project, so it is the one place in
`infaas/` that reaches into the component packages (lazily, per subcommand).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from infaas.errors import InfaasError
from infaas.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "store_url", None):
        overrides["store_url"] = args.store_url
    return load_settings(args.config, **overrides)


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from infaas.zoo import zoo_build_command

    return zoo_build_command(args, _settings(args))


def _cmd_profile(args: argparse.Namespace) -> int:
    from profiler.command import profile_command

    return profile_command(args, _settings(args))


def _cmd_evidence_verify(args: argparse.Namespace) -> int:
    from infaas.attestation.command import evidence_verify_command

    return evidence_verify_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="infaas",
        description="Model-less, confidential inference-as-a-service.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path, help="where the zoo and the store live")
        p.add_argument("--store-url", help="sqlite:///PATH, memory:// or redis://HOST:PORT/DB")

    zoo = sub.add_parser("zoo", help="the example model zoo")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", metavar="ACTION", required=True)
    zb = zoo_sub.add_parser(
        "build", help="train / construct the example models locally (no downloads)"
    )
    common(zb)
    zb.add_argument("--small", action="store_true", help="small image models (fast, for tests)")
    zb.add_argument("--force", action="store_true", help="rebuild models that exist")
    zb.set_defaults(func=_cmd_zoo_build)

    pr = sub.add_parser(
        "profile",
        help="generate every variant of the registered models and measure them",
        description="Generate variants (FP32/BF16/INT8 on onnxruntime and OpenVINO) of each "
        "model in the zoo, measure latency per batch size, throughput, load time, memory "
        "and accuracy, store the profiles, print a table and write an accuracy/latency plot.",
    )
    common(pr)
    pr.add_argument("--model", action="append", help="only this model id (repeatable)")
    pr.add_argument("--batch-sizes", help="comma-separated batch sizes, e.g. 1,2,4,8")
    pr.add_argument("--plot", type=Path, help="PNG path (default DATA_DIR/profiles.png)")
    pr.add_argument("--json", action="store_true", help="print profiles as JSON lines")
    pr.add_argument("--quick", action="store_true", help="fewer timed runs (rough numbers)")
    pr.set_defaults(func=_cmd_profile)

    ev = sub.add_parser("evidence", help="attestation evidence")
    ev_sub = ev.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    ver = ev_sub.add_parser(
        "verify",
        help="parse and verify an SGX/TDX quote",
        description="Parse an SGX v3 / TDX v4 quote, verify its certificate chain and "
        "signatures, check it against a policy; exit 0 only if it verifies and satisfies "
        "the policy.",
    )
    ver.add_argument("quote", type=Path, help="quote file (raw bytes)")
    ver.add_argument("--root", type=Path, help="trusted root CA (PEM or DER)")
    ver.add_argument("--policy", type=Path, help="attestation policy YAML")
    ver.add_argument("--collateral", type=Path, help="TCB collateral JSON")
    ver.add_argument(
        "--now",
        metavar="ISO8601",
        help="verify as of this time (e.g. 2025-06-20T00:00:00Z) instead of the present",
    )
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=_cmd_evidence_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        code: int = args.func(args)
    except InfaasError as e:
        print(f"infaas: error: {e.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"infaas: error: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
