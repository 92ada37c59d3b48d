"""L2: self-supervised methods, one registered file each. Importing this package registers them."""

import selfsup.methods.simclr  # noqa: F401
from selfsup.methods.base import Method, build_method

__all__ = ["Method", "build_method"]
