"""InstDisc: non-parametric instance discrimination with a memory bank and NCE.

Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination".
Every image is its own class. The backbone ``f`` and a linear layer map an image to a 128-d unit
vector ``v = normalize(W f(x))`` (sec. 3.1); a memory bank keeps one such vector per dataset
sample; the instance softmax over all ``n`` bank entries (eq. 2, temperature 0.07) is approximated
by NCE with ``m = 4096`` uniform noise samples (sec. 3.2, eq. 5-8), ``Z`` estimated once from the
first batch. After every optimiser step the batch's bank entries are updated with momentum 0.5
(official code) and re-normalised. ``loss="infonce"`` replaces NCE by the InfoNCE softmax over
the positive bank entry, the batch's other entries and ``m`` shared bank negatives (Oord 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.losses.contrastive import info_nce
from selfsup.losses.nce import estimate_log_z, nce_loss
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.nn.memory_bank import MemoryBank
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist


@dataclass
class InstDiscConfig:
    """InstDisc hyper-parameters; defaults are the paper's (``selfsup.methods.instdisc.Config``)."""

    # bank size n = dataset size (sec. 3.1); the trainer sets it to len(train set). 4096 is only
    # a placeholder for direct construction (indices must lie in [0, num_samples)).
    num_samples: int = 4096
    embed_dim: int = 128  # feature dimension of v (sec. 3.1 / 4: 128-d)
    num_negatives: int = 4096  # NCE noise samples m (sec. 3.2 / 4: m = 4096); clamped to n - 1
    temperature: float = 0.07  # tau of the non-parametric softmax (sec. 3.1 / 4: 0.07)
    bank_momentum: float = 0.5  # memory update v <- m v + (1 - m) f (official code: 0.5)
    loss: str = "nce"  # nce (sec. 3.2, eq. 5-7) | infonce (softmax over bank negatives)


Config = InstDiscConfig


def check_common(name: str, cfg: Any, backbone: nn.Module) -> int:
    """Validate the fields InstDisc shares with other bank methods; return ``num_features``."""
    num_features = getattr(backbone, "num_features", None)
    if not isinstance(num_features, int) or num_features < 1:
        raise ConfigError(f"{name}: the backbone must have a positive integer 'num_features'")
    for key in ("num_samples", "embed_dim", "num_negatives"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"method_args.{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.num_samples < 2:
        raise ConfigError(f"method_args.num_samples must be >= 2, got {cfg.num_samples}")
    if not cfg.temperature > 0:
        raise ConfigError(f"method_args.temperature must be > 0, got {cfg.temperature}")
    if not 0.0 <= cfg.bank_momentum < 1.0:
        raise ConfigError(f"method_args.bank_momentum must be in [0, 1), got {cfg.bank_momentum}")
    if cfg.loss not in ("nce", "infonce"):
        raise ConfigError(f"method_args.loss must be 'nce' or 'infonce', got {cfg.loss!r}")
    return num_features


@register(
    "method",
    "instdisc",
    description="instance discrimination: memory bank + NCE over 4096 noise samples",
    reference="Wu et al. 2018, Unsupervised Feature Learning via Non-Parametric Instance "
    "Discrimination",
)
class InstDisc(Method):
    """InstDisc around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder (evaluated and exported).
        head: linear ``[B, num_features] -> [B, embed_dim]`` (then L2-normalised).
        memory: :class:`~selfsup.nn.memory_bank.MemoryBank` ``[num_samples, embed_dim]``.
        log_z: buffer holding ``log Z`` (NaN until the first NCE step estimates it, eq. 8).

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = InstDiscConfig
    default_views: ClassVar[str] = "simclr"  # only views[0] is used (one view per image)
    # sec. 4: SGD, lr 0.03 at batch 256, momentum 0.9, weight decay 5e-4 (step decay in the
    # paper; cosine here), no warm-up.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.03,
        "lr_scaling": "linear",
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
    }

    def __init__(self, backbone: nn.Module, cfg: InstDiscConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = check_common("instdisc", cfg, backbone)
        self.head = mlp([num_features, cfg.embed_dim], batch_norm=False, bias=True)
        self.memory = MemoryBank(cfg.num_samples, cfg.embed_dim, cfg.bank_momentum)
        self.num_negatives = MemoryBank.clamp_negatives(cfg.num_negatives, cfg.num_samples)
        self.register_buffer("log_z", torch.tensor(float("nan")))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def training_step(self, batch: Batch) -> StepOutput:
        """NCE (or InfoNCE) of ``normalize(head(backbone(views[0])))`` against the bank.

        Raises:
            DataError: if there is no view, or a dataset index lies outside the bank (the
                message names ``method_args.num_samples``).
        """
        if not batch.views:
            raise DataError("instdisc needs at least one view per image, got none")
        index = batch.index.to(batch.views[0].device)
        self.memory.check_index(index)
        v = F.normalize(self.head(self.backbone(batch.views[0])), dim=1)  # [B, D]
        b, k, t = v.shape[0], self.num_negatives, self.cfg.temperature
        pos = self.memory.get(index)  # [B, D]
        logs: dict[str, torch.Tensor | float] = {}
        if self.cfg.loss == "nce":
            noise = self.memory.get(self.memory.sample((b, k), v.device))  # [B, K, D]
            pos_logits = (v * pos).sum(dim=1) / t  # [B]
            noise_logits = torch.einsum("bd,bkd->bk", v, noise) / t  # [B, K]
            self._ensure_log_z(noise_logits)
            loss = nce_loss(pos_logits, noise_logits, self.cfg.num_samples, self.log_z)
            logs["log_z"] = self.log_z.detach().clone()
        else:
            negatives = self.memory.get(self.memory.sample((k,), v.device))  # [K, D]
            eye = torch.eye(b, dtype=torch.bool, device=v.device)
            loss = info_nce(v, pos, eye, t, negatives=negatives, normalize=False)
        self._pending = (index, v.detach())
        return StepOutput(loss=loss, logs=logs, embeddings=v.detach())

    @torch.no_grad()
    def _ensure_log_z(self, noise_logits: torch.Tensor) -> None:
        """Estimate ``log Z`` from the first batch (eq. 8), averaged over ranks, then keep it."""
        if bool(torch.isnan(self.log_z)):
            est = estimate_log_z(noise_logits, self.cfg.num_samples).to(self.log_z)
            self.log_z.copy_(dist.all_reduce_mean(est.clone()))

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Write the last step's features into the bank (momentum update, all ranks)."""
        if self._pending is not None:
            index, v = self._pending
            self.memory.update(index, v)
            self._pending = None
