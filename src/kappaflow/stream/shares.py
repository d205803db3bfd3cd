"""A worker's share of the partitions, changed while it runs. ``kappaflow up`` writes
the partitions a worker is to own to the worker's share file; between two polls the
worker reads it, takes the change over (`kappaflow.stream.assignment.Shares`: it lets go
of what it lost and claims what it gained) and writes the partitions it now owns to the
``.owned`` file beside it, which tells ``up`` that the ones it gave up are free to claim."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import msgspec

from kappaflow.errors import KappaflowError

_decode = msgspec.json.Decoder(list[Annotated[int, msgspec.Meta(ge=0)]]).decode


class BadShareFile(KappaflowError):
    """A share file holds something else than a list of partition numbers."""


class ShareFile:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.owned_path = self.path.with_name(f"{self.path.name}.owned")
        self._seen = b""

    def offer(self, partitions: Sequence[int]) -> None:
        """Ask the worker to own ``partitions``, and no others."""
        _replace(self.path, partitions)

    def offer_anew(self, partitions: Sequence[int]) -> None:
        """Ask a worker about to start: what an earlier one said it owned is void."""
        self.owned_path.unlink(missing_ok=True)
        self.offer(partitions)

    def pending(self) -> bool:
        """Whether the request changed since the last `changed`, which would return it."""
        data = self._read()
        return data is not None and data != self._seen

    def changed(self) -> list[int] | None:
        """The partitions asked for, if the request changed since the last call
        (the first call returns it; None if there is none)."""
        data = self._read()
        if data is None or data == self._seen:
            return None
        self._seen = data
        try:
            return _decode(data)
        except msgspec.DecodeError as error:
            raise BadShareFile(f"{self.path}: not a list of partition numbers: {error}") from None

    def _read(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def acknowledge(self, partitions: Sequence[int]) -> None:
        """Say that the worker owns ``partitions``, and no others."""
        _replace(self.owned_path, partitions)

    def owned(self) -> list[int] | None:
        """What the worker last said it owns (None: nothing yet)."""
        try:
            return _decode(self.owned_path.read_bytes())
        except (FileNotFoundError, msgspec.DecodeError):
            return None


def _replace(path: Path, partitions: Sequence[int]) -> None:
    """Write atomically: a reader sees the old list or the new one, never a part."""
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_bytes(msgspec.json.encode(sorted(partitions)))
    os.replace(temporary, path)
