"""Profiles and variant specs a worker believes: only those an attested worker measured.

The store is untrusted, and a variant's profile is what selection believes
about it: its accuracy decides whether it may serve a caller's floor, its
latency figures where requests go. So the worker that measures a variant
(`enclave_workers.preparation`) MACs what it measured with the model's
*profile key*, which the key service releases only to attested workers
(``KeyRequest(kind="profile")``), and every worker uses a (spec, profile) pair
only when that MAC verifies.

The MAC is HMAC-SHA256 over the canonical JSON (`infaas.envelope.canonical_json`)
of ``{"v": 1, "spec": <the VariantSpec>, "profile": <the Profile without its
mac>}``. The spec carries variant id, model id, task, architecture, precision,
backend, quantization, pool and largest batch; the profile carries accuracy,
latency figures, the worker's measurement and the SHA-256 of the sealed
artifact it measured. So an edited accuracy, a profile copied onto another
variant, a spec moved to another pool or precision, or another artifact under
the variant's name are all refused. What it does not stop: restoring an older
(spec, profile, artifact) triple of the same variant that a worker measured
before (a rollback to a state that was genuine).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from infaas.envelope import canonical_json
from infaas.errors import InfaasError, UnverifiedProfile
from infaas.types import Profile, VariantSpec

MAC_VERSION = 1

ProfileKeys = Callable[[str], bytes]
"""model id -> the model's profile key (blocking; raises `InfaasError` when not released)."""


def _mac(key: bytes, spec: VariantSpec, profile: Profile) -> str:
    body = {
        "v": MAC_VERSION,
        "spec": spec.model_dump(mode="json"),
        "profile": profile.model_dump(mode="json", exclude={"mac"}),
    }
    return hmac.new(key, canonical_json(body), hashlib.sha256).hexdigest()


def artifact_digest(sealed: bytes | bytearray) -> str:
    """SHA-256 (hex) of a sealed variant artifact, as stored."""
    return hashlib.sha256(sealed).hexdigest()


def authenticate_profile(
    key: bytes,
    spec: VariantSpec,
    profile: Profile,
    *,
    sealed_artifact: bytes | bytearray,
    measurement: bytes,
) -> Profile:
    """`profile` as the worker that measured it stores it: bound to `spec`, the sealed
    artifact it measured and this worker's measurement, with its MAC."""
    if profile.variant_id != spec.variant_id or profile.pool != spec.pool:
        raise ValueError(f"profile of {profile.variant_id} given for {spec.variant_id}")
    bound = profile.model_copy(
        update={
            "artifact_sha256": artifact_digest(sealed_artifact),
            "measured_by": measurement.hex(),
            "mac": None,
        }
    )
    return bound.model_copy(update={"mac": _mac(key, spec, bound)})


def verify_profile(key: bytes, spec: VariantSpec, profile: Profile) -> None:
    """Raise `UnverifiedProfile` unless an attested worker measured this (spec, profile)."""
    vid = spec.variant_id
    if profile.mac is None or profile.artifact_sha256 is None:
        raise UnverifiedProfile(
            f"the profile of {vid} carries no MAC: no attested worker measured it",
            variant_id=vid,
        )
    if not hmac.compare_digest(profile.mac, _mac(key, spec, profile)):
        raise UnverifiedProfile(
            f"the profile or spec of {vid} does not verify under its model's profile key "
            "(edited, forged or copied from another variant)",
            variant_id=vid,
        )


@dataclass(frozen=True)
class Verified:
    """The (spec, profile) pairs a worker may use, and why the others were refused."""

    variants: list[VariantSpec] = field(default_factory=list)
    profiles: list[Profile] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """variant id -> why its profile or spec is not used."""


def verified(
    variants: Iterable[VariantSpec], profiles: Iterable[Profile], keys: ProfileKeys
) -> Verified:
    """Keep the variants whose profile verifies under their model's profile key.

    A variant without a profile is simply not a candidate yet (preparation
    stores the spec first); one whose profile does not verify, or whose
    model's profile key is not released, is refused with the reason.
    """
    by_variant = {p.variant_id: p for p in profiles}
    out = Verified()
    key_of: dict[str, bytes | InfaasError] = {}
    for spec in variants:
        profile = by_variant.get(spec.variant_id)
        if profile is None:
            continue
        model = spec.model_id
        if model not in key_of:
            try:
                key_of[model] = keys(model)
            except InfaasError as e:
                key_of[model] = e
        key = key_of[model]
        try:
            if isinstance(key, InfaasError):
                raise UnverifiedProfile(
                    f"no profile key for model {model} to verify {spec.variant_id} with "
                    f"({key.code})",
                    variant_id=spec.variant_id,
                )
            verify_profile(key, spec, profile)
        except UnverifiedProfile as e:
            out.refused[spec.variant_id] = e.message
            continue
        out.variants.append(spec)
        out.profiles.append(profile)
    return out
