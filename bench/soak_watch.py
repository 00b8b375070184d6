"""What a soak run watches: each cluster process's memory and the store's records, over time.

`SoakWatch` samples, every `sample_s` from the soak's start, the resident memory of a
fixed set of processes (the Ray cluster's and Redis) and the store's records per
namespace (`MetadataStore.record_counts`), then `report` says, per process, its role
(raylet, GCS, Serve proxy, controller, each replica by application and deployment,
Redis...), its RSS at the start, at the end of the warm-up and at the end, and the growth
from each. Growth from the warm-up's end is the one that tells a leak from a fill: the
first minutes fill allocator arenas, import lazily loaded modules, warm caches and the
bounded request-id records (whose fill lasts one replay window).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infaas.store import MetadataStore
from tests.ray_nodes import processes

_MIN_RSS_KIB = 20_000
"""Processes smaller than this at the start are listed but left out of the growth figures
(a few hundred KiB would read as tens of percent)."""


def role_of(cmd: str) -> str:
    """A process's role from its command line (Ray names its workers ``ray::<actor>``)."""
    argv = cmd.split()
    if not argv:
        return "?"
    first = argv[0]
    if first.startswith("ray::"):
        name = first[len("ray::") :].split(".", 1)[0]  # without the method it runs now
        if name.startswith("ServeReplica:"):
            return "replica " + name[len("ServeReplica:") :]
        return {
            "ServeController": "serve controller",
            "ProxyActor": "serve proxy",
            "IDLE": "idle ray worker",
        }.get(name, "ray::" + name)
    base = first.rsplit("/", 1)[-1]
    if "gcs_server" in base:
        return "gcs"
    if base == "raylet":
        return "raylet"
    if base.startswith("redis-server"):
        return "redis"
    scripts = [a for a in argv if a.endswith(".py")]
    if scripts:
        script = scripts[0]
        name = script.rsplit("/", 1)[-1][: -len(".py")]
        if "runtime_env" in script:
            return "runtime env agent"
        if "dashboard" in script and name == "agent":
            return "dashboard agent"
        return name.replace("_", " ")
    return base[:40]


def _node_of(pid: int, table: dict[int, tuple[int, str]], nodes: dict[int, str]) -> str:
    """The node a process belongs to: its raylet's (raylets start the workers and agents)."""
    seen = set()
    while pid in table and pid not in seen:
        seen.add(pid)
        parent, cmd = table[pid]
        for arg in cmd.split():
            if arg.startswith("--node_manager_port="):
                return nodes.get(int(arg.split("=", 1)[1]), "")
        pid = parent
    return ""


def memory_kib(pid: int) -> dict[str, int] | None:
    """VmRSS with its anonymous and shared-memory parts, KiB; None once the process is gone."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            for field_name, key in (("VmRSS:", "rss"), ("RssAnon:", "anon"), ("RssShmem:", "shm")):
                if line.startswith(field_name):
                    out[key] = int(line.split()[1])
    except OSError:
        return None
    return out if "rss" in out else None


def growth(a: int, b: int) -> float:
    return round((b - a) / a, 4) if a else 0.0


@dataclass
class Sample:
    t_s: float
    rss_kib: dict[int, int]
    records: dict[str, int]
    store_bytes: int


@dataclass
class SoakWatch:
    """Samples `pids` and `store` every `sample_s` from `start` until `stop`."""

    pids: list[int]
    store: MetadataStore
    store_bytes: Any  # () -> int: the store's memory as its server reports it
    sample_s: float = 30.0
    warmup_s: float = 120.0
    node_ports: dict[int, str] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    first: dict[int, dict[str, int]] = field(default_factory=dict)
    warm: dict[int, dict[str, int]] = field(default_factory=dict)
    warm_t_s: float | None = None
    roles: dict[int, str] = field(default_factory=dict)
    nodes: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _t0: float = 0.0

    def start(self) -> None:
        table = processes()
        self.roles = {p: role_of(table[p][1]) for p in self.pids if p in table}
        self.nodes = {p: _node_of(p, table, self.node_ports) for p in self.pids}
        self._t0 = time.monotonic()
        self.first = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> dict[int, dict[str, int]]:
        t = time.monotonic() - self._t0
        mem = {p: m for p in self.pids if (m := memory_kib(p)) is not None}
        try:
            records, size = self.store.record_counts(), int(self.store_bytes())
        except Exception:  # the store is a process under test too: a miss is a gap, not a stop
            records, size = {}, 0
        self.samples.append(
            Sample(round(t, 1), {p: m["rss"] for p, m in mem.items()}, records, size)
        )
        if self.warm_t_s is None and t >= self.warmup_s:
            self.warm, self.warm_t_s = mem, round(t, 1)
        return mem

    def _run(self) -> None:
        k = 1
        while not self._stop.wait(max(0.0, self._t0 + k * self.sample_s - time.monotonic())):
            self._sample()
            k += 1

    def stop(self) -> dict[int, dict[str, int]]:
        """Stop sampling; the last sample (taken now)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # roles may have changed (an idle worker that became a replica): name them as they end
        table = processes()
        for p in self.pids:
            if p in table:
                self.roles[p] = role_of(table[p][1])
        return self._sample()

    def report(self, last: dict[int, dict[str, int]]) -> dict[str, Any]:
        """The soak line's memory and store fields, and the per-process table."""
        warm = self.warm or last  # a soak shorter than its warm-up: growth from the end = 0
        rows = []
        for p in self.pids:
            a, w, b = self.first.get(p), warm.get(p), last.get(p)
            if a is None:
                continue
            row: dict[str, Any] = {
                "pid": p,
                "role": self.roles.get(p, "?"),
                "node": self.nodes.get(p, ""),
                "rss_mib": [round(m["rss"] / 1024, 1) if m else None for m in (a, w, b)],
            }
            if b is not None and w is not None:
                row |= {
                    "growth": growth(a["rss"], b["rss"]),
                    "growth_after_warmup": growth(w["rss"], b["rss"]),
                    "mib_per_min_after_warmup": self._slope(p, self.warm_t_s),
                    "mib_per_min_second_half": self._slope(p, self.samples[-1].t_s / 2),
                    "anon_mib": [round(m.get("anon", 0) / 1024, 1) for m in (a, w, b)],
                    "shm_mib": [round(m.get("shm", 0) / 1024, 1) for m in (a, w, b)],
                }
            else:
                row["gone"] = True
            rows.append(row)
        rows.sort(key=lambda r: -r.get("growth_after_warmup", 0.0))
        big = [r for r in rows if "growth" in r and self.first[r["pid"]]["rss"] >= _MIN_RSS_KIB]

        def worst(key: str) -> dict[str, Any]:
            r = max(big, key=lambda r: r[key], default=None)
            if r is None:
                return {}
            return {"growth": r[key], "role": r["role"], "node": r["node"], "pid": r["pid"]}

        def median(key: str) -> float:
            vals = sorted(r[key] for r in big)
            return vals[len(vals) // 2] if vals else 0.0

        s0, sw, s1 = self.samples[0], self._sample_at(self.warm_t_s), self.samples[-1]
        return {
            "processes": len(big),
            "processes_gone": sum("gone" in r for r in rows),
            "warmup_s": self.warm_t_s,
            "rss_growth_max": worst("growth"),
            "rss_growth_median": median("growth"),
            "rss_growth_after_warmup_max": worst("growth_after_warmup"),
            "rss_growth_after_warmup_median": median("growth_after_warmup"),
            "rss_growth_after_warmup_top": [
                {
                    k: r[k]
                    for k in (
                        "role",
                        "node",
                        "growth_after_warmup",
                        "mib_per_min_after_warmup",
                        "mib_per_min_second_half",
                    )
                }
                for r in big[:3]
            ],
            "store_bytes": [s0.store_bytes, sw.store_bytes, s1.store_bytes],
            "store_records": {
                ns: [s0.records.get(ns, 0), sw.records.get(ns, 0), n]
                for ns, n in s1.records.items()
                if n or s0.records.get(ns, 0)
            },
            "process_table": rows,
        }

    def _slope(self, pid: int, since_s: float | None) -> float:
        """Least-squares RSS trend from `since_s` on, MiB per minute (a fill flattens, a
        leak keeps its slope)."""
        since = math.inf if since_s is None else since_s
        pts = [
            (s.t_s, s.rss_kib[pid] / 1024)
            for s in self.samples
            if s.t_s >= since and pid in s.rss_kib
        ]
        if len(pts) < 3:
            return 0.0
        mt = sum(t for t, _ in pts) / len(pts)
        mr = sum(r for _, r in pts) / len(pts)
        var = sum((t - mt) ** 2 for t, _ in pts)
        return round(60 * sum((t - mt) * (r - mr) for t, r in pts) / var, 3) if var else 0.0

    def _sample_at(self, t_s: float | None) -> Sample:
        return next((s for s in self.samples if s.t_s == t_s), self.samples[-1])

    def series(self) -> dict[str, Any]:
        """Every sample: time, each process's RSS (MiB, by pid) and the store's records."""
        return {
            "t_s": [s.t_s for s in self.samples],
            "rss_mib": {
                f"{p} {self.roles.get(p, '?')}": [
                    round(s.rss_kib[p] / 1024, 1) if p in s.rss_kib else None for s in self.samples
                ]
                for p in self.pids
                if p in self.first
            },
            "store_records": {
                ns: [s.records.get(ns, 0) for s in self.samples]
                for ns in self.samples[-1].records
                if any(s.records.get(ns, 0) for s in self.samples)
            },
            "store_bytes": [s.store_bytes for s in self.samples],
        }
