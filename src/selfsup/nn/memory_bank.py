"""A memory bank of one L2-normalised feature per dataset sample (Wu et al. 2018, sec. 3.1-3.2).

InstDisc keeps ``V = {v_i}``, ``n x D``, and after each step sets
``v_i <- normalize(m v_i + (1 - m) f_i)`` for the batch's samples (the momentum update of the
official code, ``m = 0.5``; the paper's sec. 3.1 writes ``v_i <- f_i``, which is ``m = 0``).
CMC (Tian et al. 2020, sec. 3.2) keeps one such bank per view. The bank is a buffer, so it lands
in ``state_dict()``; updates are all-gathered so every rank holds the same bank.

:class:`NormalizingConstant` holds NCE's ``Z`` (InstDisc eq. 8): set once from the first batch and
then fixed (the paper and its code), or, with a momentum, an exponential moving average of the
per-batch estimates (He's fix in HobbitLong/CMC issue #23: a one-time estimate goes wrong as soon
as the bank stops being random noise).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError
from selfsup.utils import dist

__all__ = ["MemoryBank", "NormalizingConstant"]


class MemoryBank(nn.Module):
    """``size x dim`` bank of unit vectors with a momentum update.

    Initialised with random unit vectors (uniform on the sphere), as the official InstDisc code
    draws random entries before the first epoch has filled the bank.

    Args:
        size: number of entries ``n`` (the dataset size; dataset indices must lie in ``[0, n)``).
        dim: feature dimension ``D``.
        momentum: ``m`` in ``v <- normalize(m v + (1 - m) f)``, in ``[0, 1)`` (InstDisc: 0.5).

    Raises:
        ConfigError: for a non-positive size/dim or a momentum outside ``[0, 1)``.
    """

    bank: Tensor
    filled: Tensor

    def __init__(self, size: int, dim: int, momentum: float = 0.5) -> None:
        super().__init__()
        for key, v in (("size", size), ("dim", dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"memory bank: {key} must be a positive integer, got {v!r}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"memory bank: momentum must be in [0, 1), got {momentum!r}")
        self.size, self.dim, self.momentum = size, dim, float(momentum)
        self.register_buffer("bank", F.normalize(torch.randn(size, dim), dim=1))
        # which entries hold a real feature (written by update/fill_unwritten) rather than noise
        self.register_buffer("filled", torch.zeros(size, dtype=torch.bool))

    def check_index(self, index: Tensor, option: str = "method_args.num_samples") -> None:
        """Raise a DataError if a dataset index does not fit the bank.

        Raises:
            DataError: naming ``option`` (the setting that sizes the bank) and the bad index.
        """
        if index.dim() != 1 or index.dtype not in (torch.int64, torch.int32):
            raise DataError(f"memory bank: index must be a 1-D integer tensor, got {index.shape}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.size):
            bad = int(index.max()) if int(index.max()) >= self.size else int(index.min())
            raise DataError(
                f"memory bank of {self.size} entries got dataset index {bad}; set {option} to "
                f"the dataset size (indices must lie in [0, {self.size}))"
            )

    def get(self, index: Tensor) -> Tensor:
        """Entries ``index`` (any shape ``S``) as a detached ``[*S, D]`` tensor."""
        return self.bank[index].detach()

    def sample(self, shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
        """Indices drawn uniformly with replacement from ``[0, size)`` (InstDisc's uniform noise
        ``P_n = 1/n``; an anchor's own index may be drawn, with probability ``1/n``).

        Uses torch's global RNG on ``device`` (default: the bank's device).
        """
        dev = self.bank.device if device is None else device
        return torch.randint(0, self.size, shape, device=dev)

    @torch.no_grad()
    def update(self, index: Tensor, features: Tensor, gather: bool = True) -> None:
        """``v_i <- normalize(m v_i + (1 - m) f_i)`` for each row (InstDisc, official code).

        Args:
            index: dataset indices ``[B]``.
            features: new features ``[B, D]`` (normalised or not; detached here).
            gather: first all-gather indices and features over ranks, so every rank applies
                the whole global batch and the banks stay identical.

        If an index occurs twice in the (global) batch, one of its rows wins.

        Raises:
            DataError: on shape mismatch or an index outside the bank.
        """
        if features.dim() != 2 or features.shape != (index.shape[0], self.dim):
            raise DataError(
                f"memory bank update expects features [B, {self.dim}] for B = {index.shape[0]} "
                f"indices, got {tuple(features.shape)}"
            )
        self.check_index(index)
        if gather:
            index, features = dist.all_gather(index), dist.all_gather(features.contiguous())
        new = self.momentum * self.bank[index] + (1.0 - self.momentum) * features.to(self.bank)
        self.bank.index_copy_(0, index, F.normalize(new, dim=1))
        self.filled[index] = True

    @torch.no_grad()
    def fill_unwritten(self, index: Tensor, features: Tensor, gather: bool = True) -> None:
        """Set never-written entries to ``normalize(f_i)`` outright (no momentum).

        The lazy alternative to the random initial bank: a sample's entry becomes its own first
        feature the first time it is visited, *before* the loss reads it, so no anchor is ever
        contrasted against a random positive (see :mod:`selfsup.methods.instdisc`, "Bank
        initialisation"). Entries already written are left alone.

        Raises:
            DataError: as :meth:`update`.
        """
        if features.dim() != 2 or features.shape != (index.shape[0], self.dim):
            raise DataError(
                f"memory bank fill expects features [B, {self.dim}] for B = {index.shape[0]} "
                f"indices, got {tuple(features.shape)}"
            )
        self.check_index(index)
        if gather:
            index, features = dist.all_gather(index), dist.all_gather(features.contiguous())
        new = ~self.filled[index]
        if bool(new.any()):
            idx = index[new]
            self.bank.index_copy_(0, idx, F.normalize(features[new].to(self.bank), dim=1))
            self.filled[idx] = True

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, momentum={self.momentum}"

    @staticmethod
    def clamp_negatives(k: int, size: int) -> int:
        """The number of noise samples actually used: ``min(k, size - 1)`` and at least 1."""
        return max(1, min(k, size - 1))



class NormalizingConstant(nn.Module):
    """``log Z`` of NCE's unnormalised softmax ``exp(v . f / t) / Z`` (Wu et al. 2018, eq. 8).

    Unset (``is_set`` False, ``log_z`` 0) until the first :meth:`update`, which sets it to that
    batch's estimate (``Z``
    averaged over ranks, which is the global batch's estimate, so every rank holds the same
    value). Later updates keep it fixed with ``momentum = 0``
    (paper) or move ``Z`` (not ``log Z``) towards the new estimate:
    ``Z <- m Z + (1 - m) Z_batch``.

    Args:
        momentum: ``m`` in ``[0, 1)``; 0 = fixed after the first batch.

    Raises:
        ConfigError: for a momentum outside ``[0, 1)``.
    """

    log_z: Tensor
    set_: Tensor

    def __init__(self, momentum: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"NCE normalising constant: momentum must be in [0, 1), got "
                              f"{momentum!r}")
        self.momentum = float(momentum)
        # a flag, not a NaN sentinel: the trainer refuses to checkpoint non-finite buffers
        self.register_buffer("log_z", torch.tensor(0.0))
        self.register_buffer("set_", torch.tensor(False))

    @property
    def is_set(self) -> bool:
        return bool(self.set_)

    @torch.no_grad()
    def update(self, batch_log_z: Tensor) -> Tensor:
        """Fold in one batch's estimate ``log Z_batch`` (scalar); returns the current ``log Z``.

        A no-op after the first call when ``momentum == 0``; call it only in training.
        """
        if self.is_set and self.momentum == 0.0:
            return self.log_z
        # the ranks' estimates are means over equally many noise logits, so the global batch's
        # estimate is the mean of their Z (not of their log Z): log-mean-exp over ranks
        est = batch_log_z.detach().to(self.log_z).reshape(1).clone()
        if dist.world_size() > 1:
            est = torch.logsumexp(dist.all_gather(est), dim=0) - math.log(dist.world_size())
        est = est.reshape(())
        if not self.is_set:
            self.log_z.copy_(est)
            self.set_.fill_(True)
        else:
            m = self.momentum
            new = torch.logaddexp(self.log_z + math.log(m), est + math.log1p(-m))
            self.log_z.copy_(new)
        return self.log_z

    def extra_repr(self) -> str:
        return f"momentum={self.momentum}"
