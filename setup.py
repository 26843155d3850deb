"""Packaging for tierd. torch is pinned to the CPU build that ships on the dev/CI machines."""
from setuptools import find_packages, setup

TORCH = "torch==2.13.0"

setup(
    name="tierd",
    version="0.1.0",
    description="Tiered KV-cache storage daemon for LLM serving (DRAM, NVMe, object store)",
    packages=find_packages(include=["tierd", "tierd.*", "connectors", "connectors.*"]),
    python_requires=">=3.11",
    install_requires=[
        "msgpack>=1.0",
        "uvloop>=0.19",
        "aiofiles>=23.0",
        "zstandard>=0.22",
        "pyarrow>=14",
        "prometheus-client>=0.19",
        "xxhash>=3.4",
        "sortedcontainers>=2.4",
        "numpy>=1.26",
    ],
    extras_require={
        "torch": [TORCH],
        "test": [TORCH, "pytest>=8", "pytest-asyncio>=0.23", "hypothesis>=6", "matplotlib>=3.8"],
        "vllm": [TORCH],
        "sglang": [TORCH],
        "s3": ["obstore>=0.3"],
        "gpu": [TORCH],
        "bench": [TORCH, "matplotlib>=3.8"],
        "plot": ["matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["tierd=tierd.cli:main"]},
)
