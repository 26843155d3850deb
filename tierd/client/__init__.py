"""Clients of the store: `Client` (blocking), `AsyncClient` (asyncio) and embedded mode.

`sync` and `async_client` hold the two clients, which differ only in how a request travels;
what they send and how they read replies is `protocol`'s. `arena` maps the daemon's shared
arena, `batches` holds a put's reserved slots and a get's lease, and `embedded` runs the
daemon's store in this process (`Client.embedded`). `peer` checks, before a byte is sent,
that the daemon runs as a user the client trusts.
"""
from tierd.client.async_client import AsyncClient
from tierd.client.batches import AsyncGetLease, AsyncPutBatch, GetLease, PutBatch
from tierd.client.peer import UntrustedDaemonError
from tierd.client.protocol import LookupResult, default_socket
from tierd.client.sync import Client

__all__ = ["AsyncClient", "AsyncGetLease", "AsyncPutBatch", "Client", "GetLease", "LookupResult", "PutBatch",
           "UntrustedDaemonError", "default_socket"]
