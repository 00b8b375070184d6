"""One normalised appraisal result per evidence, whatever the vendor (an EAR-like claim set).

Key release and status pages read the same claims for an SGX or TDX quote, an SEV-SNP
report or a GPU's SPDM report::

    {"platform": "tdx", "status": "affirming", "simulated": false,
     "measurement": "<hex>", "report_data": "<hex>", "debug": false,
     "tcb_status": "UpToDate" | null, "root_sha256": "<hex>", "checks": {...}}

`status` follows the IETF EAR vocabulary: "affirming" when every verification and
policy check passed, "contraindicated" otherwise. A `CompositeAppraisal` joins a CPU
appraisal and, for a GPU pool, the GPU's: it affirms only when both do and both are
bound to the same verifier nonce.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from infaas.attestation.policy import Verdict, VerifiedEvidence
from infaas.attestation.snp import VerifiedSnpReport
from infaas.attestation.verify import VerifiedQuote

Status = Literal["affirming", "contraindicated"]


@dataclass(frozen=True)
class Appraisal:
    """The appraisal of one piece of evidence, as vendor-neutral claims."""

    platform: str
    status: Status
    simulated: bool
    measurement: str
    report_data: str
    debug: bool
    tcb_status: str | None
    root_sha256: str
    checks: dict[str, bool] = field(default_factory=dict)

    def claims(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "status": self.status,
            "simulated": self.simulated,
            "measurement": self.measurement,
            "report_data": self.report_data,
            "debug": self.debug,
            "tcb_status": self.tcb_status,
            "root_sha256": self.root_sha256,
            "checks": dict(self.checks),
        }


def _platform(v: VerifiedEvidence) -> str:
    if isinstance(v, VerifiedQuote):
        return v.quote.tee.value
    if isinstance(v, VerifiedSnpReport):
        return "snp"
    return "nvidia-gpu"


def appraise(verified: VerifiedEvidence, verdict: Verdict) -> Appraisal:
    """Normalise verified evidence and its policy verdict into one claim set."""
    tcb: str | None = None
    if isinstance(verified, VerifiedQuote) and verified.tcb is not None:
        tcb = verified.tcb.status
    elif isinstance(verified, VerifiedSnpReport):
        tcb = "reported:" + ",".join(
            f"{k}={v}" for k, v in verified.report.reported_tcb.components().items()
        )
    checks = {c.name: c.ok for c in verified.checks}
    checks |= {f"policy.{c.name}": c.ok for c in verdict.checks}
    return Appraisal(
        platform=_platform(verified),
        status="affirming" if verdict.ok else "contraindicated",
        simulated=verified.simulated,
        measurement=verified.measurement.hex(),
        report_data=verified.report_data.hex(),
        debug=verified.debug,
        tcb_status=tcb,
        root_sha256=verified.root_fingerprint,
        checks=checks,
    )


@dataclass(frozen=True)
class CompositeAppraisal:
    """A CPU TEE's appraisal and, in a GPU pool, its GPU's, bound to one nonce."""

    cpu: Appraisal
    gpu: Appraisal | None = None

    @property
    def status(self) -> Status:
        parts = [self.cpu] + ([self.gpu] if self.gpu is not None else [])
        return "affirming" if all(p.status == "affirming" for p in parts) else "contraindicated"

    def claims(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "cpu": self.cpu.claims()}
        if self.gpu is not None:
            out["gpu"] = self.gpu.claims()
        return out
