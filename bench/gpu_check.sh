#!/usr/bin/env bash
# bash bench/gpu_check.sh [gpu_check.py options]     on a CUDA machine; < 10 minutes; results in $OUT or bench/results/
# First, on a machine with internet: bash bench/gpu_wheels.sh (fills the git-ignored .wheels/ with what the
# GPU image lacks: Hydra, OmegaConf, pydicom, MLflow's client); carry .wheels/ to the GPU machine. No internet,
# no hub weights and no MLflow server are used there.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -f .wheels/requirements.txt ]; then
  "$PY" -m pip install --quiet --no-index --find-links .wheels/ -r .wheels/requirements.txt \
    || echo "gpu_check.sh: installing .wheels/ failed; sections that need a missing package will say so" >&2
  if [ -s .wheels/extras.txt ]; then
    "$PY" -m pip install --quiet --no-index --no-deps --find-links .wheels/ -r .wheels/extras.txt \
      || echo "gpu_check.sh: installing .wheels/extras.txt failed" >&2
  fi
else
  echo "gpu_check.sh: no .wheels/ (run bench/gpu_wheels.sh here first); using the installed packages" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONWARNINGS=ignore HYDRA_FULL_ERROR=1
# The script's own guard (--budget, default 500 s) ends it in time; timeout is the backstop (pip above
# takes ~20 s: < 10 minutes in all).
exec timeout 550 "$PY" bench/gpu_check.py "$@"
