"""InstDisc: non-parametric instance discrimination with a memory bank and NCE.

Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance Discrimination".
Every image is its own class. The backbone ``f`` and a linear layer map an image to a 128-d unit
vector ``v = normalize(W f(x))`` (sec. 3.1); a memory bank ``V`` keeps one such vector per
dataset sample. The instance softmax over all ``n`` entries, ``P(i | v) = exp(v_i . v / t) / Z``
(eq. 2, ``t = 0.07``), is trained by NCE against ``m = 4096`` entries drawn uniformly as noise
(sec. 3.2, eq. 5-7; :func:`selfsup.losses.nce.nce_loss`). After each optimiser step the batch's
entries move towards the new features, ``v_i <- normalize(0.5 v_i + 0.5 f_i)`` (official code),
with indices and features all-gathered so every rank keeps the same bank.

Bank initialisation (the cause of "does not learn"). The paper and its code start the bank with
random unit vectors. During the first epoch every anchor's positive is then one of those random
vectors, while the noise entries that score highest are the features already written by earlier
batches, which at random init are nearly parallel to the anchor (cosine 0.6-0.9 after ReLU and
pooling). The gradient ``sum_k p_k (w_k - w_pos) / t`` is then the same for every anchor (away
from the mean of the written features), it accumulates coherently in the head and the whole
embedding collapses to one point within the first epoch (digits protocol: pairwise cosine 0.64 ->
0.98 in 20 steps, bank cosine 0.99, InfoNCE stuck at chance ``log n``, kNN = random init);
once collapsed, the fixed point has no gradient. On ImageNet the first epoch is 5,000 steps with a
far more diverse bank, so this transient matters less. ``bank_init = "lazy"`` (default here)
writes each sample's own (detached) first feature into its entry before the loss reads it, so a
positive is never random noise; ``"random"`` is the paper's. With the lazy bank InstDisc learns
(docs/methods/contrastive.md).

Normalising constant ``Z``. The paper estimates ``Z = n E_j[exp(v_j . v / t)]`` once, from the
first batch (eq. 8), and keeps it. With a random bank that is about ``n exp(1 / (2 D t^2))``;
once the bank holds real, strongly correlated features the noise logits exceed ``log Z`` by
several units, every NCE posterior saturates (``h -> 1``), the positive term has no gradient and
the noise term becomes linear in ``v``, pushing every feature the same way (digits: loss
313 -> 2861, kNN 33.7% vs 85.8% at random init). ``z_momentum = 0.99`` (default here; He's fix
in HobbitLong/CMC issue #23) re-estimates ``Z`` every step as a moving average, which keeps the
posteriors calibrated; ``z_momentum = 0`` is the paper's fixed ``Z``. ``loss = "infonce"`` is the
softmax over the positive entry and the ``m`` noise entries (no ``Z`` at all).

Noise entries are drawn once per step and shared by the batch (``[B, m]`` logits from one matrix
product instead of gathering ``[B, m, D]``; the official code draws per anchor; same expectation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.nce import bank_info_nce, bank_logits, estimate_log_z, nce_loss
from selfsup.methods.base import Method
from selfsup.nn.heads import mlp
from selfsup.nn.memory_bank import MemoryBank, NormalizingConstant
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput

LOSSES = ("nce", "infonce")
BANK_INITS = ("lazy", "random")


@dataclass
class InstDiscConfig:
    """InstDisc hyper-parameters; paper defaults (``selfsup.methods.instdisc.Config``)."""

    # bank size n = dataset size (sec. 3.1); the trainer sets it to len(train set). 4096 is only
    # a placeholder for direct construction (indices must lie in [0, num_samples)).
    num_samples: int = 4096
    embed_dim: int = 128  # feature dimension of v (sec. 3.1 / 4: 128-d)
    num_negatives: int = 4096  # NCE noise samples m (sec. 3.2 / 4: m = 4096); clamped to n - 1
    temperature: float = 0.07  # t of the non-parametric softmax (sec. 3.1 / 4: 0.07)
    bank_momentum: float = 0.5  # memory update v <- m v + (1 - m) f (official code: 0.5)
    loss: str = "nce"  # nce (sec. 3.2, eq. 5-7) | infonce (softmax over bank noise entries)
    # Z of eq. 8: 0 = estimated from the first batch and fixed (sec. 3.2); 0.99 = moving
    # average (He, HobbitLong/CMC#23): the fixed Z collapses small runs (module docstring)
    z_momentum: float = 0.99
    # initial bank: "random" unit vectors (paper, sec. 3.1) | "lazy": each entry is set to the
    # sample's own first feature on its first visit, before the loss reads it (module docstring)
    bank_init: str = "lazy"


Config = InstDiscConfig


def check_bank_config(cfg: Any) -> None:
    """Validate the memory-bank fields InstDisc's Config shares with CMC's.

    Raises:
        ConfigError: naming the ``method_args`` field and the valid range.
    """
    Method.require_positive(cfg, ("num_samples", "embed_dim", "num_negatives"))
    if cfg.num_samples < 2:
        raise ConfigError(f"method_args.num_samples must be >= 2, got {cfg.num_samples}")
    if not cfg.temperature > 0:
        raise ConfigError(f"method_args.temperature must be > 0, got {cfg.temperature}")
    for key in ("bank_momentum", "z_momentum"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise ConfigError(f"method_args.{key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.bank_init not in BANK_INITS:
        raise ConfigError(f"method_args.bank_init must be one of {BANK_INITS}, got "
                          f"{cfg.bank_init!r}")
    if cfg.loss not in LOSSES:
        raise ConfigError(f"method_args.loss must be one of {LOSSES}, got {cfg.loss!r}")


@register(
    "method",
    "instdisc",
    description="memory bank of 128-d features + NCE (4096 noise samples), instance "
    "discrimination",
    reference="Wu et al. 2018, Unsupervised Feature Learning via Non-Parametric Instance "
    "Discrimination",
)
class InstDisc(Method):
    """InstDisc around any backbone with a ``num_features`` attribute.

    Attributes:
        backbone: the encoder (evaluated and exported).
        head: linear ``[B, num_features] -> [B, embed_dim]`` (then L2-normalised).
        memory: :class:`~selfsup.nn.memory_bank.MemoryBank` ``[num_samples, embed_dim]``.
        z: :class:`~selfsup.nn.memory_bank.NormalizingConstant` (``log Z``, NaN until the
            first NCE step).

    Raises:
        ConfigError: for a backbone without ``num_features`` or an invalid Config value.
    """

    Config: ClassVar[type] = InstDiscConfig
    default_views: ClassVar[str] = "simclr"  # only views[0] is used (one view per image)
    # sec. 4: SGD, lr 0.03 at batch 256, momentum 0.9, weight decay 5e-4 (step decay in the
    # paper; cosine here), no warm-up. zhirongw/lemniscate.pytorch main.py: SGD over
    # model.parameters(), so BN and biases are decayed too.
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "sgd",
        "lr": 0.03,
        "lr_scaling": "linear",
        "weight_decay": 5e-4,
        "momentum": 0.9,
        "warmup_epochs": 0,
        "min_lr_ratio": 0.0,
        "decay_norm_bias": True,
    }

    def __init__(self, backbone: nn.Module, cfg: InstDiscConfig) -> None:
        super().__init__(backbone, cfg)
        num_features = self.feature_dim()
        check_bank_config(cfg)
        self.head = mlp([num_features, cfg.embed_dim], batch_norm=False, bias=True)
        self.memory = MemoryBank(cfg.num_samples, cfg.embed_dim, cfg.bank_momentum)
        self.z = NormalizingConstant(cfg.z_momentum)
        self.num_negatives = MemoryBank.clamp_negatives(cfg.num_negatives, cfg.num_samples)
        self._pending: tuple[Tensor, Tensor] | None = None

    def embed(self, x: Tensor) -> Tensor:
        """``normalize(head(backbone(x)))``: ``[B, C, H, W] -> [B, embed_dim]``."""
        return F.normalize(self.head(self.backbone(x)), dim=1)

    def contrast(self, v: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """NCE (or InfoNCE) of features ``v`` ``[B, D]`` against the bank; returns
        ``(loss, log Z)`` (``log Z`` is unused and left unset for InfoNCE)."""
        pos = self.memory.get(index)  # [B, D]
        noise = self.memory.get(self.memory.sample((self.num_negatives,), v.device))  # [K, D]
        pos_logits, noise_logits = bank_logits(v, pos, noise, self.cfg.temperature)
        if self.cfg.loss == "infonce":
            return bank_info_nce(pos_logits, noise_logits), self.z.log_z
        n = self.cfg.num_samples
        log_z = self.z.update(estimate_log_z(noise_logits, n)) if self.training else self.z.log_z
        if not self.z.is_set:  # eval before any training step: estimate without storing
            log_z = estimate_log_z(noise_logits, n)
        return nce_loss(pos_logits, noise_logits, n, log_z), log_z

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
        v = self.embed(batch.views[0])  # [B, D]
        if self.training and self.cfg.bank_init == "lazy":
            self.memory.fill_unwritten(index, v.detach())
        loss, log_z = self.contrast(v, index)
        if self.training:
            self._pending = (index, v.detach())
        logs: dict[str, Tensor | float] = {
            "pos_sim": (v.detach() * self.memory.get(index).to(v.dtype)).sum(dim=1).mean()
        }
        if self.cfg.loss == "nce":
            logs["log_z"] = log_z.detach().clone().float()
        return StepOutput(loss=loss, logs=logs, embeddings=v.detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """Write the last step's features into the bank (momentum update, all ranks)."""
        if self._pending is not None:
            index, v = self._pending
            self.memory.update(index, v)
            self._pending = None
