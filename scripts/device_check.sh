#!/usr/bin/env bash
# Issue 10's GPU checks in one run, for a machine with an NVIDIA GPU (the device tool):
#
#   # once, here: the wheels tierd's daemon imports that the GPU image lacks (Python 3.12 there)
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl obstore==0.12.1 zstandard==0.25.0
#   # then: run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
#
# It reports which copy path runs (CUDA library built with nvcc, Triton, torch), runs the CUDA
# and Triton kernel tests against the torch reference and the connector's device copies against
# a real daemon, then the gather/scatter benchmark (device->pinned against one large copy, the
# per-block loop, an 8k-token prefix load). Logs go to $OUT (the device tool brings them back).
set -uo pipefail
OUT=${OUT:-/tmp/tierd-device-check}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi -L 2>&1 | tee "$OUT/gpu.txt"
python3 -m native 2>&1 | tee "$OUT/native.txt"
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/native/test_cuda.py tests/native/test_triton.py \
  tests/connectors/test_gpu_copies.py 2>&1 | tee "$OUT/tests.txt"
timeout 200 python3 -m bench.gather_scatter --quick 2>&1 | tee "$OUT/bench.txt"
