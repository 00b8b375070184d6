"""Honest preparations under the sandbox: peak resident memory and wall time per zoo model.

What `infaas.settings.PreparationSettings` limits are set from. For each zoo
model, the worker's preparation child (`enclave_workers.sandbox`) runs exactly
as a worker runs it (variants generated, every variant profiled with the
settings' profiler options and the first pool's threads), under limits far
above what it needs; the watchdog's polled peak RSS of the child's process
tree and the child's wall time are printed, one JSON line per model.

Run: python bench/preparation.py [--zoo DIR] [--models a,b] [--small]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from enclave_workers.preparation import PreparationOptions
from enclave_workers.sandbox import Sandbox, SandboxLimits
from infaas.settings import Settings
from infaas.zoo import build_zoo, load_manifest, load_model_bytes, load_validation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=Path("data/zoo"))
    ap.add_argument("--models", default="", help="comma-separated model ids (default: all)")
    ap.add_argument("--small", action="store_true", help="build the small zoo if missing")
    args = ap.parse_args()
    if not (args.zoo / "manifest.json").is_file():
        build_zoo(args.zoo, small=args.small)
    manifest = load_manifest(args.zoo)
    wanted = set(filter(None, args.models.split(",")))
    settings = Settings(store_url="memory://")
    options = PreparationOptions.from_settings(settings)
    sandbox = Sandbox(SandboxLimits(memory_limit_bytes=64 * 2**30, time_limit_s=7200.0))
    for entry in manifest.models:
        if wanted and entry.model_id not in wanted:
            continue
        onnx = load_model_bytes(args.zoo, entry)
        x, y = load_validation(args.zoo, entry)
        npz = io.BytesIO()
        np.savez(npz, x=x, **({} if y is None else {"y": y}))
        request = {
            "record": entry.to_model_record().model_dump(mode="json"),
            "task": manifest.tasks[entry.task].model_dump(mode="json"),
            "options": options.to_json(),
        }
        variants: list[str] = []

        def on_message(
            msg: dict[str, object], payload: bytearray | None, variants: list[str] = variants
        ) -> None:
            if msg["kind"] == "variant":
                spec = msg["spec"]
                assert isinstance(spec, dict)
                variants.append(str(spec["variant_id"]))

        t0 = time.time()
        run = sandbox.run(
            request,
            [bytearray(onnx), bytearray(npz.getvalue())],
            on_message,
            max_payload_bytes=2 * len(onnx) + (1 << 20),
        )
        print(
            json.dumps(
                {
                    "bench": "preparation",
                    "model": entry.model_id,
                    "small": entry.small,
                    "model_bytes": len(onnx),
                    "variants": len(variants),
                    "peak_rss_mib": round(run.peak_rss_bytes / 2**20, 1),
                    "wall_s": round(run.wall_s, 2),
                    "profile_batch_sizes": list(options.profile.batch_sizes),
                    "threads": options.profile.threads,
                    "cpus": os.cpu_count(),
                    "load_1m": os.getloadavg()[0],
                    "machine": platform.machine(),
                    "started": t0,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
