"""What SGLang's page hashes name besides tokens, and what tierd adds: the adapters' content.

SGLang 0.5.23 chains its storage page hashes (`sglang.srt.mem_cache.utils.get_storage_hash_str`)
from a seed of the request's namespace, `storage_namespace_seed(extra_key, cache_salt)`, and
`Req` appends the request's LoRA id to its `extra_key`; a multimodal item is in the token ids
themselves (its placeholder tokens are pad values derived from the item's content hash). tierd's
page keys are hashed over SGLang's page hashes (`keys.py`), so they carry all of that: two
requests with another salt, extra key, adapter or image never share a page.

What SGLang's hashes do not carry is an adapter's *content*. An adapter named in `--lora-paths`
has the id uuid5(name, path), the same after its files are rewritten in place and the server
restarted, while tierd's NVMe and bucket outlive restarts. So the backend fingerprints every
`--lora-paths` adapter when SGLang attaches it (`tierd.fingerprint`) and puts the fingerprints
in its key seed (`adapters_tag`): rewriting any of them gives the engine new keys, base-model
pages included (conservative: a stale page is worse than a miss). Adapters loaded later through
SGLang's API get a random uuid4 id, unique to that load, so no stored page can match them. An
adapter that cannot be read stops the attach with a `ConfigError`: tierd does not guess.

Prompt embeddings need no refusal here: SGLang refuses `input_embeds` unless its radix cache,
and with it HiCache, is off (`TokenizerManager`).
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Iterable

from tierd.errors import ConfigError
from tierd.fingerprint import fingerprint_path

log = logging.getLogger(__name__)


def lora_enabled(server_args: Any) -> bool:
    """SGLang's own rule: `--enable-lora`, or `--lora-paths` with `--enable-lora` unset."""
    enable, paths = _field(server_args, "enable_lora"), _field(server_args, "lora_paths")
    return bool(enable) or (enable is None and bool(paths))


def adapters(server_args: Any) -> list[tuple[str, str]]:
    """(name, path) of every adapter in `--lora-paths`, in any of the forms SGLang accepts: a
    list of "name=path" or "path" strings, of {"lora_name", "lora_path"} dicts or of `LoRARef`s
    (after SGLang's resolution), or a {name: path} dict."""
    paths = _field(server_args, "lora_paths")
    if not paths:
        return []
    items: Iterable[Any] = paths.items() if isinstance(paths, dict) else paths
    out = []
    for item in items:
        if isinstance(item, tuple):  # from a {name: path} dict
            name, path = item
        elif isinstance(item, str):
            name, _, path = item.partition("=") if "=" in item else (item, "", item)
        elif isinstance(item, dict):
            name, path = item.get("lora_name"), item.get("lora_path")
        else:
            name, path = getattr(item, "lora_name", None), getattr(item, "lora_path", None)
        if not isinstance(name, str) or not isinstance(path, str) or not path:
            raise ConfigError(f"--lora-paths entry {item!r}: tierd cannot tell which adapter files it names")
        out.append((name, path))
    return out


def adapters_tag(server_args: Any) -> str:
    """"" when LoRA is off; else a digest of every `--lora-paths` adapter's name and content
    fingerprint (ConfigError if one cannot be read)."""
    if server_args is None or not lora_enabled(server_args):
        return ""
    h = hashlib.blake2b(b"tierd-sglang-adapters-v1\x00", digest_size=16)
    for name, path in sorted(adapters(server_args)):
        local = os.path.expanduser(path)
        if not os.path.exists(local):
            raise ConfigError(
                f"LoRA adapter {name!r} at {path!r}: not a local path, so tierd cannot fingerprint its weights; "
                "give --lora-paths a local directory (a hub id is not keyed), or run without the tierd backend"
            )
        try:
            fp = fingerprint_path(local)
        except OSError as exc:
            raise ConfigError(f"LoRA adapter {name!r} at {path!r}: cannot read it to fingerprint it ({exc})") from None
        h.update(f"{len(name)}:{name}:{fp}\x00".encode())
    return "lora-" + h.hexdigest()


def server_adapters_tag() -> str:
    """`adapters_tag` of the SGLang server this process runs, or "" when none is published here
    (a tool or test that builds the backend outside an SGLang server)."""
    from sglang.srt.runtime_context import get_server_args

    try:
        server_args = get_server_args()
    except ValueError:  # "Global server args is not set yet!"
        log.debug("tierd: no SGLang server args in this process; adapters not keyed")
        return ""
    return adapters_tag(server_args)


def _field(server_args: Any, name: str) -> Any:
    """A server-args field as resolved by SGLang when it is a real ServerArgs, else as given."""
    try:
        from sglang.srt.arg_groups.overrides import resolution_result

        return resolution_result(server_args, name, None)
    except (ImportError, AttributeError, KeyError, TypeError):
        return getattr(server_args, name, None)
