#!/usr/bin/env bash
# The test suite on a CUDA machine, with cupy REQUIRED: a missing GPU or CuPy fails, it never skips.
#
#   bash ci/gpu.sh            # run from the repository root or anywhere
#
# Installs nothing it does not need: numpy, cupy, pytest and hypothesis must already be there.
# array-api-compat / array-api-extra / array-api-strict are taken from the environment, or else from wheels in .whl/
# (download them where pip works: see "Tests" in README.md), installed into a private folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

missing=$($python - <<'PY'
import importlib.util
print(" ".join(m for m in ("array_api_compat", "array_api_extra", "array_api_strict") if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "ci/gpu.sh: missing Python packages ($missing) and no wheels in .whl/ to install them from" >&2
        exit 2
    fi
    site=$(mktemp -d)
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

$python - <<'PY'
import platform, sys
import numpy, array_api_compat, array_api_extra, array_api_strict
try:
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
except Exception as exc:
    sys.exit(f"ci/gpu.sh: this job needs CuPy and a CUDA device: {type(exc).__name__}: {exc}")
if count == 0:
    sys.exit("ci/gpu.sh: CuPy is installed but no CUDA device was found")
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"python {platform.python_version()}, numpy {numpy.__version__}, cupy {cupy.__version__}, "
      f"array-api-compat {array_api_compat.__version__}, array-api-extra {array_api_extra.__version__}, "
      f"array-api-strict {array_api_strict.__version__}")
print(f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}, "
      f"{count} device(s), device 0: {props['name'].decode()}")
try:
    import torch
    print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}")
except ImportError:
    print("torch: not installed (its tests are skipped)")
PY

XPCNN_TEST_REQUIRE=cupy $python -m pytest -q -p no:cacheprovider "$@"

# Data-parallel training with NCCL (xpcnn/_nccl.py), on machines with 2+ GPUs and mpi4py + an mpiexec:
# 2 ranks, one GPU each, one epoch of the bundled data; it must finish with status 0 and one result line.
gpus=$($python -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())")
mpiexec=$(dirname "$(command -v $python)")/mpiexec
[ -x "$mpiexec" ] || mpiexec=$(command -v mpiexec || true)
if [ "$gpus" -ge 2 ] && [ -n "$mpiexec" ] && $python -c "import mpi4py" 2>/dev/null; then
    echo "ci/gpu.sh: data-parallel run on 2 GPUs (NCCL)"
    XPCNN_BACKEND=cupy "$mpiexec" -n 2 $python -m xpcnn train --distributed --epochs 1 --batch-size 256 --quiet
else
    echo "ci/gpu.sh: NCCL data-parallel run skipped (needs 2+ GPUs, mpi4py and mpiexec; found $gpus GPU(s))"
fi
