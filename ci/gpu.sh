#!/usr/bin/env bash
# Everything a GPU session runs, in one call, first things first (stops at the first part that fails):
#   1. preflight (about a minute): on each GPU a kernel, a matrix product, a random draw, and a convolution's
#      forward and backward against the CPU, each named when it fails;
#   2. the test suite with cupy REQUIRED (XPCNN_TEST_REQUIRE=cupy: a missing GPU or CuPy fails, it never skips);
#   3. the GPU benchmark (LeNet-5 and ResNet-8 per step, CuPy vs PyTorch CUDA, synchronized timers);
#   4. data-parallel training on 2 GPUs with NCCL, where two GPUs, mpi4py and mpiexec are there.
#
#   bash ci/gpu.sh                       # all four
#   XPCNN_CI_PARTS="preflight nccl" bash ci/gpu.sh
#   bash ci/gpu.sh -x -k conv            # extra arguments go to pytest
#
# Prerequisites (installs nothing from the network): numpy, cupy with its CUDA libraries
# (pip install -e '.[cuda12]'), pytest, hypothesis, tqdm, threadpoolctl, matplotlib; NCCL for part 4
# (pip install -e '.[cuda12-nccl]'); a CUDA build of torch for the PyTorch columns (the PyPI wheel for Linux
# x86_64 is one; elsewhere pip install torch --index-url https://download.pytorch.org/whl/cuXYZ as
# pytorch.org/get-started/locally says for your CUDA). array-api-compat / array-api-extra / array-api-strict come
# from the environment, or else from wheels in .whl/ (download them where pip works), installed into a private folder.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
parts=${XPCNN_CI_PARTS:-preflight suite bench nccl}
wants() { [[ " $parts " == *" $1 "* ]]; }

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
import importlib.util, sys
need = {"numpy": "numpy", "cupy": "cupy-cuda12x[ctk] (pip install -e '.[cuda12]')", "pytest": "pytest",
        "hypothesis": "hypothesis", "tqdm": "tqdm", "threadpoolctl": "threadpoolctl", "matplotlib": "matplotlib"}
gone = [f"{module} ({package})" for module, package in need.items() if importlib.util.find_spec(module) is None]
if gone:
    sys.exit("ci/gpu.sh: missing prerequisites: " + ", ".join(gone))
PY

gpus=$($python -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())" 2>/dev/null || echo 0)

if wants preflight; then
    echo "== ci/gpu.sh: preflight"
    timeout 300 $python - <<'PY'
import platform, sys, time
import numpy, array_api_compat, array_api_extra, array_api_strict
from xpcnn import backend

try:
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
except Exception as exc:
    sys.exit(f"ci/gpu.sh: preflight: this job needs CuPy and a CUDA device: {type(exc).__name__}: {exc}")
print(f"python {platform.python_version()}, numpy {numpy.__version__}, cupy {cupy.__version__}, "
      f"array-api-compat {array_api_compat.__version__}, array-api-extra {array_api_extra.__version__}, "
      f"array-api-strict {array_api_strict.__version__}")
print(f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}, "
      f"{count} device(s)")
try:
    import torch
    print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
except ImportError:
    print("torch: not installed (its tests are skipped, the benchmark has no PyTorch column)")
failed = []
for index in range(min(count, 2)) or [0]:
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"].decode() if count else "none"
    print(f"device {index}: {name}")
    for check in backend.preflight("cupy", index):
        print(f"  {'ok    ' if check.ok else 'FAILED'} {check.name} ({check.seconds:.2f} s): {check.detail}")
        if not check.ok:
            failed.append(f"{check.name} on device {index}")
if failed:
    sys.exit("ci/gpu.sh: preflight FAILED: " + ", ".join(failed))
PY
fi

if wants suite; then
    echo "== ci/gpu.sh: test suite, cupy required"
    XPCNN_TEST_REQUIRE=cupy $python -m pytest -q -p no:cacheprovider "$@"
fi

if wants bench; then
    echo "== ci/gpu.sh: benchmark, CuPy vs PyTorch CUDA per training step (synchronized timers)"
    (cd benchmarks && XPCNN_BACKEND=cupy $python bench_networks.py --network lenet5 resnet8 --batch 64 256)
fi

if wants nccl; then
    # 2 ranks, one GPU each, one epoch of the bundled data: status 0 and one result line
    mpiexec=$(dirname "$(command -v $python)")/mpiexec
    [ -x "$mpiexec" ] || mpiexec=$(command -v mpiexec || true)
    if [ "$gpus" -ge 2 ] && [ -n "$mpiexec" ] && $python -c "import mpi4py" 2>/dev/null; then
        echo "== ci/gpu.sh: data-parallel run on 2 GPUs (NCCL)"
        XPCNN_BACKEND=cupy "$mpiexec" -n 2 $python -m xpcnn train --distributed --epochs 1 --batch-size 256 --quiet
    else
        echo "== ci/gpu.sh: NCCL data-parallel run skipped (needs 2+ GPUs, mpi4py and mpiexec; found $gpus GPU(s))"
    fi
fi
