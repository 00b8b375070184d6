"""Screenshots of every dashboard page from a real `infaas serve --small`, for the README.

    python scripts/screenshots.py                       # starts `infaas serve --small` itself
    python scripts/screenshots.py --url http://127.0.0.1:8000 --data-dir data   # a running one

It sends a little traffic as two tenants (the demo tenant and a second one it
creates), tight and loose SLOs, a few infeasible ones, logs in with the
administrator's token from ``DATA_DIR/credentials/admin.json`` and saves
``docs/dashboard-<page>.png`` (1280x800, 256 colours) with headless Chromium
(Debian's ``/usr/bin/chromium``; Playwright drives it, no browser download).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from infaas import Client  # noqa: E402
from infaas.errors import Conflict, InfaasError  # noqa: E402
from infaas.keyservice.enrolment import issue_enrolment, load_enrolment_key  # noqa: E402
from tests.e2e.server import CHROMIUM_ARGS, Served, start_serve, stop_serve  # noqa: E402

PAGES = ("overview", "models", "traffic", "autoscaler", "tenants")


def second_tenant(url: str, data_dir: Path) -> Client:
    """A tenant "acme" granted the digits models (created once)."""
    path = data_dir / "credentials" / "acme.json"
    if path.exists():
        return Client.from_credentials(path, base_url=url)
    with Client.from_credentials(data_dir / "credentials" / "admin.json", base_url=url) as admin:
        try:
            creds = admin.create_tenant("acme", "Acme Corp")
        except Conflict:
            raise SystemExit("tenant acme exists without saved credentials") from None
        acme = admin.with_credentials(creds)
    acme.attest_keyservice()
    acme.register_tenant(issue_enrolment(load_enrolment_key(data_dir), "acme", "tenant"))
    acme.accept("zoo-owner")
    acme.save_credentials(path)
    with Client.from_credentials(
        data_dir / "credentials" / "zoo-owner.json", base_url=url
    ) as owner:
        owner.attest_keyservice()
        for m in owner.models(task="digits"):
            owner.grant(m.model.model_id, "acme")
    return acme


def traffic(url: str, data_dir: Path, seconds: float, stop: threading.Event) -> None:
    """Requests as two tenants, with SLOs tight and loose, and a few infeasible ones."""
    demo = Client.from_credentials(data_dir / "credentials" / "demo.json", base_url=url)
    acme = second_tenant(url, data_dir)
    rng = np.random.default_rng(0)
    digits = rng.normal(size=(4, 64)).astype(np.float32)
    images = rng.normal(size=(1, 3, 32, 32)).astype(np.float32)
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline and not stop.is_set():
        i += 1
        calls = [
            (demo, "digits", digits[: 1 + i % 4], 20.0 if i % 3 else 2.0, 0.9),
            (acme, "digits", digits[:1], 50.0, 0.95),
            (demo, "images", images, 500.0 if i % 2 else 50.0, 0.6),
        ]
        if i % 10 == 0:
            calls.append((demo, "digits", digits[:1], 50.0, 0.9999))  # infeasible
        for client, task, x, latency_ms, acc in calls:
            with contextlib.suppress(InfaasError):  # infeasible ones are part of the show
                client.infer(task=task, inputs=x, latency_ms=latency_ms, min_accuracy=acc)
        time.sleep(0.05 + 0.15 * (1 + np.sin(i / 15)))  # a slow wave, for the charts
    demo.close()
    acme.close()


def shoot(url: str, token: str, out: Path, chromium: str) -> list[Path]:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{url}/dashboard/login")
        page.fill("#token", token)
        page.click("button[type=submit]")
        page.wait_for_url("**/dashboard/")
        for name in PAGES:
            page.goto(f"{url}/dashboard/{'' if name == 'overview' else name}")
            deadline = time.monotonic() + 30
            while page.evaluate("Number(document.body.dataset.updates || 0)") < 2:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"page {name} did not update")
                time.sleep(0.25)
            time.sleep(1.0)  # let the charts settle
            path = out / f"dashboard-{name}.png"
            page.screenshot(path=str(path))
            Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
            saved.append(path)
        browser.close()
    return saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", help="a running infaas (default: start `infaas serve --small`)")
    ap.add_argument("--data-dir", type=Path, help="its data dir (credentials/admin.json)")
    ap.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNGs go")
    ap.add_argument("--traffic-s", type=float, default=75.0, help="seconds of traffic first")
    ap.add_argument("--autoscaler", default="infaas", help="serve's --autoscaler when started")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = ap.parse_args()
    if bool(args.url) != bool(args.data_dir):
        ap.error("--url and --data-dir go together")
    root = Path(tempfile.mkdtemp(prefix="infaas-shots-"))
    served: Served | None = None
    try:
        if args.url:
            url, data_dir = args.url.rstrip("/"), args.data_dir
        else:
            served = start_serve(root, "--small", "--autoscaler", args.autoscaler)
            url, data_dir = served.url, served.data_dir
            print(f"infaas serve --small is up at {url} (log: {root / 'serve.log'})")
        stop = threading.Event()
        sender = threading.Thread(target=traffic, args=(url, data_dir, args.traffic_s, stop))
        sender.start()
        time.sleep(args.traffic_s * 0.8)  # screenshots while traffic still flows
        token = json.loads((data_dir / "credentials" / "admin.json").read_text())["api_token"]
        saved = shoot(url, token, args.out, args.chromium)
        stop.set()
        sender.join()
        for path in saved:
            print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
                  f"{path.stat().st_size // 1024} KiB")  # fmt: skip
    finally:
        if served is not None:
            stop_serve(served)
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
