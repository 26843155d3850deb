"""Fixtures for the SGLang backend tests: a real daemon subprocess (tests/conftest.py) and
backends built the way SGLang's cache controller builds them."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest

from tests.connectors.sglang.pools import make_pool, storage_config  # imports SGLang first

from connectors.sglang.backend import TierdHiCacheStorage  # noqa: E402

BackendFactory = Callable[..., TierdHiCacheStorage]


@pytest.fixture
def backend_factory() -> Iterator[BackendFactory]:
    """`make(socket, pool, extra={...}, **config)`: a backend with `pool` registered; all closed at teardown."""
    made: list[TierdHiCacheStorage] = []

    def make(socket: str, pool: Any, extra: dict[str, Any] | None = None, **config: Any) -> TierdHiCacheStorage:
        b = TierdHiCacheStorage(storage_config({"socket": socket, **(extra or {})}, **config), {})
        made.append(b)
        b.register_mem_pool_host(pool)
        return b

    yield make
    for b in made:
        b.close()


@pytest.fixture(params=["mha", "mla"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=["layer_first", "page_first", "page_first_direct"])
def host_layout(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def pool(kind: str, host_layout: str) -> Any:
    return make_pool(kind, host_layout)
