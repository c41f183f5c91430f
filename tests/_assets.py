"""Offline assets in tests: skip locally when one is missing, fail under CI=true (so a broken fetch shows)."""

from __future__ import annotations

import os

import pytest


def require_asset(getter, *args):
    """Return `getter(*args)`; when the asset is missing, skip locally or fail under CI=true."""
    from lmforge.assets import AssetMissing

    try:
        return getter(*args)
    except AssetMissing as err:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"asset missing under CI: {err}")
        pytest.skip(f"asset missing: {err}")
