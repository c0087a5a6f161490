"""requires-python says 3.10-3.12; the suite runs on 3.11 only, so check what can be checked statically: the package
parses as Python 3.10 (no 3.11 syntax) and uses none of the standard library's 3.11+ names."""
import ast
import re
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "sparkdl"
NEWER = ("tomllib", "datetime.UTC", "StrEnum", "typing.Self", "TaskGroup", "asyncio.timeout", "ExceptionGroup",
         "hashlib.file_digest", "contextlib.chdir", "LiteralString", "assert_never", "reveal_type", "operator.call",
         "getLevelNamesMapping", "itertools.batched", "typing.override")  # fmt: skip


def test_the_package_parses_as_python_3_10_and_avoids_newer_stdlib_names():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    for path in files:
        text = path.read_text()
        ast.parse(text, filename=str(path), feature_version=(3, 10))
        used = [name for name in NEWER if re.search(rf"\b{re.escape(name)}\b", text)]
        assert not used, f"{path}: {used} need Python > 3.10"


def test_pyproject_declares_the_checked_range():
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10,<3.13"' in text
    assert sys.version_info[:2] in ((3, 10), (3, 11), (3, 12))
