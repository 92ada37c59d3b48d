"""Guards of the training loop: the Ctrl-C/SIGTERM stop flag, the progress bar closed however the
loop ends, and the finiteness check that keeps non-finite state out of checkpoints."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from selfsup.utils.log import logger


class StopFlag:
    """Turns the first SIGINT/SIGTERM into a flag checked between steps; a second one aborts."""

    def __init__(self) -> None:
        self.set = False
        self._old: dict[signal.Signals, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        logger.warning("stop requested: finishing this step and writing a checkpoint "
                       "(press Ctrl-C again to abort without saving)")

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._old = {}
        try:
            yield self
        finally:
            for s, h in self._old.items():
                signal.signal(s, h)


@contextlib.contextmanager
def closing(bar: Any) -> Iterator[None]:
    """Close the progress bar however the loop ends, so an error message starts on its own line
    instead of after the bar's last redraw."""
    try:
        yield
    finally:
        bar.close()


def non_finite_state(method: nn.Module) -> str | None:
    """The name of the first floating parameter or buffer of ``method`` holding a NaN/inf, or
    None. One fused norm per device/dtype; a NaN or inf anywhere makes that norm non-finite."""
    named = [(k, v) for k, v in method.state_dict().items()
             if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() > 0]
    if not named:
        return None
    norms = torch.stack([n.float().cpu() for n in torch._foreach_norm([v for _, v in named])])
    if bool(torch.isfinite(norms).all()):
        return None
    return next(k for (k, _), n in zip(named, norms) if not torch.isfinite(n))
