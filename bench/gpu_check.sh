#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py says what it checks): one call on a lent CUDA
# machine, under 8 minutes, report under $OUT (else ./gpu_check_out). Options pass through,
# e.g. `bench/gpu_check.sh --parts env,agree` or `--timeout pipeline=300`; `--device cpu` tries
# it without a GPU.
#
# The GPU image has torch, transformers, accelerate, scipy, scikit-learn and pytest, but not
# mlflow or datasets (the stage scripts need them): the env part names what is missing. To
# bring them, download their wheels (and those of their missing dependencies) into .whl/ as
# the device notes describe, and name .whl in the call's carry; this script installs them.
# It downloads nothing itself.
set -u
cd "$(dirname "$0")/.."

if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site .whl/*.whl || echo "gpu_check: installing .whl/*.whl failed" >&2
  export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}"
fi

# The repo's venv where there is one (this machine); the image's python3 elsewhere.
PY="${PYTHON:-python3}"
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
# Not pip-installed on a fresh machine: import the package from the checkout.
"$PY" -c "import layerwise" 2>/dev/null || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# A hard stop a little past the parts' own budget, should the driver itself hang (raise it
# with GPU_CHECK_HARD_STOP together with --budget).
exec timeout -k 5 "${GPU_CHECK_HARD_STOP:-475}" "$PY" bench/gpu_check.py "$@"
