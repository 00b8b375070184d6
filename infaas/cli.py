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
from typing import Any

from infaas.errors import InfaasError
from infaas.settings import Settings, load_settings


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


def _cmd_serve(args: argparse.Namespace) -> int:
    from api.command import serve_command

    return serve_command(args, _settings(args))


def _client(args: argparse.Namespace, settings: Settings) -> Any:
    from infaas.client import Client

    path = args.credentials or settings.data_dir / "credentials" / f"{args.default_principal}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no credentials at {path}: start `infaas serve` (it writes them) or pass --credentials"
        )
    return Client.from_credentials(path, base_url=args.url)


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


def _cmd_models(args: argparse.Namespace, settings: Settings, client: Any) -> int:
    infos = client.models(task=args.task)
    if args.json:
        _print_json([i.model_dump(mode="json") for i in infos])
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


def _onnx_input_name(data: bytes) -> str:
    import onnx

    model = onnx.load_model_from_string(data)
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != 1:
        raise InfaasError(f"the model has inputs {names}; pass --input-name")
    return str(names[0])


def _cmd_register(args: argparse.Namespace, settings: Settings, client: Any) -> int:
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
    client.register_owner()
    job = client.upload_model(
        args.model_id,
        args.task,
        args.architecture or args.model_id,
        data,
        x,
        y,
        num_classes=num_classes,
        input_name=args.input_name or _onnx_input_name(data),
        declared_accuracy=args.declared_accuracy,
    )
    for tenant in args.grant:
        client.grant(args.model_id, tenant)
    if not args.no_wait:
        job = client.wait_ready(args.model_id, progress=not args.json)
    if args.json:
        _print_json(job.model_dump(mode="json"))
    else:
        print(f"model {args.model_id}: {job.state} {job.message}".rstrip())
    return 0


def _cmd_tenant_create(args: argparse.Namespace, settings: Settings, admin: Any) -> int:
    creds = admin.create_tenant(args.name)
    tenant = admin.with_credentials(creds)
    tenant.attest_keyservice()
    tenant.register_tenant()
    out = tenant.save_credentials(
        args.out or settings.data_dir / "credentials" / f"{args.name}.json"
    )
    if args.json:
        _print_json({"tenant": args.name, "credentials": str(out)})
    else:
        print(f"tenant {args.name} created; its credentials (API token, request key) are in {out}")
    return 0


def _cmd_tenant_consent(args: argparse.Namespace, settings: Settings, tenant: Any) -> int:
    kind = "model" if args.model else "owner"
    if args.tenant_command == "accept":
        policy = tenant.accept(args.name, kind=kind)
    elif args.tenant_command == "unaccept":
        policy = tenant.unaccept(args.name, kind=kind)
    else:
        policy = tenant.accepted()
    if args.json:
        _print_json(policy.model_dump(mode="json"))
        return 0
    owners = ", ".join(policy.owners) or "none"
    models = ", ".join(f"{m} (of {o})" for m, o in policy.models.items()) or "none"
    print(f"tenant {tenant.principal} accepts owners: {owners}; models: {models}")
    return 0


_CLIENT_COMMANDS = {
    "infer": _cmd_infer,
    "models": _cmd_models,
    "register": _cmd_register,
    "tenant-create": _cmd_tenant_create,
    "tenant-consent": _cmd_tenant_consent,
}


def _cmd_client(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _client(args, settings) as client:
        code: int = _CLIENT_COMMANDS[args.client_command](args, settings, client)
    return code


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
        choices=("off", "infaas", "static", "queue", "infaas-style"),
        help="autoscaling policy (default from settings: off); static, queue and "
        "infaas-style are the baselines of bench/slo.py",
    )
    sv.set_defaults(func=_cmd_serve)

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

    tn = sub.add_parser("tenant", help="tenants: create (admin); accept model owners (tenant)")
    tn_sub = tn.add_subparsers(dest="tenant_command", metavar="ACTION", required=True)
    tc = tn_sub.add_parser(
        "create",
        help="create a tenant with its own request key",
        description="As the administrator, create a tenant and its API token; then, as that "
        "tenant, attest the key service, register and upload a fresh request key. Writes the "
        "tenant's credentials (0600) to --out (default DATA_DIR/credentials/NAME.json).",
    )
    client_opts(tc, "admin")
    tc.add_argument("name", help="tenant id")
    tc.add_argument("--out", type=Path, help="where to write the tenant's credentials")
    tc.set_defaults(client_command="tenant-create")
    for action, what in (
        ("accept", "let this tenant's requests reach a model owner's models (or one model)"),
        ("unaccept", "withdraw an acceptance"),
    ):
        ta = tn_sub.add_parser(
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
    tl = tn_sub.add_parser(
        "accepted",
        help="the owners and models this tenant accepted",
        description="As a tenant: list the owners and models your requests may reach (once "
        "their owner grants them). Uses DATA_DIR/credentials/demo.json by default.",
    )
    client_opts(tl, "demo")
    tl.set_defaults(client_command="tenant-consent", model=False)

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
    parser = build_parser()
    args = parser.parse_args(argv)
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
        print(f"infaas: error: {e.message}", file=sys.stderr)
        return 2
    except FileNotFoundError as e:
        print(f"infaas: error: {e}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
