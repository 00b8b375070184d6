"""First start of `infaas serve`: become the zoo's owner and a demo tenant, through the Client.

Everything goes through the public API and the attested key service exactly
as a remote owner and tenant would: an administrator token (issued here, on the
host, once), a ``zoo-owner`` that attests the key service, registers each zoo
model sealed under its own data key and grants it to ``demo``, and a ``demo``
tenant with its own request key that accepts the zoo owner (a grant alone sends
no tenant's data to a model: the tenant consents too). Each of the two joins as a
remote party would, with an enrolment the administrator signed (`infaas.client.enrolment`),
but on the operator's machine: so their credentials, the demo tenant's request key
included, land in the operator's ``DATA_DIR/credentials/{admin,zoo-owner,demo}.json``
(mode 0600). Tenants and owners created with ``infaas tenant create`` are not like that:
they log in on their own machines. Each step is
skipped when its result exists, so an interrupted first start resumes.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infaas.auth import TokenRegistry
from infaas.client import Client, KeyServiceTrust
from infaas.client.enrolment import issue_enrolment_file, login
from infaas.errors import ModelNotFound
from infaas.keyservice.enrolment import load_enrolment_key
from infaas.logs import get_logger
from infaas.settings import Settings
from infaas.store import open_store
from infaas.wire import JobStatus
from infaas.zoo import build_zoo, load_manifest, load_model_bytes, load_validation

log = get_logger(__name__)

ADMIN = "admin"
ZOO_OWNER = "zoo-owner"
DEMO = "demo"


@dataclass(frozen=True)
class BootstrapResult:
    credentials: dict[str, Path]
    models: list[str]


def say_now(message: str) -> None:
    """One line of progress, flushed: output to a log file shows it at once."""
    print(message, flush=True)


def credentials_dir(settings: Settings) -> Path:
    return settings.data_dir / "credentials"


def keyservice_trust(settings: Settings) -> KeyServiceTrust:
    """What clients of this deployment expect of its key service: its trust bundle."""
    from enclave_workers.measurement import deployment_trust

    return deployment_trust(settings)


def _reload(path: Path, base_url: str) -> Client:
    """Credentials from an earlier start, rewritten if the service moved (another port)."""
    client = Client.from_credentials(path)
    if client.base_url != base_url.rstrip("/"):
        client.close()
        client = Client.from_credentials(path, base_url=base_url)
        client.save_credentials(path)
    return client


def _admin(settings: Settings, base_url: str, trust: KeyServiceTrust) -> Client:
    path = credentials_dir(settings) / f"{ADMIN}.json"
    if path.exists():
        return _reload(path, base_url)
    with open_store(settings.resolved_store_url) as store:
        token = TokenRegistry(store).issue(ADMIN, "admin", replace=True)
    admin = Client(base_url, api_token=token, principal=ADMIN, role="admin", keyservice=trust)
    admin.save_credentials(path)
    return admin


def _owner(settings: Settings, admin: Client) -> Client:
    path = credentials_dir(settings) / f"{ZOO_OWNER}.json"
    if path.exists():
        return _reload(path, admin.base_url)
    key = load_enrolment_key(settings.data_dir)
    owner = login(issue_enrolment_file(admin, key, ZOO_OWNER, "owner", "example model zoo"))
    owner.save_credentials(path)
    return owner


def _tenant(settings: Settings, admin: Client, tenant: str) -> Client:
    path = credentials_dir(settings) / f"{tenant}.json"
    if path.exists():
        return _reload(path, admin.base_url)
    key = load_enrolment_key(settings.data_dir)
    client = login(issue_enrolment_file(admin, key, tenant, "tenant", f"{tenant} tenant"))
    client.save_credentials(path)
    return client


def bootstrap_admin(settings: Settings, base_url: str) -> Path:
    """Only the administrator's credentials (``serve --no-zoo``); their path."""
    _admin(settings, base_url, keyservice_trust(settings)).close()
    return credentials_dir(settings) / f"{ADMIN}.json"


def bootstrap(
    settings: Settings,
    base_url: str,
    *,
    small: bool = False,
    say: Callable[[str], None] = say_now,
    progress: bool = True,
    timeout_s: float = 3600.0,
) -> BootstrapResult:
    """Build the zoo if missing, register it as the zoo owner, set up the demo tenant."""
    trust = keyservice_trust(settings)
    admin = _admin(settings, base_url, trust)
    try:
        manifest = load_manifest(settings.zoo_dir)
        if any(m.small != small for m in manifest.models):
            raise FileNotFoundError
    except (FileNotFoundError, ValueError):
        say(f"building the example zoo in {settings.zoo_dir}" + (" (small)" if small else ""))
        build_zoo(settings.zoo_dir, small=small)
        manifest = load_manifest(settings.zoo_dir)
    owner = _owner(settings, admin)
    demo = _tenant(settings, admin, DEMO)
    demo.accept(ZOO_OWNER)
    registered: list[str] = []
    for entry in manifest.models:
        try:
            owner.model(entry.model_id)
        except ModelNotFound:
            x, y = load_validation(settings.zoo_dir, entry)
            owner.upload_model(
                entry.model_id,
                entry.task,
                entry.architecture,
                load_model_bytes(settings.zoo_dir, entry),
                x,
                y,
                num_classes=entry.num_classes,
                input_spec=entry.input,
                declared_accuracy=entry.declared_accuracy,
            )
            say(f"registered {entry.model_id} (sealed) for task {entry.task}")
        owner.grant(entry.model_id, DEMO)
        registered.append(entry.model_id)
    wait_all(owner, registered, progress=progress, timeout_s=timeout_s, say=say)
    creds = {name: credentials_dir(settings) / f"{name}.json" for name in (ADMIN, ZOO_OWNER, DEMO)}
    for client in (admin, owner, demo):
        client.close()
    return BootstrapResult(credentials=creds, models=registered)


def wait_all(
    owner: Client,
    model_ids: list[str],
    *,
    progress: bool = True,
    timeout_s: float = 3600.0,
    say: Callable[[str], None] = say_now,
    interactive: bool | None = None,
) -> dict[str, JobStatus]:
    """Wait until every model's variants are generated and profiled.

    On a terminal, one progress bar per model; otherwise (output to a log file)
    a plain line whenever a model's job moves, so the log shows progress too.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if interactive is None:
        interactive = sys.stdout.isatty()
    deadline = time.monotonic() + timeout_s
    jobs: dict[str, JobStatus] = {}
    said: dict[str, tuple[str, int, int]] = {}
    with Progress(
        TextColumn("[bold]{task.fields[model]:<22}[/bold]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} {task.description}"),
        TimeElapsedColumn(),
        disable=not (progress and interactive),
    ) as bar:
        rows = {m: bar.add_task("queued", total=None, model=m) for m in model_ids}
        while True:
            for m in model_ids:
                job = jobs[m] = owner.job(m)
                bar.update(
                    rows[m],
                    description=f"{job.state} {job.message}".strip()[:50],
                    completed=job.done,
                    total=job.total or None,
                )
                now = (job.state, job.done, job.total)
                if progress and not interactive and said.get(m) != now:
                    said[m] = now
                    say(f"{m}: {job.state} {job.done}/{job.total} {job.message}".rstrip())
            failed = [j for j in jobs.values() if j.state == "failed"]
            if failed:
                raise RuntimeError("; ".join(f"{j.model_id} failed: {j.message}" for j in failed))
            if all(j.state == "ready" for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not ready after {timeout_s:.0f} s")
            time.sleep(0.5)
