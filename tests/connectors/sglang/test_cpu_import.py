"""`connectors.sglang.cpu_import` on a machine without triton and torchvision (as a fresh CI
machine is): stand-ins only while SGLang's modules import, gone afterwards, and SGLang's host
pools still work. Run in a subprocess in which both packages are made unimportable, whatever
this machine has installed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = r'''
import importlib.abc, json, sys

class Hide(importlib.abc.MetaPathFinder):
    """Makes triton and torchvision unimportable, as on a machine without them."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("triton", "torchvision"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
from connectors.sglang.cpu_import import import_sglang
stood_in = import_sglang()
leftover = sorted(m for m in sys.modules if m.split(".")[0] in ("triton", "torchvision"))
try:
    import triton  # noqa: F401
    importable = True
except ImportError:
    importable = False
from torch.utils._triton import has_triton_package
from tests.connectors.sglang.pools import PAGE, fill_random, make_pool
pool = make_pool("mha", "page_first")
fill_random(pool, 1)
page = pool.get_data_page(PAGE)
print(json.dumps({"stood_in": stood_in, "leftover": leftover, "importable": importable,
                  "torch_sees_triton": has_triton_package(), "page_elements": page.numel()}))
'''


def test_stand_ins_exist_only_while_sglang_imports() -> None:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", SCRIPT], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["stood_in"] == ["triton", "torchvision"]
    assert out["leftover"] == [] and out["importable"] is False and out["torch_sees_triton"] is False
    assert out["page_elements"] == 2 * 3 * 4 * 2 * 8  # kv x layers x page x heads x head_dim of pools.mha_pool
