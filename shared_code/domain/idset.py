"""A compact, immutable set of Entra object ids (a full reconcile's "every device Graph listed").

An XL tenant's full read observes hundreds of thousands of device ids; as a ``set[str]`` each costs a 36-character
``str`` object plus a hash-table slot (about 120 bytes). Entra object ids are GUIDs, so each is kept here as its 16
bytes in one sorted ``bytes`` (binary search for membership): about 16 bytes an id. An id that is not a canonical
lower-case GUID (never seen from Graph, but stored data must not crash a run) is kept as a string beside them.

Pure: no I/O.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

KEY_BYTES = 16
_HEX = frozenset("0123456789abcdef")


def guid_key(object_id: str) -> bytes | None:
    """The 16 bytes of a canonical lower-case GUID (``8-4-4-4-12`` hex digits), else None."""
    if len(object_id) != 36 or object_id[8] != "-" or object_id[13] != "-" or object_id[18] != "-" \
            or object_id[23] != "-":
        return None
    digits = object_id.replace("-", "")
    if len(digits) != 32 or not _HEX.issuperset(digits):
        return None
    return bytes.fromhex(digits)


def _guid(key: bytes) -> str:
    h = key.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Keys(Sequence[bytes]):
    """The sorted key bytes seen as a sequence of 16-byte keys (for ``bisect``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data) // KEY_BYTES

    @overload
    def __getitem__(self, i: int) -> bytes: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...

    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return self.data[i * KEY_BYTES : (i + 1) * KEY_BYTES]


class IdSetBuilder:
    """Collects ids (duplicates allowed) into an :class:`IdSet`; 16 bytes an id while collecting."""

    def __init__(self) -> None:
        self._keys = bytearray()
        self._other: set[str] = set()

    def add(self, object_id: str) -> None:
        """Add one id."""
        key = guid_key(object_id)
        if key is None:
            self._other.add(object_id)
        else:
            self._keys += key

    def update(self, ids: Iterable[str]) -> None:
        """Add many ids."""
        for object_id in ids:
            self.add(object_id)

    def add_keys(self, keys: bytes, other: Iterable[str] = ()) -> None:
        """Add ids given as concatenated 16-byte keys (:meth:`key_pieces`) and as strings."""
        if len(keys) % KEY_BYTES:
            raise ValueError("IdSet keys must be whole 16-byte GUIDs")
        self._keys += keys
        self._other.update(other)

    def merge(self, other: IdSetBuilder) -> None:
        """Add everything another builder collected."""
        self.add_keys(bytes(other._keys), other._other)

    def key_pieces(self, per_piece: int = 4096) -> Iterator[tuple[bytes, list[str]]]:
        """What was collected, in pieces of ``per_piece`` keys (the strings with the first piece), for streaming."""
        step = per_piece * KEY_BYTES
        yield bytes(self._keys[:step]), sorted(self._other)
        for start in range(step, len(self._keys), step):
            yield bytes(self._keys[start : start + step]), []

    def __bool__(self) -> bool:
        return bool(self._keys or self._other)

    def build(self) -> IdSet:
        """The set (sorted, duplicates dropped)."""
        raw = self._keys
        keys = sorted([bytes(raw[i : i + KEY_BYTES]) for i in range(0, len(raw), KEY_BYTES)])
        out = bytearray()
        last = b""
        for key in keys:
            if key != last:
                out += key
                last = key
        return IdSet(bytes(out), frozenset(self._other))


class IdSet:
    """Immutable set of object ids (see module): ``in``, ``len``, iteration (GUIDs in byte order, then the rest)."""

    __slots__ = ("_view", "keys", "other")

    def __init__(self, keys: bytes = b"", other: frozenset[str] = frozenset()) -> None:
        if len(keys) % KEY_BYTES:
            raise ValueError("IdSet keys must be whole 16-byte GUIDs")
        self.keys = bytes(keys)
        self.other = other
        self._view = _Keys(self.keys)

    @classmethod
    def of(cls, ids: Iterable[str]) -> IdSet:
        """The set of ``ids``."""
        builder = IdSetBuilder()
        builder.update(ids)
        return builder.build()

    def __contains__(self, object_id: object) -> bool:
        if not isinstance(object_id, str):
            return False
        key = guid_key(object_id)
        if key is None:
            return object_id in self.other
        i = bisect_left(self._view, key)
        return i < len(self._view) and self._view[i] == key

    def __len__(self) -> int:
        return len(self._view) + len(self.other)

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self._view)):
            yield _guid(self._view[i])
        yield from sorted(self.other)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, IdSet) and self.keys == other.keys and self.other == other.other

    __hash__ = None  # type: ignore[assignment]

    def key_pieces(self, per_piece: int = 4096) -> Iterator[tuple[bytes, list[str]]]:
        """The set in pieces of ``per_piece`` keys (the strings with the first piece), for streaming; an
        :class:`IdSetBuilder` fed them with :meth:`IdSetBuilder.add_keys` builds the same set."""
        step = per_piece * KEY_BYTES
        yield self.keys[:step], sorted(self.other)
        for start in range(step, len(self.keys), step):
            yield self.keys[start : start + step], []
