"""Principals: tenants (who infer) and model owners, created by an administrator.

=======  ============  ==================================================
POST     /v1/tenants   admin creates a tenant -> its API token, shown once
GET      /v1/tenants   admin lists tenants
POST     /v1/owners    admin creates a model owner -> its API token
POST     /v1/scrapers  admin creates a metrics scraper -> a token that
                       reads ``/metrics`` and nothing else
DELETE   /v1/tokens/P  admin revokes P's API token (refused by the
                       ingress at once, by workers within a second)
=======  ============  ==================================================

API tokens authenticate callers to the control plane and the inference
endpoint; they are not keys (those a tenant gives only to the attested key
service) and are stored only as SHA-256 (`infaas.auth`).
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from api.deps import Admin, StoreDep, TokensDep
from infaas.edge import problem_schema
from infaas.errors import Conflict, NotFound
from infaas.logs import get_logger
from infaas.types import Identifier, Tenant
from infaas.wire import CreateTenantRequest, Credentials

log = get_logger(__name__)


class CreateScraperRequest(BaseModel):
    """``POST /v1/scrapers`` (admin): ``{"scraper_id": "prometheus"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scraper_id: Identifier


class CreateOwnerRequest(BaseModel):
    """``POST /v1/owners`` (admin): ``{"owner_id": "zoo-owner", "name": "Example zoo"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner_id: Identifier
    name: str = ""


def create_tenants_router() -> APIRouter:
    router = APIRouter(tags=["tenants"], responses={"default": problem_schema()})

    @router.post("/v1/tenants", status_code=201, summary="create a tenant (admin)")
    def create_tenant(
        body: CreateTenantRequest, admin: Admin, store: StoreDep, tokens: TokensDep
    ) -> Credentials:
        """A new tenant and its API token (shown once: only its hash is kept)."""
        if store.get_tenant(body.tenant_id) is not None:
            raise Conflict(f"tenant {body.tenant_id!r} exists", tenant=body.tenant_id)
        token = tokens.issue(body.tenant_id, "tenant")
        store.put_tenant(Tenant(tenant_id=body.tenant_id, name=body.name))
        log.info("admin %s created tenant %s", admin.id, body.tenant_id)
        return Credentials(principal=body.tenant_id, role="tenant", token=token)

    @router.get("/v1/tenants", summary="list tenants (admin)")
    def list_tenants(admin: Admin, store: StoreDep) -> list[Tenant]:
        return store.list_tenants()

    @router.post("/v1/owners", status_code=201, summary="create a model owner (admin)")
    def create_owner(body: CreateOwnerRequest, admin: Admin, tokens: TokensDep) -> Credentials:
        """A new model owner and its API token (shown once)."""
        token = tokens.issue(body.owner_id, "owner")
        log.info("admin %s created owner %s", admin.id, body.owner_id)
        return Credentials(principal=body.owner_id, role="owner", token=token)

    @router.post("/v1/scrapers", status_code=201, summary="create a metrics scraper (admin)")
    def create_scraper(body: CreateScraperRequest, admin: Admin, tokens: TokensDep) -> Credentials:
        """A read-only token for ``/metrics`` (shown once)."""
        token = tokens.issue(body.scraper_id, "metrics")
        log.info("admin %s created metrics scraper %s", admin.id, body.scraper_id)
        return Credentials(principal=body.scraper_id, role="metrics", token=token)

    @router.delete("/v1/tokens/{principal}", status_code=204, summary="revoke an API token (admin)")
    def revoke_token(principal: Identifier, admin: Admin, tokens: TokensDep) -> None:
        """Delete `principal`'s API token: every later call with it is refused."""
        if principal == admin.id:
            raise Conflict("an administrator does not revoke its own token here")
        if not tokens.revoke(principal):
            raise NotFound(f"{principal!r} has no API token", principal=principal)
        log.info("admin %s revoked the API token of %s", admin.id, principal)

    return router
