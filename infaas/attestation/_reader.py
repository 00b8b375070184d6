"""Fields read in order from evidence bytes (quotes, SPDM reports), little-endian."""

from __future__ import annotations

from infaas.errors import AttestationFailed


class FieldReader:
    """A cursor over `data`; a field that runs past the end is `AttestationFailed`."""

    def __init__(self, data: bytes, subject: str) -> None:
        self.data = data
        self.subject = subject
        """What the bytes are, for the error ("quote", "GPU report")."""
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise AttestationFailed(
                f"{self.subject} truncated: {what} needs {n} bytes at offset {self.pos}, "
                f"{len(self.data) - self.pos} left"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, size: int, what: str) -> int:
        """An unsigned little-endian integer of `size` bytes."""
        return int.from_bytes(self.take(size, what), "little")

    def sub(self, n: int, what: str) -> FieldReader:
        """A reader over the next `n` bytes (a length-prefixed structure)."""
        return FieldReader(self.take(n, what), self.subject)
