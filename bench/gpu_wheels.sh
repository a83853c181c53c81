#!/usr/bin/env bash
# bash bench/gpu_wheels.sh   (here, with internet) -> .wheels/ (git-ignored), carried to the CUDA machine
# The GPU machine's image has torch, lightning, timm, peft, torchmetrics, safetensors, pandas, matplotlib, but
# none of the packages below and no internet; bench/gpu_check.sh installs them from .wheels/ with
# `pip install --no-index`. Wheels for the machine's Python (GPU_PY, default 3.12: its python3 is 3.12.3) on
# manylinux x86_64; antlr4-python3-runtime 4.9.3 (omegaconf's pin) exists only as an sdist, so it is built
# into a pure-Python wheel here. More packages: GPU_WHEELS_EXTRA="torchdata==0.11.0 ..." (without their deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPU_PY=${GPU_PY:-3.12}
OUT=.wheels
# What src/ imports at module level beyond the image: Hydra + OmegaConf, pydicom, and MLflow's client
# (mlflow-skinny: the tracking API without the server; logger=none never starts a run).
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
REQS=(
  "hydra-core==$(version hydra-core)"
  "omegaconf==$(version omegaconf)"
  "pydicom==$(version pydicom)"
  "mlflow-skinny==$(version mlflow)"
)
rm -rf "$OUT" && mkdir -p "$OUT"
"$PY" -m pip wheel --quiet --no-deps -w "$OUT" antlr4-python3-runtime==4.9.3
"$PY" -m pip download --quiet -d "$OUT" --only-binary=:all: --python-version "$GPU_PY" \
  --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_34_x86_64 --platform any \
  "${REQS[@]}" antlr4-python3-runtime==4.9.3 --find-links "$OUT"
# Extras come without their dependencies (torchdata's would pull torch): name each missing one.
EXTRA=(${GPU_WHEELS_EXTRA:-})
if [ ${#EXTRA[@]} -gt 0 ]; then
  "$PY" -m pip download --quiet -d "$OUT" --no-deps --only-binary=:all: --python-version "$GPU_PY" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --platform any "${EXTRA[@]}"
fi
printf '%s\n' "${REQS[@]}" > "$OUT/requirements.txt"
# Installed with --no-deps on the GPU machine: a resolver there would look for their torch requirement.
printf '%s\n' ${EXTRA[@]+"${EXTRA[@]}"} > "$OUT/extras.txt"
du -sh "$OUT"
