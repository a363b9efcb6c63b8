"""``with`` for the guard's resources: stores, engines and the embedding cache."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """A resource that is closed on leaving a ``with`` block, so that a command holds
    its stores, engines and cache in one ``contextlib.ExitStack`` and closes each one,
    in reverse order, however it ends."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
