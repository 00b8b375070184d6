"""Remote attestation: DCAP quote parsing and verification, policy, TEE backends.

Verifier side::

    verifier = AttestationVerifier(AttestationPolicy.from_yaml(path), extra_roots=[...])
    verified, verdict = verifier.verify(quote, public_key=pk, nonce=nonce)

Attester side::

    tee = SimulatedTEE(SimulatedPlatformCA.load_or_create(dir), measurement)
    quote = tee.generate(report_data_for(pk, nonce))
"""

from infaas.attestation.backends import ConfigfsTsm as ConfigfsTsm
from infaas.attestation.backends import EvidenceGenerator as EvidenceGenerator
from infaas.attestation.backends import GramineSGX as GramineSGX
from infaas.attestation.backends import report_data_for as report_data_for
from infaas.attestation.evidence import CheckResult as CheckResult
from infaas.attestation.policy import AttestationPolicy as AttestationPolicy
from infaas.attestation.policy import Verdict as Verdict
from infaas.attestation.quote import Quote as Quote
from infaas.attestation.quote import parse_quote as parse_quote
from infaas.attestation.simulated import SIMULATED_LABEL as SIMULATED_LABEL
from infaas.attestation.simulated import SimulatedPlatformCA as SimulatedPlatformCA
from infaas.attestation.simulated import SimulatedTEE as SimulatedTEE
from infaas.attestation.verifier import AttestationVerifier as AttestationVerifier
from infaas.attestation.verifier import NonceIssuer as NonceIssuer
from infaas.attestation.verify import VerifiedQuote as VerifiedQuote
from infaas.attestation.verify import inspect_quote as inspect_quote
from infaas.attestation.verify import load_roots as load_roots
from infaas.attestation.verify import verify_quote as verify_quote

__all__ = [
    "SIMULATED_LABEL",
    "AttestationPolicy",
    "AttestationVerifier",
    "CheckResult",
    "ConfigfsTsm",
    "EvidenceGenerator",
    "GramineSGX",
    "NonceIssuer",
    "Quote",
    "SimulatedPlatformCA",
    "SimulatedTEE",
    "Verdict",
    "VerifiedQuote",
    "inspect_quote",
    "load_roots",
    "parse_quote",
    "report_data_for",
    "verify_quote",
]
