import subprocess
import sys

import sparkdl


def test_every_public_name_resolves():
    for name in sparkdl.__all__:
        assert getattr(sparkdl, name) is not None, name


def test_import_has_no_heavy_side_effects():
    code = "import sys, sparkdl; print('pyspark' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
