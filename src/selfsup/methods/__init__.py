"""L2: self-supervised methods, one registered file each. Importing this package imports every
method module in it, which registers the method (``selfsup list methods``)."""

import importlib
import pkgutil

from selfsup.methods.base import Method, build_method

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["Method", "build_method"]
