"""Vector quantisation (van den Oord et al. 2017, "Neural Discrete Representation Learning",
VQ-VAE, sec. 3.1-3.2): the codebook, nearest-code assignment, the straight-through estimator
and the two codebook terms of the VQ-VAE loss, as pure functions plus a small module.

- :func:`nearest_codes`: ``k = argmin_j ||z - e_j||_2`` (eq. 1), ties to the lowest index.
- :func:`straight_through`: ``z_e + sg[z_q - z_e]``: the forward value is the code, the gradient
  of the decoder input is copied to the encoder output (sec. 3.1, "we just copy gradients from
  decoder input z_q(x) to encoder output z_e(x)").
- :func:`vq_losses`: the codebook term ``||sg[z_e] - e||^2`` and the commitment term
  ``||z_e - sg[e]||^2`` of eq. 3, each a mean over the elements of ``z`` (as the authors'
  Sonnet ``VectorQuantizer``: ``reduce_mean``); the loss multiplies the commitment by
  ``beta = 0.25`` (sec. 4.1).
- :func:`code_usage`: codebook perplexity ``exp(-sum_k p_k log p_k)`` of the batch's code
  frequencies (``K`` when every code is used equally, 1 when one code takes everything) and the
  fraction of codes used: dead codes show as usage well below 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError, DataError

__all__ = ["VQOutput", "VectorQuantizer", "code_usage", "nearest_codes", "straight_through",
           "vq_losses"]


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest codebook vector (squared Euclidean distance) of every row of ``z``.

    Args:
        z: ``[M, D]`` encoder outputs.
        codebook: ``[K, D]`` code vectors.

    Returns:
        ``[M]`` int64 in ``[0, K)``; ties go to the lowest index (``argmin``).

    Raises:
        DataError: if ``z`` is not ``[M, D]`` with the codebook's ``D``.
    """
    if z.dim() != 2 or codebook.dim() != 2 or z.shape[1] != codebook.shape[1]:
        raise DataError(f"nearest_codes expects z [M, D] and codebook [K, D], got "
                        f"{tuple(z.shape)} and {tuple(codebook.shape)}")
    zf, cf = z.float(), codebook.float()
    # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin
    dist = cf.pow(2).sum(1)[None, :] - 2.0 * zf @ cf.t()  # [M, K]
    return dist.argmin(dim=1)


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """``z_q`` in the forward pass with the gradient of ``z_e`` (``z_e + sg[z_q - z_e]``)."""
    return z_e + (z_q - z_e).detach()


def vq_losses(z_e: Tensor, z_q: Tensor) -> tuple[Tensor, Tensor]:
    """The codebook and commitment terms of VQ-VAE's eq. 3, means over all elements.

    Args:
        z_e: encoder outputs ``[..., D]``.
        z_q: their assigned code vectors ``[..., D]`` (gathered from the codebook, with grad).

    Returns:
        ``(codebook, commitment)``: ``mean((sg[z_e] - z_q)^2)`` moves the codes only,
        ``mean((z_e - sg[z_q])^2)`` the encoder only. Equal in value.

    Raises:
        DataError: on mismatched shapes.
    """
    if z_e.shape != z_q.shape:
        raise DataError(f"vq_losses expects z_e and z_q of one shape, got {tuple(z_e.shape)} "
                        f"and {tuple(z_q.shape)}")
    codebook = (z_e.detach().float() - z_q.float()).pow(2).mean()
    commitment = (z_e.float() - z_q.detach().float()).pow(2).mean()
    return codebook, commitment


def code_usage(ids: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """``(perplexity, used fraction)`` of the codes ``ids`` (any shape, values in ``[0, K)``).

    ``perplexity = exp(-sum_k p_k log p_k)`` with ``p_k`` the share of ``ids`` equal to ``k``
    (``0 log 0 = 0``); ``used = |{k : p_k > 0}| / K``. Both detached floats.
    """
    counts = torch.bincount(ids.reshape(-1), minlength=num_codes).float()
    p = counts / counts.sum().clamp(min=1.0)
    entropy = -(p * torch.log(p.clamp(min=1e-12))).sum()
    return entropy.exp().detach(), ((counts > 0).float().mean()).detach()


@dataclass
class VQOutput:
    """What :class:`VectorQuantizer` returns for ``z_e`` ``[..., D]``.

    Attributes:
        quantized: ``[..., D]`` codes in the forward pass, the encoder's gradient path
            (:func:`straight_through`).
        ids: ``[...]`` int64 code indices.
        codebook_loss: ``mean((sg[z_e] - z_q)^2)``.
        commitment_loss: ``mean((z_e - sg[z_q])^2)`` (to be weighted by ``beta``).
        perplexity: the batch's codebook perplexity (detached).
        usage: the fraction of codes the batch uses (detached).
    """

    quantized: Tensor
    ids: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    perplexity: Tensor
    usage: Tensor


class VectorQuantizer(nn.Module):
    """A ``K x D`` codebook trained by the codebook loss (VQ-VAE sec. 3.2).

    The codebook is initialised uniformly in ``[-1/K, 1/K]``, as the common PyTorch ports of the
    authors' Sonnet module. With ``normalize``, encoder outputs and codes are l2-normalised
    before the lookup, the losses and the decoder (ViT-VQGAN, Yu et al. 2022, sec. 3.2, and
    BEiT v2's tokenizer): the nearest code is the most cosine-similar one, and the codes start
    spread over the sphere instead of in a tiny ball where a few of them win every lookup.

    Attributes:
        codebook: ``nn.Embedding(K, D)``; its weight ``[K, D]`` holds the code vectors.

    Raises:
        ConfigError: for ``num_codes < 2`` or ``dim < 1``.
    """

    def __init__(self, num_codes: int, dim: int, normalize: bool = False) -> None:
        super().__init__()
        if num_codes < 2 or dim < 1:
            raise ConfigError(f"method_args.codebook_size must be >= 2 and method_args.code_dim "
                              f">= 1, got {num_codes} and {dim}")
        self.num_codes, self.dim, self.normalize = num_codes, dim, normalize
        self.codebook = nn.Embedding(num_codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / num_codes, 1.0 / num_codes)

    def codes(self) -> Tensor:
        """The ``[K, D]`` code vectors as used (l2-normalised with ``normalize``)."""
        w = self.codebook.weight
        return F.normalize(w, dim=-1) if self.normalize else w

    def lookup(self, z_e: Tensor) -> Tensor:
        """``[..., D]`` -> ``[...]`` int64 nearest code ids (no gradient)."""
        with torch.no_grad():
            z = F.normalize(z_e, dim=-1) if self.normalize else z_e
            ids = nearest_codes(z.reshape(-1, self.dim), self.codes())
        return ids.reshape(z_e.shape[:-1])

    def forward(self, z_e: Tensor) -> VQOutput:
        """Quantise ``z_e`` ``[..., D]`` (see :class:`VQOutput`)."""
        if z_e.shape[-1] != self.dim:
            raise DataError(f"VectorQuantizer expects [..., {self.dim}], got {tuple(z_e.shape)}")
        ids = self.lookup(z_e)
        if self.normalize:
            z_e = F.normalize(z_e, dim=-1)
        z_q = self.codes()[ids].to(z_e.dtype)  # [..., D], gradient reaches the codebook
        codebook_loss, commitment_loss = vq_losses(z_e, z_q)
        perplexity, usage = code_usage(ids, self.num_codes)
        return VQOutput(straight_through(z_e, z_q), ids, codebook_loss, commitment_loss,
                        perplexity, usage)
