#!/usr/bin/env bash
# The prepared GPU measurements, one command each, on the lent GPU machine once ../shared/gpu/README.md's chunks
# are installed (TensorFlow-cpu for tf.data, Keras 3, Hydra, MLflow in /tmp/site; the data, staged with
# GPU_DATA="../shared/data/dogs_vs_cats ../shared/data/cifar10", under /tmp/gpu-data). Each stops itself inside
# its budget, keeps what it measured and prints its table last; results go to $OUT (the device tool brings them
# back) or benchmarks/results/.
#
#   bash benchmarks/gpu_check.sh throughput 420   # issue 18: precision x pipeline vs in-memory ceiling (~7 min)
#   bash benchmarks/gpu_check.sh speedrun 420     # issue 19: cifar10_speed, 3 seeds + variants (~7 min)
#   bash benchmarks/gpu_check.sh cv-blend 540     # issue 16: the Dogs vs Cats blend recipe's members, 5 folds each, and their blend
#   bash benchmarks/gpu_check.sh dry-run          # on a CPU, seconds: the throughput script on tiny data
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:?usage: gpu_check.sh throughput|speedrun|cv-blend|dry-run [budget seconds]}
BUDGET=${2:-420}
DATA=${GPU_DATA_DIR:-/tmp/gpu-data}
RESULTS=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
gpu=$("$PY" -c "import sys; sys.path.insert(0, 'benchmarks'); import benchutil; print(benchutil.gpu_name())")
case "$MODE" in
  throughput)
    "$PY" benchmarks/gpu_train.py --budget "$BUDGET" --dogs "$DATA/dogs_vs_cats" --cifar "$DATA/cifar10" \
        --work /tmp/kagglepipe-gpu --out "$RESULTS/gpu_train-$gpu.json" ;;
  speedrun)
    "$PY" benchmarks/time_to_accuracy.py --experiment cifar10_speed --repeats 3 --budget "$BUDGET" \
        --labels "$DATA/cifar10/test_labels_for_benchmarks.csv" --out "$RESULTS/time_to_accuracy-cifar10_speed-$gpu.json" \
        --variant "train.epochs=12" --variant "train.lr=1.2 train.weight_decay=7.0e-3" \
        -- dataset.raw_dir="$DATA/cifar10" paths.processed=/tmp/kagglepipe-gpu/processed tracking.enabled=false ;;
  cv-blend)
    "$PY" benchmarks/cv_blend.py --budget "$BUDGET" --raw "$DATA/dogs_vs_cats" --work /tmp/kagglepipe-cv \
        --out "$RESULTS/cv_blend-$gpu.json" ;;
  dry-run)
    KERAS_BACKEND=${KERAS_BACKEND_DRY:-tensorflow} "$PY" benchmarks/gpu_train.py --dry-run --out /tmp/gpu_train-dry-run.json ;;
  *) echo "error: unknown mode $MODE; use throughput, speedrun, cv-blend or dry-run" >&2; exit 2 ;;
esac
