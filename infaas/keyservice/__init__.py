"""The key service: attested custody of tenant request keys and model data keys.

One room: `service` (the custody and release rules), `models` (its wire
format), `sealing` (its key-encryption key), `state` (its records, versioned by a
hash-chained log), `counter` (the monotonic counter that log is tied to), `audit`
(each principal's private trail), `publisher` (what it appends to its public
transparency log, `infaas.transparency`, kept from rolling back), `server` (its HTTP routes and
app), `client` (`KeyServiceClient`, `WorkerKeyClient` and the HTTP client
transport `KeyServiceHttpClient`), `measurement` (its code identity),
`trust` (its identity as others check it: the trust bundle, signed releases),
`channel` (management calls sealed end to end, answers included, each opened once),
`telemetry` (release counters) and `deployment` (the Ray Serve replica;
imported only by the composition root, not from here).
"""

from infaas.keyservice.client import KeyServiceClient as KeyServiceClient
from infaas.keyservice.client import KeyServiceHttpClient as KeyServiceHttpClient
from infaas.keyservice.client import KeyServiceTransport as KeyServiceTransport
from infaas.keyservice.client import ReleasedKey as ReleasedKey
from infaas.keyservice.client import WorkerKeyClient as WorkerKeyClient
from infaas.keyservice.client import unwrap_released as unwrap_released
from infaas.keyservice.models import KeyRequest as KeyRequest
from infaas.keyservice.models import ReleaseRequest as ReleaseRequest
from infaas.keyservice.models import ReleaseResponse as ReleaseResponse
from infaas.keyservice.sealing import gramine_sealing_key as gramine_sealing_key
from infaas.keyservice.sealing import simulated_sealing_key as simulated_sealing_key
from infaas.keyservice.server import create_keyservice_app as create_keyservice_app
from infaas.keyservice.server import create_keyservice_router as create_keyservice_router
from infaas.keyservice.service import KeyService as KeyService
from infaas.keyservice.trust import AttestedKeyService as AttestedKeyService
from infaas.keyservice.trust import KeyServiceTrust as KeyServiceTrust
from infaas.keyservice.trust import attest_keyservice as attest_keyservice

__all__ = [
    "AttestedKeyService",
    "KeyRequest",
    "KeyService",
    "KeyServiceClient",
    "KeyServiceHttpClient",
    "KeyServiceTransport",
    "KeyServiceTrust",
    "ReleaseRequest",
    "ReleaseResponse",
    "ReleasedKey",
    "WorkerKeyClient",
    "attest_keyservice",
    "create_keyservice_app",
    "create_keyservice_router",
    "gramine_sealing_key",
    "simulated_sealing_key",
    "unwrap_released",
]
