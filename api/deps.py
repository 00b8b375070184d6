"""What routes depend on: the injected control-plane parts and the caller's principal.

`create_app` puts one `ControlPlane` on `app.state`; routes reach it and its
parts only through the `Annotated[..., Depends(...)]` aliases below, so a test
builds an app with its own store and fakes without touching globals.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from infaas.artifacts import ArtifactStore
from infaas.auth import Principal, Role, TokenRegistry
from infaas.edge import BEARER, optional_bearer_token
from infaas.settings import Settings
from infaas.store import MetadataStore

PrepareFn = Callable[[str], Awaitable[Any] | Any]
"""Start variant generation + profiling of a model (the worker's `prepare_model`)."""

WorkerStatusFn = Callable[[], Awaitable[Mapping[str, Any]] | Mapping[str, Any]]
"""What the worker deployment says about itself (the worker's `status`)."""


@dataclass
class ControlPlane:
    """Everything the control-plane routes use, injected by `create_app`."""

    settings: Settings
    store: MetadataStore
    artifacts: ArtifactStore
    tokens: TokenRegistry
    prepare: PrepareFn | None
    worker_status: WorkerStatusFn | None
    max_model_bytes: int
    background: set[asyncio.Task[None]] = field(default_factory=set)


def get_plane(request: Request) -> ControlPlane:
    plane: ControlPlane = request.app.state.plane
    return plane


Plane = Annotated[ControlPlane, Depends(get_plane)]


def get_settings_dep(plane: Plane) -> Settings:
    return plane.settings


def get_store(plane: Plane) -> MetadataStore:
    return plane.store


def get_artifacts(plane: Plane) -> ArtifactStore:
    return plane.artifacts


def get_tokens(plane: Plane) -> TokenRegistry:
    return plane.tokens


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[MetadataStore, Depends(get_store)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
TokensDep = Annotated[TokenRegistry, Depends(get_tokens)]


def request_token(
    request: Request, _documented: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
) -> str | None:
    """The request's bearer token, if it sent one (parsed by the shared HTTP edge: a
    malformed header is a 401 problem, not the framework's own answer)."""
    return optional_bearer_token(request.headers.get("authorization"))


Token = Annotated[str | None, Depends(request_token)]


def _principal(*roles: Role) -> Callable[[TokenRegistry, str | None], Principal]:
    def dep(tokens: TokensDep, token: Token) -> Principal:
        return tokens.verify(token, *roles)

    return dep


AnyPrincipal = Annotated[Principal, Depends(_principal("tenant", "owner"))]
"""A tenant's, owner's or admin's token (a scraper's read-only ``metrics`` token is not)."""
Owner = Annotated[Principal, Depends(_principal("owner"))]
"""A model owner's token (admin passes too)."""
Admin = Annotated[Principal, Depends(_principal("admin"))]
"""An administrator's token."""
