"""What the variant choice is worth on this machine: one JSON line.

For every variant of every zoo model: p50 latency at batch 1 and throughput at
batch 8, each as a speedup over the same model's onnxruntime FP32 variant
measured in the same run, and the accuracy delta against that FP32 variant.

    python bench/variants.py            # the default (224x224) zoo, a few minutes
    python bench/variants.py --small    # 32x32 image models, under a minute
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infaas.zoo import (
    build_zoo,
    load_calibration,
    load_manifest,
    load_model_bytes,
    load_validation,
)
from profiler.profile import ProfileOptions, profile_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", action="store_true", help="small (32x32) image models")
    parser.add_argument(
        "--zoo-dir", type=Path, help="a built zoo (default: build one in a temp dir)"
    )
    parser.add_argument("--model", action="append", help="only this model id (repeatable)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads per session")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per batch size")
    parser.add_argument("--validation", type=int, default=64, help="validation samples")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="infaas-bench-") as tmp:
        zoo_dir = args.zoo_dir or Path(tmp) / "zoo"
        try:
            manifest = load_manifest(zoo_dir)
        except FileNotFoundError:
            build_zoo(zoo_dir, small=args.small)
            manifest = load_manifest(zoo_dir)
        options = ProfileOptions(
            batch_sizes=(1, 8),
            warmup_runs=2,
            min_runs=5,
            min_time_s=args.min_time,
            max_time_s=3.0,
            threads=args.threads,
        )
        results = []
        started = time.perf_counter()
        for entry in manifest.models:
            if args.model and entry.model_id not in args.model:
                continue
            x, y = load_validation(zoo_dir, entry)
            x = x[: args.validation]
            y = None if y is None else y[: args.validation]
            rows = profile_model(
                entry.to_model_record(),
                load_model_bytes(zoo_dir, entry),
                load_calibration(zoo_dir, entry),
                x,
                y,
                options=options,
                max_batch=8,
            )
            base = rows[0][1]
            assert base is not None and rows[0][0].variant_id.endswith(".fp32.onnxruntime")
            for spec, prof, reason in rows:
                if prof is None:
                    results.append({"variant": spec.variant_id, "unsupported": reason})
                    continue
                results.append(
                    {
                        "variant": spec.variant_id,
                        "p50_b1_ms": round(prof.at_batch(1).p50_ms, 3),
                        "throughput_b8": round(prof.at_batch(8).throughput_rps, 1),
                        "speedup_p50_b1": round(
                            base.at_batch(1).p50_ms / prof.at_batch(1).p50_ms, 2
                        ),
                        "speedup_throughput_b8": round(
                            prof.at_batch(8).throughput_rps / base.at_batch(8).throughput_rps, 2
                        ),
                        "accuracy": round(prof.accuracy, 4),
                        "accuracy_delta": round(prof.accuracy - base.accuracy, 4),
                        "accuracy_kind": prof.accuracy_kind,
                    }
                )
    line = {
        "bench": "variants",
        "zoo": "small" if args.small else "default",
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "baseline": "onnxruntime fp32 of the same model, same run",
        "seconds": round(time.perf_counter() - started, 1),
        "variants": results,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
