"""Optional dependencies (the extras of pyproject.toml): import one, or fail with the one line that installs it."""
from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from sparkdl.errors import ConfigError

__all__ = ["DISTRIBUTION", "MissingExtraError", "available", "require"]

# The name on the package index (the import stays ``sparkdl``; README: "Install").
DISTRIBUTION = "sparkdl-torch"


class MissingExtraError(ConfigError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """``import module``, or ``MissingExtraError``: "<purpose> needs <package>: pip install 'sparkdl-torch[<extra>]'".
    An ImportError raised *inside* an installed module (a broken install) is not hidden behind that advice."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise
        raise MissingExtraError(f"{purpose} needs {top}, which is not installed: pip install '{DISTRIBUTION}[{extra}]'") from None
