"""Model preparation in a child process: a bad model fails its own job, the worker goes on.

Converting, quantizing and profiling an owner's graph runs the owner's
untrusted graph through onnxruntime and OpenVINO. A decompression bomb (a huge
``ConstantOfShape``/``Expand`` output, folded at session creation) or a
``Loop`` with a huge trip count would otherwise take the serving replica's
memory or time. So the worker runs each preparation in a child process::

    worker (parent)                              child (python -I, own session)
    ---------------                              -----------------------------
    stdin  <- request JSON, weights, .npz  --->  prepare_in_child(...)
    stdout <- progress / blob / variant /  <---  emits as it goes
              done | failed
    stderr <- drained and dropped (runtime warnings name the model's tensors)
    watchdog: resident memory of the child's whole process tree and wall time,
              polled; over a limit, SIGKILL to the tree and a typed failure

Plaintext crosses only through the pipes, never a file. The wire is frames
(8-byte big-endian length, payload) of JSON or raw bytes, and nothing from
the child is unpickled: a child subverted by the graph it parses can send
wrong numbers (checked by the caller) but cannot run code in the worker.

The memory limit is on resident memory, not ``RLIMIT_AS``: onnxruntime and
OpenVINO reserve address space far beyond what they touch (thread stacks,
allocator arenas, growing with the host's cores). Measured here with one
thread after generating and running every variant: peak virtual size 650 MiB
against 216 MiB resident for the digits MLP, 1895 MiB against 1140 MiB for the
224x224 ResNet-18; an address-space limit would have to be tuned per host and
per thread count, a resident one is what the model actually takes.
A bomb touches the pages it fills, and a poll every few tens of milliseconds
catches it before it takes more than a few hundred MiB beyond the limit.

The time limit counts from the moment the child has imported the runtimes
and says it is ready, before it reads the model: the imports take seconds on a
busy host whatever the model, and a child that does not start within
`STARTUP_LIMIT_S` fails as the worker's problem, not the owner's.

One preparation runs at a time per worker (`Sandbox`'s lock): profiling
measures latency, and two children sharing the replica's cores would distort
each other's timings.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from infaas.errors import InfaasError, InvalidModel, PreparationLimitExceeded, error_from_code
from infaas.logs import get_logger

log = get_logger(__name__)

_ROOT = Path(__file__).resolve().parent.parent
# The child runs this tree's code (the code the worker's measurement covers), isolated
# from PYTHON* variables and the user's site directory.
_CHILD = (
    f"import sys; sys.path.insert(0, {str(_ROOT)!r}); "
    "import enclave_workers.sandbox as s; s.child_main()"
)
_LEN = struct.Struct(">Q")
MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGES = 1000  # an honest preparation sends a few per variant
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TREE_REFRESH_S = 0.25
STARTUP_LIMIT_S = 300.0

Emit = Callable[[dict[str, Any], bytes | bytearray | None], None]
OnMessage = Callable[[dict[str, Any], bytearray | None], None]


@dataclass(frozen=True)
class SandboxLimits:
    """What one preparation child may use: resident memory (whole tree) and wall time."""

    memory_limit_bytes: int
    time_limit_s: float
    poll_interval_s: float = 0.02


@dataclass(frozen=True)
class SandboxRun:
    """How a finished child ran: its tree's peak resident memory (as polled) and wall time."""

    peak_rss_bytes: int
    wall_s: float


# ------------------------------------------------------------------------------ framing


def write_frame(out: IO[bytes], payload: bytes | bytearray | memoryview) -> None:
    out.write(_LEN.pack(len(payload)))
    out.write(payload)


def _read_exact(src: IO[bytes], n: int) -> bytearray | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = src.readinto(view[got:])  # type: ignore[attr-defined]
        if not k:
            return None
        got += k
    return buf


def read_frame(src: IO[bytes], limit: int) -> bytearray | None:
    """The next frame (None at end of stream); ValueError if it announces more than `limit`."""
    head = _read_exact(src, _LEN.size)
    if head is None:
        return None
    (n,) = _LEN.unpack(head)
    if n > limit:
        raise ValueError(f"frame of {n} bytes over the limit of {limit}")
    body = _read_exact(src, n)
    if body is None:
        raise ValueError("stream ended inside a frame")
    return body


# ------------------------------------------------------------------------------ watchdog


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and every descendant of it (Linux /proc)."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.append(p)
        stack.extend(_children(p))
    return seen


class _Watchdog(threading.Thread):
    """Polls the child tree's resident memory and the wall time; kills the tree over a limit."""

    def __init__(self, proc: subprocess.Popen[bytes], limits: SandboxLimits) -> None:
        super().__init__(name="infaas-preparation-watchdog", daemon=True)
        self.proc = proc
        self.limits = limits
        self.started = time.monotonic()
        self.ready = False
        self.peak = 0
        self.exceeded: InfaasError | None = None
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    def child_ready(self) -> None:
        """The child has started: the model's own time limit runs from now."""
        self.started, self.ready = time.monotonic(), True

    def run(self) -> None:
        tree = [self.proc.pid]
        refreshed = 0.0
        lim = self.limits
        while not self._halt.is_set() and self.proc.poll() is None:
            now = time.monotonic()
            if now - refreshed >= _TREE_REFRESH_S:
                tree, refreshed = process_tree(self.proc.pid), now
            rss = sum(_rss(p) for p in tree)
            self.peak = max(self.peak, rss)
            if rss > lim.memory_limit_bytes:
                self.exceeded = PreparationLimitExceeded(
                    "preparation exceeded the memory limit of "
                    f"{lim.memory_limit_bytes // 2**20} MiB",
                    limit="memory",
                    limit_bytes=lim.memory_limit_bytes,
                )
            elif self.ready and now - self.started > lim.time_limit_s:
                self.exceeded = PreparationLimitExceeded(
                    f"preparation exceeded the time limit of {lim.time_limit_s:g} s",
                    limit="time",
                    limit_s=lim.time_limit_s,
                )
            elif not self.ready and now - self.started > STARTUP_LIMIT_S:
                self.exceeded = InfaasError(
                    f"the preparation process did not start within {STARTUP_LIMIT_S:g} s"
                )
            if self.exceeded is not None:
                kill_tree(self.proc, process_tree(self.proc.pid))
                return
            self._halt.wait(lim.poll_interval_s)


def kill_tree(proc: subprocess.Popen[bytes], tree: Sequence[int]) -> None:
    """SIGKILL the child's process group and every descendant found (they may have left it)."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ parent


class Sandbox:
    """Runs preparations in child processes under `limits`, one at a time."""

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits
        self._turn = threading.Lock()

    @contextlib.contextmanager
    def turn(self, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """This worker's one preparation slot; `on_wait` runs first if it is taken."""
        if not self._turn.acquire(blocking=False):
            if on_wait is not None:
                on_wait()
            self._turn.acquire()
        try:
            yield
        finally:
            self._turn.release()

    def run(
        self,
        request: dict[str, Any],
        payloads: Sequence[bytes | bytearray],
        on_message: OnMessage,
        *,
        max_payload_bytes: int,
        on_wait: Callable[[], None] | None = None,
    ) -> SandboxRun:
        """Run `prepare_in_child(request, payloads)` in a child; its messages go to `on_message`.

        Raises the child's own typed error when it reports one,
        `PreparationLimitExceeded` when the watchdog stopped it, `InvalidModel`
        when it died otherwise, and `InfaasError` when its reply is malformed.
        """
        with self.turn(on_wait):
            return self._run(request, payloads, on_message, max_payload_bytes)

    def _run(
        self,
        request: dict[str, Any],
        payloads: Sequence[bytes | bytearray],
        on_message: OnMessage,
        max_payload_bytes: int,
    ) -> SandboxRun:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: one signal reaches its whole tree
            close_fds=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        watchdog = _Watchdog(proc, self.limits)
        watchdog.start()
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        stderr_bytes = [0]

        def feed() -> None:
            try:
                write_frame(stdin, json.dumps(request).encode())
                write_frame(stdin, _LEN.pack(len(payloads)))
                for p in payloads:
                    write_frame(stdin, p)
                stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass  # the child died or was killed: its exit says why

        def drain() -> None:
            # never logged: runtime warnings name the owner's tensors and nodes
            while chunk := stderr.read(65536):
                stderr_bytes[0] += len(chunk)

        threads = [
            threading.Thread(target=feed, name="infaas-preparation-feed", daemon=True),
            threading.Thread(target=drain, name="infaas-preparation-stderr", daemon=True),
        ]
        for t in threads:
            t.start()
        outcome: InfaasError | None = None
        finished = False
        try:
            for _ in range(MAX_MESSAGES):
                frame = read_frame(stdout, MAX_MESSAGE_BYTES)
                if frame is None:
                    break
                msg = json.loads(bytes(frame))
                if not isinstance(msg, dict) or not isinstance(msg.get("kind"), str):
                    raise ValueError("a message is not an object with a kind")
                if msg["kind"] == "ready":
                    watchdog.child_ready()
                    continue
                if msg["kind"] == "done":
                    finished = True
                    break
                if msg["kind"] == "failed":
                    outcome = error_from_code(
                        str(msg.get("code", "internal_error")), str(msg.get("message", ""))[:2000]
                    )
                    break
                payload = read_frame(stdout, max_payload_bytes) if msg.get("payload") else None
                if msg.get("payload") and payload is None:
                    raise ValueError("stream ended before a payload")
                on_message(msg, payload)
            else:
                raise ValueError(f"more than {MAX_MESSAGES} messages")
        except (ValueError, UnicodeDecodeError) as e:
            kill_tree(proc, process_tree(proc.pid))
            outcome = InfaasError(f"the preparation process sent a malformed reply ({e})")
        except BaseException:
            kill_tree(proc, process_tree(proc.pid))
            raise
        finally:
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                kill_tree(proc, process_tree(proc.pid))
                code = proc.wait()
            watchdog.stop()
            watchdog.join()
            for t in threads:
                t.join(timeout=5)
            for f in (stdin, stdout, stderr):
                with contextlib.suppress(OSError):
                    f.close()
        run = SandboxRun(peak_rss_bytes=watchdog.peak, wall_s=time.monotonic() - t0)
        log.debug(
            "preparation child exited %s after %.1f s, peak RSS %d MiB, %d bytes on stderr",
            code,
            run.wall_s,
            run.peak_rss_bytes // 2**20,
            stderr_bytes[0],
        )
        if watchdog.exceeded is not None and not finished:
            raise watchdog.exceeded
        if outcome is not None:
            raise outcome
        if not finished:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise InvalidModel(f"the preparation process ended unexpectedly ({how})")
        return run


# ------------------------------------------------------------------------------ child


# Where the child's `tempfile` would put files: a directory that does not exist, so a
# library that would spill the model to a temporary file fails the job instead.
NO_TEMP_DIR = "/nonexistent/infaas-preparation-writes-no-files"


def _harden_child() -> None:
    """No core file of plaintext on disk, no temporary files; the OOM killer picks it first."""
    import resource
    import tempfile

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    tempfile.tempdir = NO_TEMP_DIR
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def child_main() -> None:
    """Entry of the child: read the request, prepare, reply on the original stdout."""
    _harden_child()
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints of the runtimes go to stderr, never into the reply
    sys.stdout = sys.stderr
    src = sys.stdin.buffer
    lock = threading.Lock()

    def emit(msg: dict[str, Any], payload: bytes | bytearray | None = None) -> None:
        with lock:
            write_frame(out, json.dumps({**msg, "payload": payload is not None}).encode())
            if payload is not None:
                write_frame(out, payload)
            out.flush()

    try:
        # the imports first (seconds on a busy host): the time limit starts after them
        from enclave_workers.preparation import prepare_in_child
        from variants import _telemetry  # the runtimes only through their telemetry switch

        _telemetry.onnxruntime()
        _telemetry.openvino()
        emit({"kind": "ready"})
        request = read_frame(src, 1 << 62)
        count = read_frame(src, _LEN.size)
        if request is None or count is None:
            return
        payloads: list[bytearray] = []
        for _ in range(_LEN.unpack(count)[0]):
            p = read_frame(src, 1 << 62)
            if p is None:
                return
            payloads.append(p)

        try:
            prepare_in_child(json.loads(bytes(request)), payloads, emit)
        except InfaasError as e:
            emit({"kind": "failed", "code": e.code, "message": e.message})
        except Exception as e:  # a runtime's own exception types; never its text (it may name data)
            msg = f"internal error while preparing the model ({type(e).__name__})"
            emit({"kind": "failed", "code": "internal_error", "message": msg})
        else:
            emit({"kind": "done"})
    except BrokenPipeError:
        pass  # the worker is gone: nobody to answer
    finally:
        with contextlib.suppress(OSError):
            out.close()
