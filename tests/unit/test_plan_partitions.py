import pytest

from sparkdl.featurize.featurizer import plan_partitions


@pytest.mark.parametrize(
    "rows, parallelism, max_rows, expected",
    [
        (0, 2, 2048, 2),
        (18, 2, 2048, 2),
        (4096, 2, 2048, 2),
        (4097, 2, 2048, 4),
        (30607, 2, 2048, 16),  # Caltech-256 on 2 cores: 8 waves of 2 tasks
        (30607, 16, 2048, 16),
        (100, 0, 10, 10),
    ],
)
def test_whole_waves_bounded_rows(rows, parallelism, max_rows, expected):
    n = plan_partitions(rows, parallelism, max_rows)
    assert n == expected
    assert n % max(1, parallelism) == 0
    assert -(-rows // n) <= max_rows
