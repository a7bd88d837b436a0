"""An earlier migration's module, for a later one that puts back what it created."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

VERSIONS = Path(__file__).with_name("versions")


def load(filename: str) -> ModuleType:
    """The module of `versions/<filename>` (its names start with digits: no plain import)."""
    spec = importlib.util.spec_from_file_location(f"mailsync_migration_{filename[:4]}",
                                                  VERSIONS / filename)  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
