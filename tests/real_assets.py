"""The real assets (``fedlora assets fetch``) for tests marked ``real``, skipped when absent.

The asset cache is looked up once, when this module is imported (at collection), in the
user's own ``$FEDLORA_HOME``: the autouse fixture in ``conftest.py`` gives every test a fresh
empty ``FEDLORA_HOME`` afterwards, which would otherwise hide the cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.assets_cache import assets_root, resolve_asset
from fedlora.errors import AssetError

REAL_ASSETS_ROOT = assets_root()


def require_asset(name: str) -> Path:
    """The cached path of a real asset, or skip the test saying how to fetch it."""
    try:
        return resolve_asset(name, root=REAL_ASSETS_ROOT)
    except AssetError as exc:
        pytest.skip(f"real asset not cached: {exc}")
