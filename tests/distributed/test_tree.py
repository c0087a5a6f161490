"""The tree of workers: every message reaches every rank exactly once, for 1..40 ranks and fan-outs 1..8."""
import pytest

from sparkdl.errors import ConfigError
from sparkdl.collective import tree


def _flood(world: int, fanout: int, source: int) -> dict[int, int]:
    """Relay a message from ``source`` as the workers do; count deliveries per rank."""
    received = {source: 1}
    queue = [(n, source) for n in tree.forward_to(source, world, fanout, None)]
    while queue:
        rank, came_from = queue.pop()
        received[rank] = received.get(rank, 0) + 1
        queue += [(n, rank) for n in tree.forward_to(rank, world, fanout, came_from)]
    return received


@pytest.mark.parametrize("fanout", range(1, 9))
def test_every_rank_gets_every_message_exactly_once(fanout):
    for world in range(1, 41):
        for source in range(world):
            assert _flood(world, fanout, source) == dict.fromkeys(range(world), 1), (world, fanout, source)


def test_shape():
    assert tree.children(0, 10, 3) == [1, 2, 3] and tree.children(3, 10, 3) == [] and tree.children(1, 10, 3) == [4, 5, 6]
    assert tree.parent(0, 10, 3) is None and tree.parent(9, 10, 3) == 2
    assert [tree.depth(w, 2) for w in (1, 2, 3, 4, 7, 8)] == [0, 1, 1, 2, 2, 3]
    for world in range(1, 41):
        assert sorted(c for r in range(world) for c in tree.children(r, world, 8)) == list(range(1, world))


def test_bad_arguments():
    with pytest.raises(ConfigError, match="fan-out"):
        tree.children(0, 4, 0)
    with pytest.raises(ConfigError, match="outside"):
        tree.parent(4, 4, 2)
