"""The tree of workers updates travel over: pure functions of (rank, world size, fan-out).

Rank 0 is the root; rank ``r > 0`` hangs below ``(r - 1) // fanout`` (a complete ``fanout``-ary tree in rank order).
Every rank's *neighbours* are its parent and its children. A message that starts anywhere reaches every rank exactly
once when each rank forwards it to all its neighbours except the one it came from (a tree has no cycles); receivers
still drop duplicates by message id, which guards against a transport that repeats itself.
"""
from __future__ import annotations

from sparkdl.errors import ConfigError


def _check(rank: int, world: int, fanout: int) -> None:
    if fanout < 1:
        raise ConfigError(f"tree fan-out must be >= 1, got {fanout}")
    if world < 1:
        raise ConfigError(f"the number of workers must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is outside 0..{world - 1}")


def parent(rank: int, world: int, fanout: int) -> int | None:
    _check(rank, world, fanout)
    return None if rank == 0 else (rank - 1) // fanout


def children(rank: int, world: int, fanout: int) -> list[int]:
    _check(rank, world, fanout)
    first = rank * fanout + 1
    return list(range(first, min(first + fanout, world)))


def neighbours(rank: int, world: int, fanout: int) -> list[int]:
    up = parent(rank, world, fanout)
    return ([up] if up is not None else []) + children(rank, world, fanout)


def forward_to(rank: int, world: int, fanout: int, came_from: int | None) -> list[int]:
    """Where ``rank`` sends a message it created (``came_from = None``) or received from ``came_from``."""
    return [n for n in neighbours(rank, world, fanout) if n != came_from]


def depth(world: int, fanout: int) -> int:
    """Edges on the longest root-to-leaf path (0 for one worker)."""
    _check(0, world, fanout)
    levels, rank = 0, world - 1
    while rank > 0:
        rank = (rank - 1) // fanout
        levels += 1
    return levels
