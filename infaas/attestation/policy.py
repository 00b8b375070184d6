"""Attestation policy: which verified evidence a relying party accepts.

`AttestationPolicy.evaluate` is a pure function of (policy, verified quote,
expected report data, now, nonce issue time) returning a `Verdict` with one
`CheckResult` per rule; `check` does the same and raises `AttestationFailed`
naming the first broken rule. Loaded from YAML (`configs/attestation-*.yaml`).
"""

from __future__ import annotations

import hmac
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from infaas.attestation.evidence import CheckResult
from infaas.attestation.quote import TdReport
from infaas.attestation.snp import PINNED_ARKS, SnpTcb, VerifiedSnpReport
from infaas.attestation.spdm import NVIDIA_DEVICE_IDENTITY_ROOT_SHA256, VerifiedGpuReport
from infaas.attestation.verify import VerifiedQuote, load_roots
from infaas.errors import AttestationFailed

HexDigest = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$|^[0-9a-fA-F]{96}$")]
Hex48 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{96}$")]
Hex8 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{16}$")]

TD_ATTRIBUTES_DEBUG = 1 << 0
TD_ATTRIBUTES_SEPT_VE_DISABLE = 1 << 28


def _lower_all(v: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(x.lower() for x in v)


class TdxPolicy(BaseModel):
    """What a TD must look like beyond MRTD (`allowed_measurements`); empty lists: any value.

    MRTD covers only the initial TD image (firmware); RTMR0-3 extend it to the
    firmware configuration, kernel + command line, and the application, and
    MRCONFIGID / MROWNER / MROWNERCONFIG are the host-supplied identities set at
    TD creation. Without them any kernel or workload on the same firmware passes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mr_config_id: tuple[Hex48, ...] = Field((), description="accepted MRCONFIGID values")
    mr_owner: tuple[Hex48, ...] = Field((), description="accepted MROWNER values")
    mr_owner_config: tuple[Hex48, ...] = Field((), description="accepted MROWNERCONFIG values")
    rtmr0: tuple[Hex48, ...] = Field((), description="accepted RTMR0 (firmware config) values")
    rtmr1: tuple[Hex48, ...] = Field((), description="accepted RTMR1 (kernel) values")
    rtmr2: tuple[Hex48, ...] = Field((), description="accepted RTMR2 (kernel cmdline, initrd)")
    rtmr3: tuple[Hex48, ...] = Field((), description="accepted RTMR3 (application) values")
    mr_servicetd: tuple[Hex48, ...] = Field((), description="accepted MRSERVICETD (TDX 1.5)")
    td_attributes: Hex8 | None = Field(
        None, description="expected TDATTRIBUTES (8 bytes hex, as in the quote) under the mask"
    )
    td_attributes_mask: Hex8 = Field("ff" * 8, description="bits of TDATTRIBUTES compared")
    require_sept_ve_disable: bool = Field(
        True,
        description="TDATTRIBUTES.SEPT_VE_DISABLE must be set: otherwise the host can inject "
        "#VE on EPT violations the guest kernel must handle",
    )

    def evaluate(self, td: TdReport) -> list[CheckResult]:
        """One named result per TD identity rule (unconstrained ones report the value)."""
        out: list[CheckResult] = []
        fields: list[tuple[str, bytes | None, tuple[str, ...]]] = [
            ("tdx_mr_config_id", td.mr_config_id, self.mr_config_id),
            ("tdx_mr_owner", td.mr_owner, self.mr_owner),
            ("tdx_mr_owner_config", td.mr_owner_config, self.mr_owner_config),
            *((f"tdx_rtmr{i}", td.rtmrs[i], getattr(self, f"rtmr{i}")) for i in range(4)),
        ]
        if td.mr_servicetd is not None or self.mr_servicetd:
            fields.append(("tdx_mr_servicetd", td.mr_servicetd, self.mr_servicetd))
        for name, value, allowed in fields:
            v = value.hex() if value is not None else "absent"
            if not allowed:
                out.append(CheckResult(name, True, f"{v[:16]}… reported (not constrained)"))
            else:
                ok = v in allowed
                out.append(
                    CheckResult(
                        name,
                        ok,
                        f"{v[:16]}… allowed" if ok else f"{v} is not in policy tdx.{name[4:]}",
                    )
                )
        attrs = int.from_bytes(td.td_attributes, "little")
        if self.td_attributes is not None:
            mask = int.from_bytes(bytes.fromhex(self.td_attributes_mask), "little")
            want = int.from_bytes(bytes.fromhex(self.td_attributes), "little")
            ok = attrs & mask == want & mask
            out.append(
                CheckResult(
                    "tdx_td_attributes",
                    ok,
                    f"TDATTRIBUTES {td.td_attributes.hex()} match"
                    if ok
                    else f"TDATTRIBUTES {td.td_attributes.hex()} differ from "
                    f"{self.td_attributes} under mask {self.td_attributes_mask}",
                )
            )
        sept = bool(attrs & TD_ATTRIBUTES_SEPT_VE_DISABLE)
        out.append(
            CheckResult(
                "sept_ve_disable",
                sept or not self.require_sept_ve_disable,
                "SEPT_VE_DISABLE set" if sept else "SEPT_VE_DISABLE clear (allowed by policy)",
            )
            if sept or not self.require_sept_ve_disable
            else CheckResult(
                "sept_ve_disable", False, "policy requires TDATTRIBUTES.SEPT_VE_DISABLE"
            )
        )
        return out

    @field_validator(
        "mr_config_id",
        "mr_owner",
        "mr_owner_config",
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mr_servicetd",
    )
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return _lower_all(v)


Hex32 = Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]

VerifiedEvidence = VerifiedQuote | VerifiedSnpReport | VerifiedGpuReport
"""Evidence whose signatures and chain verified, of any platform a policy can judge."""


class SnpMinTcb(BaseModel):
    """Least security patch levels of REPORTED_TCB (AMD's SPLs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootloader: int = Field(0, ge=0, le=255)
    tee: int = Field(0, ge=0, le=255)
    snp: int = Field(0, ge=0, le=255)
    microcode: int = Field(0, ge=0, le=255)


class SnpPolicy(BaseModel):
    """What an SEV-SNP guest must look like (MEASUREMENT is in `allowed_measurements`;
    DEBUG follows `allow_debug`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host_data: tuple[Hex32, ...] = Field((), description="accepted HOST_DATA; empty: any")
    allow_migration_agent: bool = Field(
        False, description="accept guests whose policy lets a migration agent export them"
    )
    allow_smt: bool = Field(True, description="accept guests whose policy allows SMT")
    max_vmpl: int = Field(0, ge=0, le=3, description="highest VMPL the report may come from")
    min_reported_tcb: SnpMinTcb = Field(default_factory=SnpMinTcb)
    ark_sha256: dict[str, Hex32] = Field(
        default_factory=lambda: dict(PINNED_ARKS),
        description="pinned ARK fingerprint per product line (Milan, Genoa, ...)",
    )

    def evaluate(self, v: VerifiedSnpReport) -> list[CheckResult]:
        r = v.report
        out: list[CheckResult] = []

        def add(name: str, ok: bool, good: str, bad: str) -> None:
            out.append(CheckResult(name, ok, good if ok else bad))

        hd = r.host_data.hex()
        add(
            "snp_host_data",
            not self.host_data or hd in [h.lower() for h in self.host_data],
            f"HOST_DATA {hd[:16]}… " + ("allowed" if self.host_data else "reported"),
            f"HOST_DATA {hd} is not in policy snp.host_data",
        )
        add(
            "snp_migration_agent",
            self.allow_migration_agent or not r.migration_agent,
            "no migration agent" if not r.migration_agent else "migration agent allowed",
            "guest policy allows a migration agent (MIGRATE_MA); policy refuses it",
        )
        add(
            "snp_smt",
            self.allow_smt or not r.smt_allowed,
            "SMT " + ("allowed by policy" if r.smt_allowed else "disabled"),
            "guest policy allows SMT; policy refuses it",
        )
        add(
            "snp_vmpl",
            r.vmpl <= self.max_vmpl,
            f"VMPL {r.vmpl}",
            f"report from VMPL {r.vmpl}, policy allows at most {self.max_vmpl}",
        )
        want = SnpTcb(0, **self.min_reported_tcb.model_dump())
        add(
            "snp_reported_tcb",
            r.reported_tcb.at_least(want),
            f"REPORTED_TCB {r.reported_tcb.components()}",
            f"REPORTED_TCB {r.reported_tcb.components()} is below "
            f"{self.min_reported_tcb.model_dump()}",
        )
        pinned = self.ark_sha256.get(v.product)
        add(
            "snp_ark",
            v.simulated or pinned is None or pinned.lower() == v.root_fingerprint,
            f"ARK-{v.product} pinned",
            f"ARK-{v.product} {v.root_fingerprint} differs from snp.ark_sha256",
        )
        return out


class GpuPolicy(BaseModel):
    """What an NVIDIA GPU's SPDM measurements must be: recorded reference values per block
    index (standing in for NVIDIA's online RIMs), and the pinned device identity root."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measurements: dict[int, tuple[Annotated[str, Field(pattern=r"^[0-9a-fA-F]*$")], ...]] = Field(
        default_factory=dict,
        description="block index -> accepted values (hex); unlisted indices: any",
    )
    root_sha256: tuple[Hex32, ...] = Field(
        (NVIDIA_DEVICE_IDENTITY_ROOT_SHA256,),
        description="pinned device identity roots (NVIDIA Device Identity CA)",
    )

    def evaluate(self, v: VerifiedGpuReport) -> list[CheckResult]:
        pins = {p.lower() for p in self.root_sha256}
        out = [
            CheckResult(
                "gpu_root",
                v.simulated or v.root_fingerprint in pins,
                f"device chain ends at {v.root_fingerprint[:16]}…"
                + ("" if v.simulated or v.root_fingerprint in pins else ", not a pinned root"),
            )
        ]
        have = v.report.measurements
        bad = [
            i
            for i, allowed in sorted(self.measurements.items())
            if have.get(i, b"").hex() not in {a.lower() for a in allowed}
        ]
        out.append(
            CheckResult(
                "gpu_measurements",
                not bad,
                f"{len(self.measurements)} of {len(have)} blocks match reference values"
                if not bad
                else f"measurement blocks {bad} differ from the reference values",
            )
        )
        return out


class Verdict(BaseModel):
    """The outcome of a policy check: every rule's result, and whether all passed."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]


class AttestationPolicy(BaseModel):
    """What evidence a verifier accepts. Unsafe settings are refused when `production` is set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    production: bool = Field(False, description="refuse simulated, debug and any-measurement")
    allowed_measurements: tuple[HexDigest, ...] = Field(
        (), description="MRENCLAVE / MRTD values accepted (hex)"
    )
    any_measurement: bool = Field(
        False, description="accept any measurement (development only; refused in production)"
    )
    allowed_signers: tuple[HexDigest, ...] = Field(
        (), description="MRSIGNER / MRSIGNERSEAM values accepted (hex); empty: any signer"
    )
    trusted_roots: tuple[str, ...] = Field(
        (), description="root CA certificates: PEM/DER file paths or inline PEM"
    )
    trusted_root_sha256: tuple[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")], ...] = Field(
        (), description="pinned SHA-256 fingerprints; when set, every trusted root must match one"
    )
    allow_debug: bool = Field(False, description="accept debug enclaves / TDs")
    min_isv_svn: int = Field(0, ge=0, le=65535, description="least SGX ISV SVN")
    min_tee_tcb_svn: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{32}$",
        description="least TDX TEE_TCB_SVN, 16 bytes hex, compared component by component",
    )
    allowed_tcb_statuses: tuple[str, ...] = Field(
        ("UpToDate",),
        description="TCB statuses accepted when collateral was evaluated (Intel's names; "
        "anything beyond UpToDate is a choice to run on a platform with known issues)",
    )
    require_tcb: bool = Field(
        False, description="refuse evidence verified without collateral (always in production)"
    )
    max_evidence_age_s: float = Field(
        60.0, gt=0, le=86_400, description="most seconds from nonce issue to evidence check"
    )
    allow_simulated: bool = Field(False, description="accept the simulated TEE (not confidential)")
    tdx: TdxPolicy = Field(default_factory=TdxPolicy, description="TD identity beyond MRTD")
    snp: SnpPolicy = Field(default_factory=SnpPolicy, description="SEV-SNP guest rules")
    gpu: GpuPolicy = Field(default_factory=GpuPolicy, description="NVIDIA GPU rules")
    require_gpu: bool = Field(
        False,
        description="a GPU pool: refuse CPU evidence without GPU evidence bound to the same "
        "nonce (composite attestation)",
    )

    _base_dir: Path = PrivateAttr(default=Path("."))

    @field_validator("allowed_measurements", "allowed_signers")
    @classmethod
    def _lower(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(x.lower() for x in v)

    @model_validator(mode="after")
    def _safe(self) -> AttestationPolicy:
        if self.production:
            bad = [
                n for n in ("allow_simulated", "allow_debug", "any_measurement") if getattr(self, n)
            ]
            if bad:
                raise ValueError(f"a production policy refuses {', '.join(bad)}")
            if not self.allowed_measurements:
                raise ValueError("a production policy must list allowed_measurements")
            if not self.require_tcb:
                raise ValueError(
                    "a production policy must set require_tcb: collateral (TCB status, "
                    "QE identity, CRLs) is what tells a patched platform from a vulnerable one"
                )
        return self

    @classmethod
    def cli_default(cls) -> AttestationPolicy:
        """What `infaas evidence verify` applies without --policy: production rules that
        need no deployment knowledge. Debug and simulated evidence are refused, the TCB
        must be UpToDate when collateral is given; measurements are reported, not required
        (a policy file lists them)."""
        return cls(any_measurement=True, allowed_tcb_statuses=("UpToDate",))

    @classmethod
    def from_yaml(cls, path: Path) -> AttestationPolicy:
        """Load a policy; relative root paths resolve against the YAML file's folder."""
        data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
        policy = cls.model_validate(data.get("attestation", data))
        policy._base_dir = path.resolve().parent
        return policy

    def with_measurements(self, *measurements: bytes) -> AttestationPolicy:
        """A copy also accepting these measurements (e.g. the deployment's own worker code)."""
        extra = tuple(m.hex() for m in measurements)
        new = self.model_copy(update={"allowed_measurements": self.allowed_measurements + extra})
        new._base_dir = self._base_dir
        return new

    @cached_property
    def roots(self) -> tuple[x509.Certificate, ...]:
        """The trusted root certificates this policy names."""
        out: list[x509.Certificate] = []
        for entry in self.trusted_roots:
            if "-----BEGIN" in entry:
                out.extend(load_roots(entry.encode()))
            else:
                p = Path(entry)
                out.extend(load_roots((p if p.is_absolute() else self._base_dir / p).read_bytes()))
        pins = {x.lower() for x in self.trusted_root_sha256}
        if pins:
            for cert in out:
                fp = cert.fingerprint(hashes.SHA256()).hex()
                if fp not in pins:
                    raise AttestationFailed(
                        f"trusted root {cert.subject.rfc4514_string()} ({fp}) "
                        "does not match trusted_root_sha256"
                    )
        return tuple(out)

    def evaluate(
        self,
        verified: VerifiedEvidence,
        expected_report_data: bytes | None,
        now: float,
        *,
        nonce_issued_at: float | None = None,
    ) -> Verdict:
        """Judge a verified quote against every rule; never raises.

        `expected_report_data` None skips the binding rule (only for offline
        inspection: without it, evidence may be replayed from elsewhere).
        """
        res: list[CheckResult] = []

        def add(name: str, ok: bool, good: str, bad: str) -> None:
            res.append(CheckResult(name, ok, good if ok else bad))

        add(
            "simulated",
            self.allow_simulated or not verified.simulated,
            "evidence is hardware-rooted"
            if not verified.simulated
            else "simulated evidence allowed",
            "policy refuses simulated evidence (chain ends at a simulated platform CA)",
        )
        m = verified.measurement.hex()
        add(
            "measurement",
            # a GPU is judged by its blocks' reference values (gpu_measurements)
            isinstance(verified, VerifiedGpuReport)
            or self.any_measurement
            or m in self.allowed_measurements,
            f"measurement {m} reported (no list required)"
            if m not in self.allowed_measurements
            else f"measurement {m[:16]}… allowed",
            f"measurement {m} is not in allowed_measurements",
        )
        add(
            "debug",
            self.allow_debug or not verified.debug,
            "not debug evidence" if not verified.debug else "debug allowed by policy",
            "policy forbids debug evidence (DEBUG attribute set)",
        )
        if isinstance(verified, VerifiedQuote):
            q = verified.quote
            s = q.signer.hex()
            add(
                "signer",
                not self.allowed_signers or s in self.allowed_signers,
                "signer allowed",
                f"signer {s} is not in allowed_signers",
            )
            if isinstance(q.body, TdReport):
                res.extend(self.tdx.evaluate(q.body))
            if q.isv_svn is not None:
                add(
                    "isv_svn",
                    q.isv_svn >= self.min_isv_svn,
                    f"ISV SVN {q.isv_svn} >= {self.min_isv_svn}",
                    f"ISV SVN {q.isv_svn} is below min_isv_svn {self.min_isv_svn}",
                )
            if self.min_tee_tcb_svn is not None:
                have = q.tee_tcb_svn
                want = bytes.fromhex(self.min_tee_tcb_svn)
                ok = have is not None and all(a >= b for a, b in zip(have, want, strict=True))
                add(
                    "tee_tcb_svn",
                    ok,
                    "TEE TCB SVN meets min_tee_tcb_svn",
                    f"TEE TCB SVN {have.hex() if have else 'absent'} is below "
                    f"{self.min_tee_tcb_svn}",
                )
            if verified.tcb is not None:
                add(
                    "tcb_status",
                    verified.tcb.status in self.allowed_tcb_statuses,
                    f"TCB status {verified.tcb.status} allowed",
                    f"TCB status {verified.tcb.status} is not in allowed_tcb_statuses",
                )
            elif self.require_tcb:
                res.append(CheckResult("tcb_status", False, "policy requires TCB collateral"))
        elif isinstance(verified, VerifiedSnpReport):
            res.extend(self.snp.evaluate(verified))
        else:
            res.extend(self.gpu.evaluate(verified))
        if expected_report_data is not None:
            expected = expected_report_data.ljust(64, b"\x00")
            add(
                "report_data",
                hmac.compare_digest(verified.report_data, expected),
                "report data binds the public key and nonce",
                "report data does not bind the expected public key and nonce",
            )
        if nonce_issued_at is not None:
            age = now - nonce_issued_at
            add(
                "freshness",
                0 <= age <= self.max_evidence_age_s,
                f"evidence {age:.1f} s after its nonce",
                f"nonce is stale: {age:.1f} s old, max_evidence_age_s {self.max_evidence_age_s}",
            )
        return Verdict(checks=tuple(res))

    def check(
        self,
        verified: VerifiedEvidence,
        expected_report_data: bytes | None,
        now: float,
        *,
        nonce_issued_at: float | None = None,
    ) -> Verdict:
        """Like `evaluate`, but raise AttestationFailed naming the first broken rule."""
        verdict = self.evaluate(
            verified, expected_report_data, now, nonce_issued_at=nonce_issued_at
        )
        failed = verdict.failures
        if failed:
            raise AttestationFailed(
                f"policy: {failed[0].detail}",
                rule=failed[0].name,
                failed_rules=[c.name for c in failed],
            )
        return verdict
