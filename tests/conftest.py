from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from datagen import make_caltech_tree  # noqa: E402


@pytest.fixture(scope="session")
def spark():
    """One real local[2] SparkSession for the whole run (JVM start-up dominates small tests)."""
    from sparkdl.config import SessionConfig
    from sparkdl.session import build_session

    session = build_session(SessionConfig(master="local[2]", ui_enabled=False, driver_memory="1g", app_name="sparkdl-tests"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def caltech(tmp_path_factory):
    """A Caltech-shaped tree with 3 classes x 6 images + a corrupt JPEG, a text file and an empty file."""
    return make_caltech_tree(tmp_path_factory.mktemp("caltech"))


@pytest.fixture(scope="session")
def ingested(spark, caltech, tmp_path_factory):
    """The caltech tree ingested once (tolerating its 3 bad files of 21)."""
    from sparkdl.config import IngestConfig
    from sparkdl.data.images import ingest_images

    out = tmp_path_factory.mktemp("ingested") / "images.parquet"
    result = ingest_images(spark, IngestConfig(images_uri=str(caltech["root"]), output_uri=str(out), max_reject_fraction=0.2))
    return result


@pytest.fixture(scope="session")
def connect_server(tmp_path_factory):
    """A real Spark Connect server (``local[2]``, 127.0.0.1) for the whole run; yields its ``sc://`` URL. Run clients
    with ``connect_server.run_connect_client(url, script)``: in child processes, never next to the ``spark`` fixture
    (pyspark.ml picks classic or Connect code from one process-wide environment variable)."""
    from connect_server import missing_client_packages, start_connect_server

    missing = missing_client_packages()
    if missing:
        pytest.fail(f"Spark Connect tests need the connect extra (missing {', '.join(missing)}): pip install -e '.[connect]'")
    server = start_connect_server(tmp_path_factory.mktemp("connect"))
    try:
        yield server.url
    finally:
        server.stop()
