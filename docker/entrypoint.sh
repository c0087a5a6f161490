#!/usr/bin/env bash
# The sparkdl image's entrypoint, under tini: what Spark's Kubernetes scheduler expects of
# `spark.kubernetes.container.image` (modelled on the entrypoint of Spark's own images, written for this image).
#   driver ARGS...    spark-submit in client mode inside the driver pod (spark-submit --master k8s://... cluster mode)
#   executor          the executor backend, from the SPARK_* variables Spark sets on executor pods
#   anything else     run as given (sparkdl ..., python ..., spark-submit ...)
set -euo pipefail

die() { echo "sparkdl entrypoint: $*" >&2; exit 64; }
need() { for v in "$@"; do [ -n "${!v:-}" ] || die "$v is not set (Spark sets it on the pods it starts; set it to run this by hand)"; done; }

SPARK_HOME="${SPARK_HOME:-$(python -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))' 2>/dev/null || true)}"
[ -n "$SPARK_HOME" ] || die "SPARK_HOME is not set and pyspark is not importable"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

# SPARK_JAVA_OPT_0, SPARK_JAVA_OPT_1, ... in numeric order (Spark passes the executor's JVM options this way)
java_opts=()
while IFS= read -r name; do
  java_opts+=("${!name}")
done < <(compgen -e | grep -E '^SPARK_JAVA_OPT_[0-9]+$' | sort -t_ -k4 -n)

classpath="${SPARK_HOME}/jars/*"
[ -n "${SPARK_CLASSPATH:-}" ] && classpath="${SPARK_CLASSPATH}:${classpath}"
[ -n "${SPARK_EXTRA_CLASSPATH:-}" ] && classpath="${classpath}:${SPARK_EXTRA_CLASSPATH}"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}"

case "${1:-}" in
  driver)
    shift
    need SPARK_DRIVER_BIND_ADDRESS
    exec "${SPARK_HOME}/bin/spark-submit" \
      --conf "spark.driver.bindAddress=${SPARK_DRIVER_BIND_ADDRESS}" \
      --conf "spark.executorEnv.SPARK_DRIVER_POD_IP=${SPARK_DRIVER_BIND_ADDRESS}" \
      --deploy-mode client "$@"
    ;;
  executor)
    shift
    need SPARK_EXECUTOR_MEMORY SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_APPLICATION_ID \
         SPARK_EXECUTOR_POD_IP
    exec "$JAVA" "${java_opts[@]}" -Xms"${SPARK_EXECUTOR_MEMORY}" -Xmx"${SPARK_EXECUTOR_MEMORY}" -cp "$classpath" \
      org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
      --driver-url "${SPARK_DRIVER_URL}" --executor-id "${SPARK_EXECUTOR_ID}" --cores "${SPARK_EXECUTOR_CORES}" \
      --app-id "${SPARK_APPLICATION_ID}" --hostname "${SPARK_EXECUTOR_POD_IP}" \
      --resourceProfileId "${SPARK_RESOURCE_PROFILE_ID:-0}" --podName "${SPARK_EXECUTOR_POD_NAME:-$(hostname)}"
    ;;
  "")
    die "nothing to run: give driver, executor or a command (e.g. sparkdl --help)"
    ;;
  *)
    exec "$@"
    ;;
esac
