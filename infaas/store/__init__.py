"""The metadata store: models, variants, profiles, tenants and opaque sealed records.

The store is untrusted (see ARCHITECTURE.md): it holds metadata and ciphertext
only. There is deliberately no way to put model weights in it.

- `infaas.store.contract`: `MetadataStore`, the one home of every namespace and
  its typed accessors;
- `infaas.store.backends`: the SQLite, in-memory and Redis backends and
  `open_store`, which picks one from a URL.
"""

from infaas.store.backends import MemoryStore as MemoryStore
from infaas.store.backends import RedisStore as RedisStore
from infaas.store.backends import SQLiteStore as SQLiteStore
from infaas.store.backends import open_store as open_store
from infaas.store.contract import REPLAY_PRUNE_INTERVAL_S as REPLAY_PRUNE_INTERVAL_S
from infaas.store.contract import MetadataStore as MetadataStore
from infaas.store.contract import SealedTable as SealedTable
