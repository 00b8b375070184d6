"""The key service's side of its transparency log: what it appends, kept from rolling back.

The log's files are public and the host's (``DATA_DIR/transparency/``); a host that
restores older copies of both would have the key service sign a shorter log. So each
head that logs a model key (a write to the key service's state anyway) is also
recorded in that sealed, rollback-protected state (`infaas.keyservice.state`, table
``ks_transparency``, one record per log key), and a key service that finds its log
shorter than, or not extending, the head recorded there refuses to start, naming why.
What a start appends (its identity, the workers its policy lists) is appended again at
every start and needs no record; releases write nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infaas.errors import RollbackDetected
from infaas.keyservice.state import SealedRecords
from infaas.store import SealedTable
from infaas.transparency.log import LogCorrupted, TransparencyLog


class Publisher:
    """Appends to `log` and records each new head in `records`; checks the log at start."""

    def __init__(self, log: TransparencyLog, records: SealedRecords) -> None:
        self._log = log
        self._records = records
        try:
            sealed = records.get(SealedTable.TRANSPARENCY, log.log_id)
        except RollbackDetected:
            return  # its state is refused: the service answers every call with why
        if sealed is not None:
            size, root = int(sealed["size"]), str(sealed["root"])
            if log.head.size < size or log.root_at(size) != root:
                raise LogCorrupted(
                    f"transparency log has {log.head.size} entries, but the key service's "
                    f"sealed state recorded a head of {size} entries it does not extend: the "
                    "log files were rolled back or replaced"
                )

    def publish(self, entry: Mapping[str, Any]) -> None:
        """Append `entry` (once); a new head is recorded in the sealed state."""
        before = self._log.head.size
        self._log.append(entry)
        head = self._log.head
        if head.size != before:
            self._records.put(
                SealedTable.TRANSPARENCY, head.log_id, {"size": head.size, "root": head.root}
            )
