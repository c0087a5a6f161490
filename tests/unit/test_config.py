import pytest

from sparkdl.config import FeaturizeConfig, IngestConfig, SessionConfig
from sparkdl.errors import ConfigError


def test_ingest_defaults():
    cfg = IngestConfig(images_uri="/data/x", output_uri="/out/images.parquet")
    assert cfg.split == (0.7, 0.15, 0.15)
    assert cfg.seed == 42
    assert cfg.max_reject_fraction == 0.01


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"split": (0.5, 0.5)}, "three fractions"),
        ({"split": (0.7, 0.2, 0.2)}, "add up to 1"),
        ({"split": (1.2, -0.1, -0.1)}, "in [0, 1]"),
        ({"max_reject_fraction": 1.5}, "max_reject_fraction"),
        ({"partitions": 0}, "partitions"),
        ({"images_uri": ""}, "images_uri"),
    ],
)
def test_ingest_rejects_bad_settings(kwargs, fragment):
    base = {"images_uri": "/data/x", "output_uri": "/out/images.parquet"}
    with pytest.raises(ConfigError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        IngestConfig(**{**base, **kwargs})


def test_featurize_weights_and_random_init_exclusive():
    with pytest.raises(ConfigError, match="either weights or random_init"):
        FeaturizeConfig(input_uri="a", output_uri="b", weights="w.pth", random_init=True)
    with pytest.raises(ConfigError, match="batch_size"):
        FeaturizeConfig(input_uri="a", output_uri="b", batch_size=0)


def test_session_config_validation():
    assert SessionConfig().master is None
    with pytest.raises(ConfigError, match="driver_memory"):
        SessionConfig(driver_memory="lots")
    with pytest.raises(ConfigError, match="log_level"):
        SessionConfig(log_level="LOUD")
    with pytest.raises(ConfigError, match="extra_conf"):
        SessionConfig(extra_conf=(("only-key",),))
