#!/usr/bin/env bash
# The GPU checks (issues 10 and 23) in one run, for a machine with an NVIDIA GPU (the device tool):
#
#   # once, here: the wheels tierd's daemon imports that the GPU image lacks (Python 3.12 there)
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl obstore==0.12.1 zstandard==0.25.0
#   # then: run(command="bash scripts/device_check.sh", carry=[".whl"], timeout_s=540)
#
# It reports which kernel path runs (the one .cu built by nvcc, or by NVRTC through CuPy), runs
# the kernels from both compilers against the torch reference, the pipelines and the device
# interface on CUDA streams (tests/native/test_pipeline.py: the same tests the CPU implementation
# runs everywhere), the connector's device copies against a real daemon (K+V and MLA, pinned and
# staged), then the benchmarks: gather/scatter (device->pinned and pinned->device against one
# cudaMemcpyAsync of the same bytes and against the per-block loop; an 8k-token prefix load) and
# the host time per layer of a load. Logs go to $OUT (the device tool brings them back).
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
timeout 300 python3 -m pytest -q -rs -p no:cacheprovider tests/native/test_cuda.py tests/native/test_kernels.py \
  tests/native/test_pipeline.py tests/native/test_cuda_launch.py tests/connectors/test_gpu_copies.py 2>&1 \
  | tee "$OUT/tests.txt"
timeout 200 python3 -m bench.gather_scatter --quick 2>&1 | tee "$OUT/bench.txt"
timeout 60 python3 -m bench.layer_launch --quick --device cuda 2>&1 | tee "$OUT/layer_launch.txt"
