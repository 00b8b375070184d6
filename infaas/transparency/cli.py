"""``infaas transparency``: read the key service's public log and check it, as anyone can.

``verify`` takes the log (a key service URL, or a file ``export`` wrote) and the log's
public key (from the deployment's trust bundle, or given as hex), and checks that

* the latest tree head is signed by that key and is the RFC 9162 root of the entries;
* each ``--measurement`` (key service or worker, hex) is in the log, and each ``--policy``
  (release policy SHA-256) is in a key-service entry together with one of those
  measurements, with its inclusion proof checked against that head, and is the latest
  key-service entry for that measurement (the head names it): an older one is superseded;
* with ``--heads FILE``, the log extends the head recorded there by an earlier run
  (consistency proof): a log that forked or went back since is refused. The new head is
  then recorded.

Exit 0 only when every check holds; otherwise a problem naming what failed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

_VERIFY_HELP = "check the key service's transparency log and that a measurement is in it"


def add_commands(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``infaas transparency verify|export`` on the CLI's subparsers."""
    tp = sub.add_parser("transparency", help="the key service's public transparency log")
    tp_sub = tp.add_subparsers(dest="transparency_command", metavar="ACTION", required=True)
    ver = tp_sub.add_parser(
        "verify",
        help=_VERIFY_HELP,
        description="Check that the log's latest tree head is signed by the pinned log key "
        "and is the RFC 9162 root of its entries; that each --measurement (key service or "
        "worker) and --policy (release policy SHA-256) is in it, with its inclusion proof "
        "checked; and, with --heads, that the log extends the head an earlier run recorded "
        "(consistency proof: a forked or rolled-back log is refused). Exit 0 only if all hold.",
    )
    ver.add_argument(
        "--log",
        required=True,
        help="the key service's base URL (GET /v1/keyservice/transparency) or an export file",
    )
    key = ver.add_mutually_exclusive_group(required=True)
    key.add_argument("--bundle", type=Path, help="trust bundle (infaas trust export) to pin from")
    key.add_argument("--log-key", help="the log's Ed25519 public key (hex)")
    ver.add_argument(
        "--measurement",
        action="append",
        default=[],
        help="a key service or worker measurement (hex) that must be in the log (repeatable)",
    )
    ver.add_argument(
        "--policy",
        action="append",
        default=[],
        help="a release policy SHA-256 (hex) that must be in the log in a key-service entry "
        "with one of the --measurement values, when any is given (repeatable)",
    )
    ver.add_argument(
        "--heads", type=Path, help="file of the heads seen before: the log must extend them"
    )
    ver.add_argument("--json", action="store_true", help="machine-readable output")
    ver.set_defaults(func=verify_command)

    ex = tp_sub.add_parser(
        "export",
        help="write this deployment's transparency log (entries and signed head) as JSON",
        description="Read DATA_DIR/transparency (refused if it no longer matches the head its "
        "key signed) and write it for anyone to verify with `infaas transparency verify`.",
    )
    common(ex)
    ex.add_argument("--out", type=Path, help="write here instead of stdout")
    ex.set_defaults(func=export_command)


def _read_log(source: str) -> Any:
    from infaas.transparency.log import LogExport

    if source.startswith(("http://", "https://")):
        import httpx

        r = httpx.get(source.rstrip("/") + "/v1/keyservice/transparency", timeout=30)
        r.raise_for_status()
        return LogExport.model_validate_json(r.content)
    return LogExport.model_validate_json(Path(source).read_bytes())


def verify_command(args: argparse.Namespace) -> int:
    from infaas.errors import AttestationFailed, InvalidInput
    from infaas.keyservice.trust import KeyServiceTrust
    from infaas.transparency import merkle
    from infaas.transparency.log import entry_leaf, log_id
    from infaas.transparency.witness import SeenHeads, check_consistent

    if args.bundle is not None:
        bundle = KeyServiceTrust.from_json(json.loads(args.bundle.read_text()))
        if not bundle.log_public_key:
            raise InvalidInput(f"trust bundle {args.bundle} pins no transparency log")
        public_key = bytes.fromhex(bundle.log_public_key)
    else:
        public_key = bytes.fromhex(args.log_key)
    export = _read_log(args.log)
    head = export.head
    head.check_signature(public_key)
    leaves = [entry_leaf(e) for e in export.entries]
    if head.size != len(leaves) or merkle.root(leaves).hex() != head.root:
        raise AttestationFailed(
            f"the log's {len(leaves)} entries do not hash to its signed head (size {head.size})",
            check="transparency_log",
        )
    latest: dict[str, int] = {}
    for i, e in enumerate(export.entries):
        if e.get("kind") == "keyservice":
            latest[str(e.get("measurement"))] = i
    if head.keyservices != latest:
        raise AttestationFailed(
            "the log's signed head names other latest key-service entries than its entries hold",
            check="transparency_log",
        )
    root = bytes.fromhex(head.root)
    found: list[dict[str, Any]] = []
    measurements = {m.lower() for m in args.measurement}

    def has_measurement(m: str) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e.get("measurement") == m

    def has_policy(p: str) -> Callable[[dict[str, Any]], bool]:
        # a policy counts only in a key-service entry, beside one of the measurements asked
        # for: a measurement and a policy each logged, but never together, are not a pair
        return lambda e: (
            e.get("kind") == "keyservice"
            and e.get("policy_sha256") == p
            and (not measurements or e.get("measurement") in measurements)
        )

    wanted = [("measurement", m, has_measurement(m)) for m in sorted(measurements)]
    wanted += [("key service policy", p.lower(), has_policy(p.lower())) for p in args.policy]
    for field, value, matches in wanted:
        hits = [i for i, e in enumerate(export.entries) if matches(e)]
        for i in hits:  # each with its audit path, checked as a remote party would
            path = merkle.inclusion_proof(leaves, i)
            if not merkle.verify_inclusion(leaves[i], i, head.size, path, root):
                raise AttestationFailed(f"entry {i} fails its inclusion proof")
            found.append({"index": i, "entry": export.entries[i], "path_length": len(path)})
        if hits and field != "measurement" and measurements:
            current = [i for i in hits if latest.get(export.entries[i]["measurement"]) == i]
            if not current:
                raise AttestationFailed(
                    f"{field} {value} is superseded: a later key-service entry for "
                    f"{'/'.join(sorted(str(export.entries[i]['measurement'])[:16] for i in hits))}"
                    f"… is in the log (size {head.size}): not what it runs now",
                    check="transparency_log",
                )
        if not hits:
            raise AttestationFailed(
                f"{field} {value} is not in the transparency log"
                + (
                    " beside the measurements given"
                    if field != "measurement" and measurements
                    else ""
                )
                + " "
                f"(size {head.size}): not trusted by this deployment",
                check="transparency_log",
            )
    if args.heads is not None:
        seen = SeenHeads(args.heads)
        before = seen.latest(log_id(public_key))
        if before is not None:
            if before.size > head.size:
                check_consistent(public_key, before, head, [])  # names the roll-back
            proof = [p.hex() for p in merkle.consistency_proof(leaves, before.size)]
            check_consistent(public_key, before, head, proof)
        seen.record(head)
    kinds: dict[str, int] = {}
    for e in export.entries:
        kinds[str(e.get("kind"))] = kinds.get(str(e.get("kind")), 0) + 1
    summary = {"log_id": head.log_id, "size": head.size, "root": head.root, "entries": kinds}
    if args.json:
        print(json.dumps(summary | {"found": found}, indent=2, sort_keys=True))
    else:
        print(f"log {head.log_id[:16]}…: {head.size} entries {kinds}, head signed, root ok")
        for f in found:
            print(f"  in the log: entry {f['index']} {json.dumps(f['entry'], sort_keys=True)}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    from infaas.errors import InvalidInput
    from infaas.settings import load_settings
    from infaas.transparency.log import TransparencyLog, simulated_log_key

    overrides = {"data_dir": args.data_dir} if args.data_dir else {}
    settings = load_settings(getattr(args, "config", None), **overrides)
    if settings.tee_backend != "simulated":
        raise InvalidInput(
            "the log key of a hardware key service never leaves it: read its log from "
            "GET /v1/keyservice/transparency (infaas transparency verify --log URL)"
        )
    log = TransparencyLog(simulated_log_key(settings.data_dir), settings.data_dir / "transparency")
    text = log.export().model_dump_json(indent=2)
    if args.out:
        args.out.write_text(text)
        print(f"transparency log ({log.head.size} entries) written to {args.out}")
    else:
        print(text)
    return 0
