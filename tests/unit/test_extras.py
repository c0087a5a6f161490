"""Optional dependencies: without an extra's package the feature says which extra to install, in one line, and the
rest works (the report is the HTML page alone without matplotlib)."""
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _run_without(modules: list[str], body: str) -> str:
    code = (f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
            + "".join(f"sys.modules[{m!r}] = None\n" for m in modules) + body)  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_report_without_matplotlib_is_the_page_alone(tmp_path):
    out = _run_without(["matplotlib"], f"""
from datagen import make_bundle
from sparkdl.report import write_report
page = write_report(make_bundle({str(tmp_path / 'model')!r}))
print(sorted(p.name for p in page.parent.iterdir()))
print("pip install 'sparkdl-torch[report]'" in page.read_text())
""")
    assert out.splitlines() == ["['report.html']", "True"]


@pytest.mark.parametrize(("module", "call", "message"), [
    ("h5py", "from sparkdl.featurize.weights import read_keras_h5; read_keras_h5('w.h5')",
     "reading Keras .h5 weights needs h5py, which is not installed: pip install 'sparkdl-torch[keras]'"),
    ("hdfs", "from sparkdl.data.webhdfs import WebHdfs; WebHdfs('http://127.0.0.1:9870', 'u')",
     "WebHDFS (sparkdl fs) needs hdfs, which is not installed: pip install 'sparkdl-torch[webhdfs]'"),
    ("matplotlib", "from sparkdl.report import plot_loss; plot_loss([], 'x.png')",
     "plotting the report needs matplotlib, which is not installed: pip install 'sparkdl-torch[report]'"),
])  # fmt: skip
def test_a_missing_extra_is_named(module, call, message):
    out = _run_without([module], f"""
try:
    {call}
except Exception as e:
    print(type(e).__name__, e)
""")
    assert out == f"MissingExtraError {message}"
