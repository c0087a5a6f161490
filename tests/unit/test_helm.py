"""helm/sparkdl: `helm lint --strict`, `helm template` with default and non-default values, every rendered manifest
validated offline: the Kubernetes kinds against the Kubernetes schemas (kubernetes-validate), the custom resources
(SparkApplication, ServiceMonitor) against their CRDs' schemas vendored in tests/data/crd-schemas. Each values set
is rendered once (module fixtures). helm comes from PyPI (scripts/get_helm.py). No cluster: nothing here runs."""
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "sparkdl"
CRD_SCHEMAS = REPO / "tests" / "data" / "crd-schemas"
CRDS = {("sparkoperator.k8s.io/v1beta2", "SparkApplication"): "sparkapplication-v1beta2.schema.json",
        ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-v1.schema.json"}  # fmt: skip
JOBS_DIR = "/usr/local/lib/python3.11/site-packages/sparkdl/jobs"
HDFS = "hdfs://namenode:9000"

CUSTOM = {
    "hadoop": {"defaultFS": HDFS, "hdfsSite": {"dfs.client.use.datanode.hostname": "true"}},
    "networkPolicy": {"enabled": False},
    "driverServiceAccount": {"create": True, "name": "spark"},  # for spark-submit --master k8s://, no operator
    "worker": {"replicas": 3, "cores": 4, "memory": "8g", "pdb": {"enabled": True, "minAvailable": "50%", "maxUnavailable": ""}},
    "train": {"enabled": True, "features": f"{HDFS}/sparkdl/features.parquet", "trainingMaster": "sharing",
              "extraArgs": ["--threshold", "adaptive"], "modelVolume": {"claimName": "models"}},
}  # fmt: skip

# everything on: the four SparkApplications, the three Jobs, the server, auth, PDB, ServiceMonitors, scheduling
NODE_SELECTOR = {"pool": "spark"}
TOLERATIONS = [{"key": "dedicated", "operator": "Equal", "value": "spark", "effect": "NoSchedule"}]
AFFINITY = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}}  # fmt: skip
FULL = {
    "image": {"repository": "registry.example/sparkdl", "tag": "0.1.0", "jobsDir": "/opt/sparkdl/jobs"},
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccount": {"create": True, "name": "sparkdl-sa", "annotations": {"example.com/role": "spark"}},
    "nodeSelector": NODE_SELECTOR, "tolerations": TOLERATIONS, "affinity": AFFINITY,
    "worker": {"pdb": {"enabled": True}, "nodeSelector": {"pool": "spark-workers"}},
    "sparkAuth": {"enabled": True, "secretName": "spark-rpc"},
    "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                   "allowFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}},
    "ingest": {"enabled": True, "images": f"{HDFS}/data/caltech", "output": f"{HDFS}/sparkdl/images.parquet",
               "nodeSelector": {"pool": "io"}},
    "featurize": {"enabled": True, "input": f"{HDFS}/sparkdl/images.parquet", "output": f"{HDFS}/sparkdl/features.parquet",
                  "backbone": "vgg16", "weights": f"{HDFS}/models/vgg16.pth"},
    "train": {"enabled": True, "features": f"{HDFS}/sparkdl/features.parquet", "output": f"{HDFS}/sparkdl/head",
              "resources": {"requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}},
    "serve": {"enabled": True, "model": f"{HDFS}/sparkdl/head", "tokenSecret": "serve-token",
              "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}], "modelVolume": {"claimName": "models"}},
    "sparkOperator": {
        "enabled": True,
        "restartPolicy": {"type": "OnFailure", "onFailureRetries": 2, "onFailureRetryInterval": 30,
                          "onSubmissionFailureRetries": 1, "onSubmissionFailureRetryInterval": 20},
        "timeToLiveSeconds": 3600,
        "sparkConf": {"spark.eventLog.enabled": "false"},
        "ingest": {"enabled": True, "images": f"{HDFS}/data/caltech", "output": f"{HDFS}/op/images.parquet"},
        "featurize": {"enabled": True, "input": f"{HDFS}/op/images.parquet", "output": f"{HDFS}/op/features.parquet",
                      "executor": {"instances": 4}},
        "train": {"enabled": True, "features": f"{HDFS}/op/features.parquet", "output": f"{HDFS}/op/head", "workers": 4,
                  "trainingMaster": "sharing", "extraArgs": ["--epochs", "3"]},
        "predict": {"enabled": True, "model": f"{HDFS}/op/head", "images": f"{HDFS}/incoming",
                    "output": f"{HDFS}/op/predictions.parquet", "extraArgs": ["--top-k", "3"]},
    },
}  # fmt: skip

# the operator alone: no standalone cluster
OPERATOR_ONLY = {"standalone": {"enabled": False}, "sparkAuth": {"enabled": True}, "driverServiceAccount": {"name": "spark"},
                 "nodeSelector": NODE_SELECTOR,
                 "sparkOperator": {"enabled": True, "nodeSelector": {"pool": "operator"},
                                   "predict": {"enabled": True, "model": f"{HDFS}/op/head", "table": f"{HDFS}/op/images.parquet",
                                               "output": f"{HDFS}/op/predictions.parquet"}}}  # fmt: skip


@pytest.fixture(scope="module")
def helm():
    sys.path.insert(0, str(REPO / "scripts"))
    from get_helm import get_helm

    return str(get_helm(Path.home() / ".cache" / "sparkdl-tools"))


def _values_args(tmp_path, values):
    if values is None:
        return []
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


def _template(helm, tmp_path, values=None):
    res = subprocess.run([helm, "template", "rel", str(CHART), *_values_args(tmp_path, values)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return [d for d in yaml.safe_load_all(res.stdout) if d]


def _refused(helm, tmp_path, values=None, sets=()):
    args = [helm, "template", "rel", str(CHART), *_values_args(tmp_path, values)]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(args, capture_output=True, text=True)
    assert res.returncode != 0, f"rendered although it should not: {values or sets}"
    return res.stderr


def _validate_k8s(docs, tmp_path):
    """The Kubernetes kinds against the Kubernetes schemas (kubernetes-validate --strict: unknown fields fail)."""
    path = tmp_path / "k8s.yaml"
    path.write_text(yaml.safe_dump_all([d for d in docs if (d["apiVersion"], d["kind"]) not in CRDS]))
    exe = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or "kubernetes-validate"
    res = subprocess.run([exe, "--strict", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def _strict(node):
    """A CRD's structural schema as a JSON schema that refuses what the API server would drop or refuse: objects
    with `properties` get additionalProperties false (the server prunes unknown fields: a typo would vanish silently)
    unless marked x-kubernetes-preserve-unknown-fields; x-kubernetes-int-or-string becomes integer-or-string;
    nullable adds null."""
    if isinstance(node, list):
        return [_strict(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: _strict(sub) for name, sub in value.items()}
        elif key in ("default", "enum", "example"):
            out[key] = value
        else:
            out[key] = _strict(value)
    if out.pop("x-kubernetes-int-or-string", False) and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_validators():
    return {key: jsonschema.Draft7Validator(_strict(json.loads((CRD_SCHEMAS / name).read_text()))) for key, name in CRDS.items()}


def _crd_errors(validators, doc):
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[(doc["apiVersion"], doc["kind"])].iter_errors(doc)]
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]) or len(doc["metadata"]["name"]) > 63:
        errors.append(f"metadata/name: {doc['metadata']['name']!r} is not a DNS-1123 label")
    return errors


def _pods(docs):
    """(name, pod spec) of every pod template the chart renders itself (not the operator's)."""
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def _one(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def _parses(stage, args):
    """The stage's own argparse (what <jobsDir>/<stage>.py runs) accepts these arguments."""
    from sparkdl.cli import build_parser

    ns = build_parser(job=True).parse_args([stage, *args])
    return vars(ns)


@pytest.fixture(scope="module")
def rendered(helm, tmp_path_factory):
    """Each values set rendered once, and validated once."""
    out = {}
    for name, values in {"default": None, "custom": CUSTOM, "full": FULL, "operator_only": OPERATOR_ONLY}.items():
        tmp = tmp_path_factory.mktemp(name)
        out[name] = _template(helm, tmp, values)
    return out


@pytest.mark.parametrize("values", [None, CUSTOM, FULL], ids=["default", "custom", "full"])
def test_lint_strict(helm, tmp_path, values):
    res = subprocess.run([helm, "lint", "--strict", str(CHART), *_values_args(tmp_path, values)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("name", ["default", "custom", "full", "operator_only"])
def test_every_manifest_is_valid(rendered, crd_validators, tmp_path, name):
    docs = rendered[name]
    _validate_k8s(docs, tmp_path)
    custom = [d for d in docs if (d["apiVersion"], d["kind"]) in CRDS]
    for d in custom:
        assert not _crd_errors(crd_validators, d), (d["metadata"]["name"], _crd_errors(crd_validators, d))
    if name == "full":
        assert sorted(d["kind"] for d in custom) == ["ServiceMonitor"] * 2 + ["SparkApplication"] * 4


def test_crd_validation_refuses_typos_and_wrong_types(rendered, crd_validators):
    """The vendored schemas bite: a misspelled field, a wrong type, a value outside an enum each fail."""
    app = _one(rendered["full"], "SparkApplication", "rel-sparkdl-train")
    monitor = _one(rendered["full"], "ServiceMonitor", "rel-sparkdl-master")
    assert not _crd_errors(crd_validators, app) and not _crd_errors(crd_validators, monitor)

    def broken(doc, change):
        doc = copy.deepcopy(doc)
        change(doc)
        return _crd_errors(crd_validators, doc)

    assert broken(app, lambda d: d["spec"]["driver"].update(coers=d["spec"]["driver"].pop("cores")))  # misspelled
    assert broken(app, lambda d: d["spec"].update(mainApplicationFiel=d["spec"].pop("mainApplicationFile")))  # misspelled, required
    assert broken(app, lambda d: d["spec"]["executor"].update(instances="two"))  # wrong type
    assert broken(app, lambda d: d["spec"].update(mode="clustr"))  # not in the enum
    assert broken(app, lambda d: d["spec"]["driver"]["securityContext"].update(runAsNonroot=True))  # nested typo
    assert broken(app, lambda d: d["spec"]["driver"]["tolerations"][0].update(tolerationSeconds="1h"))
    assert broken(app, lambda d: d["spec"]["sparkConf"].update({"spark.executor.cores": 2}))  # sparkConf is string: string
    assert broken(app, lambda d: d["metadata"].update(name="Train_App"))
    assert broken(monitor, lambda d: d["spec"]["endpoints"][0].update(paht="/metrics"))
    assert broken(monitor, lambda d: d["spec"]["endpoints"][0].update(scheme="gopher"))


def test_default_render_is_locked_down(rendered):
    docs = rendered["default"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "NetworkPolicy", "Service", "Service", "ServiceAccount", "StatefulSet"]
    sa = _one(docs, "ServiceAccount", "rel-sparkdl")
    assert sa["automountServiceAccountToken"] is False
    for _, pod in _pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        assert pod["serviceAccountName"] == "rel-sparkdl" and "nodeSelector" not in pod and "imagePullSecrets" not in pod
        c = pod["containers"][0]
        assert c["securityContext"]["readOnlyRootFilesystem"] and c["readinessProbe"] and c["livenessProbe"]
        assert c["resources"]["limits"] and "SPARK_DAEMON_JAVA_OPTS" not in _env(c)  # no auth, no metrics by default
    worker = _one(docs, "StatefulSet", "rel-sparkdl-worker")
    assert worker["spec"]["replicas"] == 2 and "spark://rel-sparkdl-master:7077" in worker["spec"]["template"]["spec"]["containers"][0]["args"]


def test_custom_values_render_the_training_job(rendered):
    docs = rendered["custom"]
    kinds = [d["kind"] for d in docs]
    assert "NetworkPolicy" not in kinds and kinds.count("Job") == 1
    job = _one(docs, "Job", "rel-sparkdl-train")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    script = args.index(f"{JOBS_DIR}/train.py")  # image.jobsDir's default: the package's jobs in the image
    assert args[args.index("--training-master", script) + 1] == "sharing" and "--threshold" in args
    assert _parses("train", args[script + 1:])["training_master"] == "sharing"
    assert job["spec"]["template"]["spec"]["volumes"][-1]["persistentVolumeClaim"]["claimName"] == "models"
    hadoop = _one(docs, "ConfigMap", "rel-sparkdl-hadoop")
    assert HDFS in hadoop["data"]["core-site.xml"] and "use.datanode.hostname" in hadoop["data"]["hdfs-site.xml"]
    assert _one(docs, "StatefulSet", "rel-sparkdl-worker")["spec"]["replicas"] == 3
    pdb = _one(docs, "PodDisruptionBudget", "rel-sparkdl-worker")["spec"]
    assert pdb["minAvailable"] == "50%" and "maxUnavailable" not in pdb
    # the Spark drivers' account without the operator: made on request, with its Role
    assert _one(docs, "ServiceAccount", "spark")["automountServiceAccountToken"] is True
    assert _one(docs, "RoleBinding", "spark")["subjects"][0]["name"] == "spark" and _one(docs, "Role", "spark")["rules"]


def test_jobs_run_the_stage_scripts_in_jobs_dir_with_options_the_cli_accepts(rendered):
    docs = rendered["full"]
    expected = {"ingest": ("images", f"{HDFS}/data/caltech"), "featurize": ("weights", f"{HDFS}/models/vgg16.pth"),
                "train": ("features", f"{HDFS}/sparkdl/features.parquet")}  # fmt: skip
    for stage, (option, value) in expected.items():
        pod = _one(docs, "Job", f"rel-sparkdl-{stage}")["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["command"] == ["spark-submit"] and c["image"] == "registry.example/sparkdl:0.1.0"
        script = c["args"].index(f"/opt/sparkdl/jobs/{stage}.py")
        assert c["args"][:2] == ["--master", "spark://rel-sparkdl-master:7077"]
        assert _parses(stage, c["args"][script + 1:])[option] == value
        assert pod["restartPolicy"] == "Never" and c["securityContext"]["readOnlyRootFilesystem"]
    assert _one(docs, "Job", "rel-sparkdl-train")["spec"]["template"]["spec"]["containers"][0]["resources"] == FULL["train"]["resources"]


def test_scheduling_pull_secrets_and_service_accounts_reach_every_pod(rendered):
    docs = rendered["full"]
    pods = _pods(docs)
    assert sorted(n for n, _ in pods) == ["rel-sparkdl-featurize", "rel-sparkdl-ingest", "rel-sparkdl-master",
                                          "rel-sparkdl-serve", "rel-sparkdl-train", "rel-sparkdl-worker"]  # fmt: skip
    for name, pod in pods:
        own = {"rel-sparkdl-worker": {"pool": "spark-workers"}, "rel-sparkdl-ingest": {"pool": "io"}}
        want = own.get(name, NODE_SELECTOR)  # a component's own wins
        assert pod["nodeSelector"] == want and pod["tolerations"] == TOLERATIONS and pod["affinity"] == AFFINITY, name
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], name
        assert pod["serviceAccountName"] == "sparkdl-sa" and pod["automountServiceAccountToken"] is False, name
    apps = [d for d in docs if d["kind"] == "SparkApplication"]
    for app in apps:
        assert app["spec"]["imagePullSecrets"] == ["regcred"]
        for role in ("driver", "executor"):
            pod = app["spec"][role]
            assert pod["nodeSelector"] == NODE_SELECTOR and pod["tolerations"] == TOLERATIONS and pod["affinity"] == AFFINITY
            assert pod["podSecurityContext"]["runAsNonRoot"] is True and pod["securityContext"]["readOnlyRootFilesystem"]
            assert {"name": "tmp", "mountPath": "/tmp"} in pod["volumeMounts"]
            assert pod["labels"]["app.kubernetes.io/instance"] == "rel"  # the release's NetworkPolicy covers them
        assert app["spec"]["driver"]["serviceAccount"] == "rel-sparkdl-spark-driver"
    sa = _one(docs, "ServiceAccount", "sparkdl-sa")
    assert sa["automountServiceAccountToken"] is False and sa["metadata"]["annotations"] == {"example.com/role": "spark"}
    driver_sa = _one(docs, "ServiceAccount", "rel-sparkdl-spark-driver")
    assert driver_sa["automountServiceAccountToken"] is True  # the drivers create their executor pods
    role = _one(docs, "Role", "rel-sparkdl-spark-driver")
    rule = role["rules"][0]
    assert set(rule["resources"]) == {"pods", "services", "configmaps", "persistentvolumeclaims"}
    assert {"create", "get", "list", "watch", "delete", "deletecollection"} <= set(rule["verbs"]) and rule["apiGroups"] == [""]
    binding = _one(docs, "RoleBinding", "rel-sparkdl-spark-driver")
    assert binding["subjects"][0]["name"] == "rel-sparkdl-spark-driver" and binding["roleRef"]["name"] == "rel-sparkdl-spark-driver"


def test_spark_applications(rendered):
    import pyspark

    apps = {d["metadata"]["name"]: d["spec"] for d in rendered["full"] if d["kind"] == "SparkApplication"}
    assert sorted(apps) == ["rel-sparkdl-featurize", "rel-sparkdl-ingest", "rel-sparkdl-predict", "rel-sparkdl-train"]
    for name, spec in apps.items():
        stage = name.rsplit("-", 1)[1]
        assert (spec["type"], spec["pythonVersion"], spec["mode"]) == ("Python", "3", "cluster")
        assert spec["mainApplicationFile"] == f"local:///opt/sparkdl/jobs/{stage}.py"
        assert spec["image"] == "registry.example/sparkdl:0.1.0" and spec["hadoopConfigMap"] == "rel-sparkdl-hadoop"
        assert spec["sparkVersion"] == pyspark.__version__  # the pyspark the image installs (the same pin as here)
        assert spec["sparkConf"]["spark.authenticate"] == "true" and spec["sparkConf"]["spark.eventLog.enabled"] == "false"
        assert spec["restartPolicy"]["type"] == "OnFailure" and spec["timeToLiveSeconds"] == 3600
        _parses(stage, spec["arguments"])
    assert apps["rel-sparkdl-featurize"]["executor"]["instances"] == 4 and apps["rel-sparkdl-train"]["executor"]["instances"] == 2
    train = _parses("train", apps["rel-sparkdl-train"]["arguments"])
    assert (train["training_master"], train["workers"], train["epochs"]) == ("sharing", 4, 3)  # extraArgs come last and win
    predict = _parses("predict", apps["rel-sparkdl-predict"]["arguments"])
    assert predict["images"] == f"{HDFS}/incoming" and predict["table"] is None and predict["top_k"] == 3
    only = rendered["operator_only"]
    assert not [d for d in only if d["kind"] in ("Deployment", "StatefulSet", "Job", "PodDisruptionBudget")]
    (app,) = [d["spec"] for d in only if d["kind"] == "SparkApplication"]
    assert _parses("predict", app["arguments"])["table"] == f"{HDFS}/op/images.parquet"
    assert app["driver"]["serviceAccount"] == "spark" and not [d for d in only if d["kind"] in ("Role", "RoleBinding")]
    assert app["mainApplicationFile"] == f"local://{JOBS_DIR}/predict.py"
    assert app["driver"]["nodeSelector"] == app["executor"]["nodeSelector"] == {"pool": "operator"}  # its own wins


def test_spark_auth_reaches_master_workers_and_jobs(rendered):
    docs = rendered["full"]
    for name in ("rel-sparkdl-master", "rel-sparkdl-worker"):
        c = next(p for n, p in _pods(docs) if n == name)["containers"][0]
        env = _env(c)
        assert env["_SPARK_AUTH_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "spark-rpc", "key": "secret"}
        assert "-Dspark.authenticate=true" in env["SPARK_DAEMON_JAVA_OPTS"]["value"].split()
        assert not any("spark-rpc" in a or "secret=" in a for a in c["args"] + c["command"])
    for stage in ("ingest", "featurize", "train"):
        c = _one(docs, "Job", f"rel-sparkdl-{stage}")["spec"]["template"]["spec"]["containers"][0]
        assert _env(c)["SPARK_AUTH_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "spark-rpc", "key": "secret"}
        confs = [c["args"][i + 1] for i, a in enumerate(c["args"]) if a == "--conf"]
        assert "spark.authenticate=true" in confs and "spark.authenticate.secret=$(SPARK_AUTH_SECRET)" in confs
    for d in rendered["default"]:
        assert "_SPARK_AUTH_SECRET" not in json.dumps(d)


def test_pdb_service_monitors_and_server(rendered):
    docs = rendered["full"]
    pdb = _one(docs, "PodDisruptionBudget", "rel-sparkdl-worker")
    assert pdb["spec"]["maxUnavailable"] == 1 and "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "worker"
    master_sm = _one(docs, "ServiceMonitor", "rel-sparkdl-master")["spec"]
    serve_sm = _one(docs, "ServiceMonitor", "rel-sparkdl-serve")["spec"]
    assert master_sm["endpoints"][0]["path"] == "/metrics/master/prometheus/" and master_sm["endpoints"][0]["port"] == "http"
    assert serve_sm["endpoints"][0]["path"] == "/metrics" and serve_sm["endpoints"][0]["authorization"]["credentials"]["name"] == "serve-token"
    for sm, component in ((master_sm, "master"), (serve_sm, "serve")):
        svc = _one(docs, "Service", f"rel-sparkdl-{component}")
        assert sm["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert "http" in [p["name"] for p in svc["spec"]["ports"]]
    opts = _env(next(p for n, p in _pods(docs) if n == "rel-sparkdl-master")["containers"][0])["SPARK_DAEMON_JAVA_OPTS"]["value"]
    assert "-Dspark.metrics.conf.*.sink.prometheusServlet.class=org.apache.spark.metrics.sink.PrometheusServlet" in opts.split()
    assert "-Dspark.metrics.conf.master.sink.prometheusServlet.path=/metrics/master/prometheus" in opts.split()
    policy = _one(docs, "NetworkPolicy", "rel-sparkdl-master-metrics")
    assert policy["spec"]["ingress"][0]["from"] == FULL["metrics"]["serviceMonitor"]["allowFrom"]
    # the server: probed, locked down, its token and its own NetworkPolicy
    serve = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "serve"]
    assert sorted(d["kind"] for d in serve) == ["Deployment", "NetworkPolicy", "Service", "ServiceMonitor"]
    pod = _one(docs, "Deployment", "rel-sparkdl-serve")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["resources"]["limits"] and c["command"] == ["sparkdl", "serve"]
    args = c["args"]
    assert args[args.index("--model") + 1] == f"{HDFS}/sparkdl/head" and args[args.index("--host") + 1] == "0.0.0.0"
    assert args[args.index("--token-file") + 1] == "/etc/sparkdl/token/token"
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # scratch for the bundle on a read-only root
    assert any(v.get("secret", {}).get("secretName") == "serve-token" for v in pod["volumes"])
    assert _one(docs, "Service", "rel-sparkdl-serve")["spec"]["ports"][0]["port"] == 8000
    assert _one(docs, "NetworkPolicy", "rel-sparkdl-serve")["spec"]["ingress"][0]["from"] == FULL["serve"]["allowFrom"]


OP = {"enabled": True}
TRAIN_OP = {"enabled": True, "features": f"{HDFS}/f.parquet", "output": f"{HDFS}/head"}


@pytest.mark.parametrize("values, reason", [
    ({"train": {"enabled": True}}, "train.features"),
    ({"serve": {"enabled": True}}, "serve.model"),
    ({"ingest": {"enabled": True, "images": f"{HDFS}/data"}}, "ingest.output"),
    ({"featurize": {"enabled": True, "output": f"{HDFS}/f.parquet"}}, "featurize.input"),
    ({"standalone": {"enabled": False}, "train": {"enabled": True, "features": f"{HDFS}/f.parquet"}}, "standalone.enabled"),
    ({"sparkAuth": {"enabled": True}}, "sparkAuth.secretName"),
    ({"worker": {"pdb": {"enabled": True, "minAvailable": 1}}}, "exactly one of worker.pdb.minAvailable"),
    ({"sparkOperator": {**OP, "train": {**TRAIN_OP, "output": "/models/head"}}}, "must be a Hadoop URI"),
    ({"sparkOperator": {**OP, "train": {**TRAIN_OP, "output": "file:///models/head"}}}, "must be a Hadoop URI"),
    ({"sparkOperator": {**OP, "train": {**TRAIN_OP, "workers": 5}}}, "needs 5 task slots"),
    ({"sparkOperator": {**OP, "train": {**TRAIN_OP, "workers": 3}, "sparkConf": {"spark.task.cpus": "2"}}}, "gives 2"),
    ({"sparkOperator": {**OP, "predict": {"enabled": True, "model": "m", "images": "a", "table": "b", "output": f"{HDFS}/p"}}}, "exactly one of"),
    ({"sparkOperator": {**OP, "ingest": {"enabled": True, "images": f"{HDFS}/data"}}}, "sparkOperator.ingest.enabled needs"),
    ({"standalone": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}}, "neither is on"),
], ids=lambda x: x if isinstance(x, str) else None)  # fmt: skip
def test_inconsistent_values_fail_with_the_reason(helm, tmp_path, values, reason):
    assert reason in _refused(helm, tmp_path, values)


@pytest.mark.parametrize("setting, complaint", [
    ("worker.replicas=-1", "/worker/replicas"), ("worker.cores=abc", "/worker/cores"),
    ("train.trainingMaster=bogus", "/train/trainingMaster"), ("worker.memory=lots", "/worker/memory"),
    ("serve.port=70000", "/serve/port"), ("bogus=1", "bogus"),
    ("image.jobsDir=jobs", "/image/jobsDir"), ("imagePullSecrets[0].nam=x", "/imagePullSecrets/0"),
    ("serviceAccount.create=maybe", "/serviceAccount/create"), ("nodeSelector.pool=1", "/nodeSelector/pool"),
    ("tolerations=none", "/tolerations"), ("worker.pdb.maxUnavailable=some", "/worker/pdb/maxUnavailable"),
    ("metrics.serviceMonitor.interval=often", "/metrics/serviceMonitor/interval"),
    ("featurize.backbone=resnet", "/featurize/backbone"), ("ingest.bogus=1", "/ingest"),
    ("sparkOperator.train.trainingMaster=bogus", "/sparkOperator/train/trainingMaster"),
    ("sparkOperator.executor.instances=0", "/sparkOperator/executor/instances"),
    ("sparkOperator.driver.memory=lots", "/sparkOperator/driver/memory"),
    ("sparkOperator.driver.instances=2", "/sparkOperator/driver"),
    ("sparkOperator.restartPolicy.type=Sometimes", "/sparkOperator/restartPolicy/type"),
    ("sparkOperator.predict.bogus=1", "/sparkOperator/predict"), ("sparkAuth.secretKey=", "/sparkAuth/secretKey"),
])  # fmt: skip
def test_values_schema_rejects_bad_values(helm, tmp_path, setting, complaint):
    err = _refused(helm, tmp_path, sets=[setting])
    assert "schema" in err and complaint in err, err



# the install commands of helm/README-section.md ("Run on Kubernetes"), as values
README_EXAMPLES = {
    "native": ({"standalone": {"enabled": False}, "driverServiceAccount": {"create": True}, "hadoop": {"defaultFS": "hdfs://nn:9000"}},
               ["ConfigMap", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]),
    "operator": ({"standalone": {"enabled": False}, "hadoop": {"defaultFS": "hdfs://nn:9000"},
                  "sparkOperator": {"enabled": True, "executor": {"instances": 2, "cores": 2},
                                    "train": {"enabled": True, "features": "hdfs://nn:9000/sparkdl/features.parquet",
                                              "output": "hdfs://nn:9000/sparkdl/head", "workers": 4}}},
                 ["ConfigMap", "NetworkPolicy", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount", "SparkApplication"]),
    "auth": ({"sparkAuth": {"enabled": True, "secretName": "spark-rpc"}},
             ["ConfigMap", "Deployment", "NetworkPolicy", "Service", "Service", "ServiceAccount", "StatefulSet"]),
}  # fmt: skip


@pytest.mark.parametrize("example", sorted(README_EXAMPLES))
def test_readme_examples_render(helm, tmp_path, crd_validators, example):
    values, kinds = README_EXAMPLES[example]
    docs = _template(helm, tmp_path, values)
    assert sorted(d["kind"] for d in docs) == kinds
    for d in docs:
        if (d["apiVersion"], d["kind"]) in CRDS:
            assert not _crd_errors(crd_validators, d)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    if example == "native":
        assert {("ServiceAccount", "rel-sparkdl-spark-driver"), ("ConfigMap", "rel-sparkdl-hadoop")} <= names


def test_notes_say_where_things_are(helm, tmp_path):
    res = subprocess.run([helm, "install", "rel", str(CHART), "--dry-run=client", *_values_args(tmp_path, FULL)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr
    notes = res.stdout[res.stdout.index("NOTES:"):]
    assert "port-forward svc/rel-sparkdl-master 8080" in notes and "logs -f job/rel-sparkdl-featurize" in notes
    assert "get sparkapplications" in notes and "logs -f rel-sparkdl-predict-driver" in notes
    assert "/opt/sparkdl/jobs/train.py" in notes and "port-forward svc/rel-sparkdl-serve 8000" in notes
