#!/usr/bin/env bash
# By-hand check (not run in CI: ~3 minutes, two of them Spark giving up on an unanswered master) of how
# helm/sparkdl wires Spark standalone RPC authentication and the master's PrometheusServlet, on the pyspark of a
# virtual environment, all on 127.0.0.1:
#   master, worker:  SPARK_DAEMON_JAVA_OPTS=-Dspark.authenticate=true ..., the secret in _SPARK_AUTH_SECRET
#   driver:          spark-submit --conf spark.authenticate=true --conf spark.authenticate.secret=SECRET
# Expects: the worker registers; a job with the secret runs; a wrong secret and no auth are refused;
# /metrics/master/prometheus/ answers in Prometheus' text format.
#     scripts/check_standalone_auth.sh [VENV]      (default: .venv)
set -uo pipefail
VENV="$(cd "${1:-.venv}" && pwd)"
SPARK_HOME="$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
WORK="$(mktemp -d)"
export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$VENV/bin/python" SPARK_WORKER_DIR="$WORK/work"
unset HADOOP_CONF_DIR
OPTS="-Dspark.authenticate=true"
OPTS+=" -Dspark.metrics.conf.*.sink.prometheusServlet.class=org.apache.spark.metrics.sink.PrometheusServlet"
OPTS+=" -Dspark.metrics.conf.*.sink.prometheusServlet.path=/metrics/prometheus"
OPTS+=" -Dspark.metrics.conf.master.sink.prometheusServlet.path=/metrics/master/prometheus"
SECRET="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
PORT=17077 UI=18080
cat > "$WORK/job.py" <<'PY'
from pyspark.sql import SparkSession
s = SparkSession.builder.getOrCreate()
print("SUM", s.sparkContext.parallelize(range(100), 2).sum())
s.stop()
PY
_SPARK_AUTH_SECRET="$SECRET" SPARK_DAEMON_JAVA_OPTS="$OPTS" "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
  --host 127.0.0.1 --port $PORT --webui-port $UI > "$WORK/master.log" 2>&1 &
MASTER=$!
_SPARK_AUTH_SECRET="$SECRET" SPARK_DAEMON_JAVA_OPTS="$OPTS" "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
  --host 127.0.0.1 --cores 1 --memory 1g --webui-port 18081 spark://127.0.0.1:$PORT > "$WORK/worker.log" 2>&1 &
WORKER=$!
trap 'kill $WORKER $MASTER 2>/dev/null; wait 2>/dev/null' EXIT
fails=0
check() { if eval "$2"; then echo "ok:   $1"; else echo "FAIL: $1"; fails=$((fails + 1)); fi; }
for _ in $(seq 60); do grep -q "Successfully registered with master" "$WORK/worker.log" && break; sleep 1; done
check "the worker registers with the master (same secret)" 'grep -q "Successfully registered with master" "$WORK/worker.log"'
metrics="$(curl -s --noproxy '*' "http://127.0.0.1:$UI/metrics/master/prometheus/")"
check "/metrics/master/prometheus/ serves Prometheus text" '[[ "$metrics" == *"metrics_master_aliveWorkers"* ]]'
submit() { timeout 150 "$SPARK_HOME/bin/spark-submit" --master spark://127.0.0.1:$PORT --conf spark.ui.enabled=false \
  --conf spark.executor.memory=512m "$@" "$WORK/job.py" 2>&1; }
out="$(submit --conf spark.authenticate=true --conf spark.authenticate.secret="$SECRET")"
check "a job with the secret runs on the worker" '[[ "$out" == *"SUM 4950"* ]]'
out="$(submit --conf spark.authenticate=true --conf spark.authenticate.secret=not-the-secret-at-all)"
check "a wrong secret is refused" '[[ "$out" != *"SUM 4950"* && "$out" == *"All masters are unresponsive"* ]]'
out="$(submit)"
check "no authentication is refused" '[[ "$out" != *"SUM 4950"* && "$out" == *"All masters are unresponsive"* ]]'
echo "logs: $WORK"
exit $((fails > 0))
