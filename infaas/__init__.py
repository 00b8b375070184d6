"""infaas: model-less, confidential inference-as-a-service.

The public import surface. Component packages (`variants`, `profiler`,
`scheduler`, `enclave_workers`, `api`) are internal.

`Client` and `AsyncClient` load on first use (`from infaas import Client`): the workers and the
key service import `infaas.*` but never run the client, so it is not part of
their measured code (`infaas.measurement`).
"""

import typing

from infaas import errors as errors
from infaas.settings import Settings as Settings
from infaas.settings import get_settings as get_settings
from infaas.store import MetadataStore as MetadataStore
from infaas.store import open_store as open_store
from infaas.types import SLO as SLO
from infaas.types import Backend as Backend
from infaas.types import ModelRecord as ModelRecord
from infaas.types import Precision as Precision
from infaas.types import Profile as Profile
from infaas.types import Task as Task
from infaas.types import Tenant as Tenant
from infaas.types import VariantSpec as VariantSpec

if typing.TYPE_CHECKING:
    from infaas.client import AsyncClient as AsyncClient
    from infaas.client import Client as Client

__version__ = "0.1.0"

__all__ = [
    "SLO",
    "AsyncClient",
    "Backend",
    "Client",
    "MetadataStore",
    "ModelRecord",
    "Precision",
    "Profile",
    "Settings",
    "Task",
    "Tenant",
    "VariantSpec",
    "__version__",
    "errors",
    "get_settings",
    "open_store",
]


def __getattr__(name: str) -> object:
    if name in ("Client", "AsyncClient"):
        import infaas.client

        value: object = getattr(infaas.client, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
