"""A terminal's recent output as a ring of bytes addressed by absolute offsets."""

from __future__ import annotations


class Scrollback:
    """The last ``capacity`` bytes of a UTF-8 output stream.

    Offsets count every byte ever appended, so a client that saw output up to offset ``n``
    can ask for exactly what came after (``since(n)``) as long as it is still in the ring.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            msg = "capacity must be 0 or more bytes"
            raise ValueError(msg)
        self.capacity = capacity
        self.end = 0
        self._ring = bytearray()

    @property
    def start(self) -> int:
        """Offset of the oldest byte still held."""
        return self.end - len(self._ring)

    def __len__(self) -> int:
        return len(self._ring)

    def append(self, data: bytes) -> None:
        """Add output, forgetting the oldest bytes beyond the capacity."""
        self.end += len(data)
        if len(data) >= self.capacity:
            self._ring = bytearray(data[len(data) - self.capacity :])
            return
        self._ring += data
        excess = len(self._ring) - self.capacity
        if excess > 0:
            # CPython deletes from the front of a bytearray by moving its start pointer.
            del self._ring[:excess]

    def since(self, offset: int | None = None) -> bytes:
        """Output after ``offset``: everything held if it is None, older than the ring, or
        beyond its end (an offset from another terminal of the same name).

        Starts on a character boundary: a partial UTF-8 sequence at the front is dropped.
        """
        if offset is None or not self.start <= offset <= self.end:
            offset = self.start
        data = bytes(self._ring[offset - self.start :])
        skip = 0
        while skip < min(len(data), 3) and data[skip] & 0xC0 == 0x80:
            skip += 1
        return data[skip:]
