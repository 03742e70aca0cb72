#!/usr/bin/env bash
# The GPU check of issue 29 in one command, on a machine with an NVIDIA GPU and no network:
#
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --budget-s 300 | --quick --device cpu]
#
# Needs the folder benchmarks/make_gpu_bundle.py builds (.gpu_bundle: fp16 encoder, RouterBench
# data, wheels of the dependencies the GPU image lacks) beside the repository's files. Installs
# nothing system-wide: when this package cannot be imported, the bundle's wheels go to a scratch
# folder and the package is made importable from the working tree (neural_router/ with training/,
# serving/ and configs/ linked in, as pyproject.toml maps them). Writes gpu_check.json and
# gpu_check.log to $OUT (default: runs/gpu_check). Environment: PYTHON (default python3),
# GPU_BUNDLE (default .gpu_bundle).
set -uo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUNDLE=${GPU_BUNDLE:-$REPO/.gpu_bundle}
OUT=${OUT:-$REPO/runs/gpu_check}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
mkdir -p "$OUT"

if [ ! -d "$BUNDLE/encoder" ]; then
  echo "gpu_check: error: $BUNDLE/encoder is missing: run 'python benchmarks/make_gpu_bundle.py' and carry .gpu_bundle" >&2
  exit 2
fi

if ! "$PY" -c "import neural_router.training, neural_router.serving, fastapi, pydantic_settings, datasets" 2>/dev/null; then
  if compgen -G "$BUNDLE/wheels/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$BUNDLE"/wheels/*.whl \
      || echo "gpu_check: warning: installing the bundle's wheels into $WORK/site failed" >&2
  fi
  mkdir -p "$WORK/src/neural_router"
  for f in "$REPO"/neural_router/*; do ln -s "$f" "$WORK/src/neural_router/"; done
  ln -s "$REPO/training" "$WORK/src/neural_router/training"
  ln -s "$REPO/serving" "$WORK/src/neural_router/serving"
  ln -s "$REPO/configs" "$WORK/src/neural_router/configs"
  export PYTHONPATH="$WORK/site:$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
fi

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HOME="$WORK/hf_home"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.txt"
"$PY" "$REPO/benchmarks/gpu_check.py" --bundle "$BUNDLE" --out "$OUT" --work "$WORK/work" "$@" 2>&1 | tee "$OUT/gpu_check.log"
rc=${PIPESTATUS[0]}
echo "gpu_check: exit $rc; results in $OUT/gpu_check.json"
exit "$rc"
