"""`sparkdl demo` replaces only a digits tree it wrote itself."""
import pytest

from sparkdl.demo import DEMO_MARKER, run_demo
from sparkdl.errors import DataError


def test_demo_refuses_to_delete_a_digits_folder_it_did_not_write(tmp_path):
    mine = tmp_path / "digits" / "scan.png"
    mine.parent.mkdir()
    mine.write_bytes(b"a user's file")
    with pytest.raises(DataError, match=r"digits exists and was not written by `sparkdl demo`: choose another --workdir"):
        run_demo(None, workdir=tmp_path)  # refused before Spark is touched
    assert mine.read_bytes() == b"a user's file"


def test_demo_marks_the_tree_it_writes(tmp_path, monkeypatch):
    import sparkdl.data.images as images

    def stop(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(images, "ingest_images", stop)
    with pytest.raises(KeyboardInterrupt):
        run_demo(None, workdir=tmp_path, max_per_class=1)
    assert (tmp_path / "digits" / DEMO_MARKER).is_file()
    with pytest.raises(KeyboardInterrupt):  # a second run may replace it
        run_demo(None, workdir=tmp_path, max_per_class=1)
