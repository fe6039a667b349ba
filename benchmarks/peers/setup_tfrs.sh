#!/usr/bin/env bash
# Create the TensorFlow Recommenders (TFRS) peer environment, outside the repository.
#
#   bash benchmarks/peers/setup_tfrs.sh                # -> ~/.cache/recall-peers/tfrs
#   RECALL_PEERS_TFRS=/some/dir bash benchmarks/peers/setup_tfrs.sh
#   bash benchmarks/peers/setup_tfrs.sh /some/dir      # same, as an argument
#
# TFRS is a Keras 2 library: it needs tf-keras (the Keras 2 package) of the same minor version as
# TensorFlow, and TF_USE_LEGACY_KERAS=1 so that `tf.keras` is tf-keras rather than Keras 3
# (tfrs_throughput.py sets it itself before importing TensorFlow). TensorFlow is pinned to the
# version recall's own environment uses, so both systems run the same kernels.
# Re-running is safe: an existing venv is reused and the pins re-applied.
set -euo pipefail

VENV="${1:-${RECALL_PEERS_TFRS:-$HOME/.cache/recall-peers/tfrs}}"
PYTHON="${PYTHON:-python3}"
TF_VERSION="${TF_VERSION:-2.21.0}"        # recall's TensorFlow (benchmarks/RESULTS.md)
TFRS_VERSION="${TFRS_VERSION:-0.7.7}"     # the version of the reference figures; newest on PyPI in 2026-12

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
case "$(cd "$(dirname "$VENV")" 2>/dev/null && pwd)/" in
  "$here"/*) echo "setup_tfrs.sh: $VENV is inside the repository; choose a directory outside it" >&2; exit 2 ;;
esac

tf_minor="${TF_VERSION%.*}"               # 2.21.0 -> 2.21: tf-keras must match TF's minor version
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# tensorflow-cpu (the same build recall uses; no GPU here). tf-keras and TFRS declare a dependency
# on the distribution named `tensorflow`, which tensorflow-cpu provides under another name, so they
# are installed with --no-deps (else pip would add a second, full TensorFlow wheel). Their other
# requirement, absl-py, comes with TensorFlow. `pip check` therefore reports "tensorflow not
# installed" for both; that is expected.
"$VENV/bin/python" -m pip install --quiet "tensorflow-cpu==$TF_VERSION" numpy pandas pyarrow
"$VENV/bin/python" -m pip install --quiet --no-deps "tf-keras~=$tf_minor.0" \
  "tensorflow-recommenders==$TFRS_VERSION"

TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import tensorflow as tf
import tensorflow_recommenders as tfrs
assert tf.keras.__name__.startswith("tf_keras"), f"tf.keras is {tf.keras.__name__}, not tf_keras"
print("ok: tensorflow", tf.__version__, "| tf-keras", md.version("tf-keras"),
      "| tensorflow-recommenders", md.version("tensorflow-recommenders"))
PY
echo "venv: $VENV  (python: $VENV/bin/python)"
