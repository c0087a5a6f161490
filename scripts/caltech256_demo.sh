#!/usr/bin/env bash
# The classic Caltech-256 transfer-learning demo on Spark (Deeplearning4j's setup):
#   256_ObjectCategories (257 classes incl. 257.clutter) -> ingest -> VGG16 cut after fc2 (4096-d features)
#   -> softmax head, parameter averaging (Nesterov momentum 0.8, lr 0.01, batch 32 per worker, averaging frequency 5)
#   -> evaluate on the held-out test split -> HTML report.
# Published figure for this setup: about 75 % test accuracy (README "Caltech-256").
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/caltech256_demo.sh --data <256_ObjectCategories dir | 256_ObjectCategories.tar | hdfs://... dir>
                                  --weights <VGG16 weights: .pth/.pt, .safetensors or Keras .h5>
                                  [--master-url local[*] | spark://HOST:7077 | yarn]
                                  [--fs hdfs://NN:9000/user/$USER [--webhdfs http://NN:9870]]
                                  [--workdir sparkdl-work/caltech256] [--workers 2] [--epochs 10]
                                  [--backbone vgg16] [--random-init]

  --data        the image folders (a directory, the original tar, or a Hadoop URI every executor can read)
  --weights     pretrained VGG16 weights: a file on the driver or a Hadoop URI (shipped to the executors by Spark);
                never downloaded from the internet
  --master-url  Spark master for spark-submit (default local[*])
  --fs          keep the data on HDFS under this base URI: local image folders and weights are uploaded once (over
                WebHDFS, `sparkdl fs put`) to <fs>/sparkdl/caltech256/, the tables are written there; the model stays
                in the work dir
  --webhdfs     the NameNode's HTTP endpoint for the uploads (default: from $HADOOP_CONF_DIR, else <fs host>:9870)
  --backbone / --random-init  for smoke tests only (e.g. --backbone tiny --random-init)
USAGE
}

DATA="" WEIGHTS="" MASTER_URL="local[*]" FS="" WEBHDFS="" WORKDIR="sparkdl-work/caltech256" WORKERS=2 EPOCHS=10
BACKBONE="vgg16" RANDOM_INIT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data) DATA="$2"; shift 2 ;;
    --weights) WEIGHTS="$2"; shift 2 ;;
    --master-url) MASTER_URL="$2"; shift 2 ;;
    --fs) FS="${2%/}"; shift 2 ;;
    --webhdfs) WEBHDFS="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --backbone) BACKBONE="$2"; shift 2 ;;
    --random-init) RANDOM_INIT="--random-init"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "caltech256_demo: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$DATA" ]]; then echo "caltech256_demo: --data is required" >&2; usage >&2; exit 2; fi
if [[ -z "$WEIGHTS" && -z "$RANDOM_INIT" ]]; then
  echo "caltech256_demo: --weights is required (a VGG16 weights file; nothing is downloaded)" >&2; exit 2
fi
if [[ -n "$WEIGHTS" && "$WEIGHTS" != *://* && ! -f "$WEIGHTS" ]]; then echo "caltech256_demo: weights file $WEIGHTS not found" >&2; exit 1; fi

PYTHON="${PYTHON:-python3}"
SPARK_SUBMIT="${SPARK_SUBMIT:-$(command -v spark-submit || "$PYTHON" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))')}"
JOBS="$(cd "$(dirname "${BASH_SOURCE[0]}")/../jobs" && pwd)"
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$(command -v "$PYTHON")}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}"
mkdir -p "$WORKDIR"
WORKDIR="$(cd "$WORKDIR" && pwd)"

# the image folders: a tar is unpacked into the work dir; a directory may hold 256_ObjectCategories or be it
if [[ "$DATA" == *.tar || "$DATA" == *.tar.gz || "$DATA" == *.tgz ]]; then
  echo "caltech256_demo: unpacking $DATA" >&2
  mkdir -p "$WORKDIR/data"
  tar -xf "$DATA" -C "$WORKDIR/data"
  DATA="$WORKDIR/data"
fi
if [[ "$DATA" != *://* ]]; then
  [[ -d "$DATA/256_ObjectCategories" ]] && DATA="$DATA/256_ObjectCategories"
  [[ -d "$DATA" ]] || { echo "caltech256_demo: $DATA is not a directory" >&2; exit 1; }
  DATA="file://$(cd "$DATA" && pwd)"
fi
OUT="${FS:+$FS/sparkdl/caltech256}"
OUT="${OUT:-file://$WORKDIR}"

if [[ -n "$FS" ]]; then  # local inputs go to HDFS first, so that executors on other machines can read them
  fs() { "$PYTHON" -m sparkdl.cli fs "$@" ${WEBHDFS:+--webhdfs "$WEBHDFS"}; }
  upload_once() {  # local, remote: 30k small files take a while over WebHDFS (BENCHMARKS.md), VGG16 is 528 MB
    if fs exists "$2"; then
      echo "caltech256_demo: $2 is already there (remove it to upload again)" >&2
    else
      echo "caltech256_demo: uploading $1 to $2" >&2
      fs put "$1" "$2" --quiet >/dev/null
    fi
  }
  if [[ "$DATA" == file://* ]]; then
    upload_once "${DATA#file://}" "$OUT/256_ObjectCategories"
    DATA="$OUT/256_ObjectCategories"
  fi
  if [[ -n "$WEIGHTS" && "$WEIGHTS" != *://* ]]; then
    upload_once "$WEIGHTS" "$OUT/weights/$(basename "$WEIGHTS")"
    WEIGHTS="$OUT/weights/$(basename "$WEIGHTS")"
  fi
fi

submit() {  # stage, args...: one spark-submit per stage, summary JSON kept in the work dir
  local stage="$1"; shift
  echo "caltech256_demo: $stage" >&2
  "$SPARK_SUBMIT" --master "$MASTER_URL" --conf spark.ui.showConsoleProgress=false \
    "$JOBS/$stage.py" "$@" --json --quiet > "$WORKDIR/$stage.json"
}

submit ingest --images "$DATA" --output "$OUT/images.parquet" --overwrite
submit featurize --input "$OUT/images.parquet" --output "$OUT/features.parquet" --backbone "$BACKBONE" \
  ${WEIGHTS:+--weights "$WEIGHTS"} $RANDOM_INIT --overwrite
submit train --features "$OUT/features.parquet" --output "$WORKDIR/model" --overwrite --training-master averaging \
  --workers "$WORKERS" --epochs "$EPOCHS" --head softmax --optimizer nesterov --momentum 0.8 --lr 0.01 \
  --batch-size-per-worker 32 --averaging-frequency 5
submit evaluate --model "$WORKDIR/model" --features "$OUT/features.parquet" --split test
"$PYTHON" -m sparkdl.cli report --model "$WORKDIR/model" --quiet --json > "$WORKDIR/report.json"
"$PYTHON" - "$WORKDIR" <<'PY'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
ev = json.loads((work / "evaluate.json").read_text())
report = json.loads((work / "report.json").read_text())["report"]
print(f"caltech256_demo: test accuracy {ev['accuracy']:.4f} (macro F1 {ev['macro_f1']:.4f}) on {ev['n']} images")
print(f"caltech256_demo: model {work / 'model'}, report {report}")
PY
