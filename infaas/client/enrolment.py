"""Joining a deployment: the administrator's enrolment file, and the party's own login.

The administrator (``infaas tenant create`` / ``infaas owner create``) creates the
party's API token on the control plane and signs a one-time enrolment
(`infaas.keyservice.enrolment`); both go, with the service's URL and trust bundle,
into an *enrolment file* (JSON, 0600) handed to the party::

    {"principal": "acme", "role": "tenant", "base_url": "http://…:8000",
     "api_token": "acme.…", "enrolment": "infaas-enrolment-v1.….…",
     "keyservice": {<trust bundle>}}

It holds no key of the party: the party runs ``infaas login FILE`` on its own machine,
which attests the key service (against the trust bundle, which the party should check
against the one the operator publishes), makes the key-service token and (a tenant)
the request key there, registers with the enrolment (usable once) and writes the
party's credentials file. The API token gates metadata and work only (the control
plane's tokens never open keys or plaintext); the administrator issued it and can
revoke it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from infaas.client.client import Client
from infaas.client.credentials import KeyServiceTrust, read_credentials, write_credentials
from infaas.errors import InvalidInput
from infaas.keyservice.enrolment import issue_enrolment

PartyRole = Literal["tenant", "owner"]


def issue_enrolment_file(
    admin: Client, enrolment_key: Ed25519PrivateKey, principal: str, role: PartyRole, name: str = ""
) -> dict[str, Any]:
    """As the administrator: create `principal` on the control plane (its API token) and
    sign its one-time enrolment; what the enrolment file holds."""
    creds = (admin.create_tenant if role == "tenant" else admin.create_owner)(principal, name)
    return {
        "principal": principal,
        "role": role,
        "base_url": admin.base_url,
        "api_token": creds.token,
        "enrolment": issue_enrolment(enrolment_key, principal, role),
        "keyservice": admin.keyservice.to_json() if admin.keyservice else None,
    }


def write_enrolment_file(path: str | os.PathLike[str], data: Mapping[str, Any]) -> Path:
    return write_credentials(path, data)


def read_enrolment_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    data = read_credentials(path)
    if "enrolment" not in data or data.get("role") not in ("tenant", "owner"):
        raise InvalidInput(f"{path} is not an infaas enrolment file")
    return data


def login(enrolment: Mapping[str, Any], *, base_url: str | None = None) -> Client:
    """As the party, on its own machine: attest the key service, make the key-service
    token (and a tenant's request key) here and register with the one-time enrolment.
    The client returned holds the new credentials (`save_credentials` writes them)."""
    ks = enrolment.get("keyservice")
    client = Client(
        base_url or str(enrolment["base_url"]),
        api_token=enrolment.get("api_token"),
        principal=str(enrolment["principal"]),
        role=enrolment["role"],
        keyservice=KeyServiceTrust.from_json(ks) if ks else None,
    )
    try:
        client.attest_keyservice()
        if enrolment["role"] == "tenant":
            client.register_tenant(str(enrolment["enrolment"]))
        else:
            client.register_owner(str(enrolment["enrolment"]))
    except BaseException:
        client.close()
        raise
    return client
