"""VQ-VAE image tokenizer: the first stage of BEiT, trained on the user's own images.

van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE); its architecture
and settings as the authors' Sonnet example (``vqvae_example.ipynb``: 128 hidden channels, two
residual blocks of 32, ``K = 512`` codes of ``D = 64``, ``commitment_cost = 0.25``). BEiT (Bao et
al. 2022, sec. 2.2) uses OpenAI's DALL-E dVAE as its tokenizer, which cannot be downloaded
here; this method trains a discrete tokenizer whose token grid is the BEiT ViT's patch grid, and
``selfsup pretrain --method beit --set method_args.tokenizer=RUN/last.pt`` loads it.

- Encoder: the backbone's spatial map (``forward_features``: ``[B, F, h, w]``; a ViT's patch
  tokens, a CNN's last stage), then a 1x1 convolution to ``code_dim`` (Sonnet's
  ``pre_vq_conv1``). With ``--backbone vit_tiny`` and the patch size BEiT's ViT uses, the grid
  is the ViT's patch grid (one token per ViT patch) for any channel count.
- Quantiser (sec. 3.1, eq. 1): nearest of ``codebook_size`` codes
  (:class:`selfsup.nn.vq.VectorQuantizer`), straight-through gradient to the encoder.
- Decoder (sec. 4.1, Sonnet ``Decoder``): 3x3 convolution to ``hidden_dim``,
  ``num_res_blocks`` residual blocks (ReLU, 3x3 conv to ``res_hidden_dim``, ReLU, 1x1 conv
  back), ReLU, then stride-2 4x4 transposed convolutions up to the image size (one per factor 2
  of the encoder's stride; a single transposed convolution of that stride when it is not a
  power of 2), the last one to the image's channels.
- Loss (eq. 3): ``mean((x_rec - x)^2) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2`` with
  ``beta = 0.25``; the reconstruction is the MSE on the normalised input (Sonnet divides by the
  data variance, which the library's per-channel normalisation makes 1).
- Optimiser (sec. 4.1): Adam, lr 2e-4 at batch 128 (not scaled with the batch), constant, no
  weight decay.
- Augmentation: the ``beit`` preset, so the tokenizer is trained on the views it labels.

Logged: ``recon``, ``codebook``, ``commitment``, ``perplexity`` and ``usage`` (fraction of
the codebook used by the batch; dead codes show as usage well below 1). Features for evaluation:
the backbone's (pooled encoder map).

Departures: the encoder is a registered backbone rather than VQ-VAE's two strided 4x4
convolutions and residual stack; no EMA codebook updates (the VQ-VAE appendix's and BEiT v2's
alternative), no codebook restarts of dead codes. ``method_args.l2_norm=true`` (off by default,
not in VQ-VAE) looks codes up by cosine similarity of l2-normalised vectors, as ViT-VQGAN
(Yu et al. 2022, sec. 3.2) and BEiT v2's tokenizer: on small data the plain lookup leaves most
codes dead (usage falls to ~0.1 within 20 steps on digits), the normalised one keeps more alive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.vq import VectorQuantizer
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput


@dataclass
class VQTokenizerConfig:
    """VQ-VAE hyper-parameters; defaults are the paper's / its Sonnet example's."""

    codebook_size: int = 512  # K (sec. 4.1-4.2: K = 512)
    code_dim: int = 64  # D of each code (Sonnet example: embedding_dim = 64)
    beta: float = 0.25  # commitment weight (sec. 4.1: beta = 0.25)
    hidden_dim: int = 128  # decoder channels (Sonnet example: num_hiddens = 128)
    res_hidden_dim: int = 32  # residual-block bottleneck (num_residual_hiddens = 32)
    num_res_blocks: int = 2  # residual blocks (sec. 4.1 / num_residual_layers = 2)
    l2_norm: bool = False  # cosine lookup of l2-normalised codes (not VQ-VAE's; ViT-VQGAN
    # sec. 3.2 and BEiT v2's tokenizer, for better codebook usage)


Config = VQTokenizerConfig


class _Residual(nn.Module):
    """VQ-VAE's residual block: ``x + conv1x1(relu(conv3x3(relu(x))))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(dim, hidden, 3, padding=1, bias=False),
                                  nn.ReLU(), nn.Conv2d(hidden, dim, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.body(x)
        return out


def _decoder(code_dim: int, hidden: int, res_hidden: int, blocks: int, stride: int,
             out_chans: int) -> nn.Sequential:
    """Codes ``[B, code_dim, h, w]`` -> images ``[B, out_chans, h * stride, w * stride]``."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, hidden, 3, padding=1)]
    layers += [_Residual(hidden, res_hidden) for _ in range(blocks)]
    layers.append(nn.ReLU())
    ups = int(round(math.log2(stride))) if stride > 1 else 0
    if stride == 1:
        layers.append(nn.Conv2d(hidden, out_chans, 3, padding=1))
    elif 2 ** ups == stride:
        width = hidden
        for i in range(ups):
            last = i == ups - 1
            nxt = out_chans if last else max(hidden // 2, 1)
            layers.append(nn.ConvTranspose2d(width, nxt, 4, stride=2, padding=1))
            if not last:
                layers.append(nn.ReLU())
            width = nxt
    else:
        layers.append(nn.ConvTranspose2d(hidden, out_chans, stride, stride=stride))
    return nn.Sequential(*layers)


@register(
    "method",
    "vq_tokenizer",
    description="VQ-VAE image tokenizer (nearest-code quantiser, straight-through, codebook + "
    "commitment loss): the discrete visual tokens BEiT predicts",
    reference="van den Oord et al. 2017, Neural Discrete Representation Learning (VQ-VAE)",
)
class VQTokenizer(Method):
    """A VQ-VAE around the backbone's spatial map; :meth:`tokenize` gives BEiT's labels.

    Attributes:
        backbone: the encoder (evaluated and exported), with ``forward_features``.
        pre_quant: 1x1 convolution ``F -> code_dim``.
        quantizer: the codebook (:class:`~selfsup.nn.vq.VectorQuantizer`).
        decoder: codes ``[B, code_dim, h, w]`` -> images ``[B, C, S, S]``.
        grid: ``(h, w)``, the token grid at the backbone's image size.
        codebook_size: ``K``, the vocabulary BEiT predicts over.

    Raises:
        ConfigError: for a backbone without ``forward_features``/``in_chans``/``image_size``,
            or a codebook of fewer than 2 codes.
    """

    Config: ClassVar[type] = VQTokenizerConfig
    default_views: ClassVar[str] = "beit"
    # sec. 4.1: "ADAM optimiser with learning rate 2e-4 ... batch-size 128"; no schedule stated
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adam", "lr": 2e-4, "lr_scaling": "none", "weight_decay": 0.0,
        "betas": (0.9, 0.999), "warmup_epochs": 0, "min_lr_ratio": 1.0, "clip_grad": 0.0,
    }

    def __init__(self, backbone: nn.Module, cfg: VQTokenizerConfig) -> None:
        super().__init__(backbone, cfg)
        feat = self.feature_dim()
        self.require_positive(cfg, ("code_dim", "hidden_dim", "res_hidden_dim"))
        if cfg.num_res_blocks < 0 or cfg.beta < 0:
            raise ConfigError(f"method_args.num_res_blocks and method_args.beta must be >= 0, "
                              f"got {cfg.num_res_blocks} and {cfg.beta}")
        chans, size = getattr(backbone, "in_chans", None), getattr(backbone, "image_size", None)
        if not (hasattr(backbone, "forward_features") and isinstance(chans, int)
                and isinstance(size, int)):
            raise ConfigError("vq_tokenizer needs a backbone with forward_features, in_chans and "
                              f"image_size (selfsup list backbones), got {type(backbone).__name__}")
        self.in_chans, self.image_size = chans, size
        self.grid = self._grid(backbone, chans, size)
        stride = -(-size // self.grid[0])  # ceil: the decoder output is cropped to the image
        self.pre_quant = nn.Conv2d(feat, cfg.code_dim, 1)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.l2_norm)
        self.codebook_size = cfg.codebook_size
        self.decoder = _decoder(cfg.code_dim, cfg.hidden_dim, cfg.res_hidden_dim,
                                cfg.num_res_blocks, stride, chans)

    @staticmethod
    def _grid(backbone: nn.Module, chans: int, size: int) -> tuple[int, int]:
        """The ``(h, w)`` of the backbone's map at its image size (one probe in eval mode)."""
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            enc: Any = backbone
            fmap = enc.forward_features(torch.zeros(1, chans, size, size))
        backbone.train(was)
        if fmap.dim() != 4 or fmap.shape[-2] != fmap.shape[-1]:
            raise ConfigError(f"vq_tokenizer: the backbone's forward_features must give a square "
                              f"map [B, F, h, h], got {tuple(fmap.shape)}")
        return int(fmap.shape[-2]), int(fmap.shape[-1])

    def encode(self, x: Tensor) -> Tensor:
        """Images ``[B, C, S, S]`` -> encoder outputs ``z_e`` ``[B, h, w, code_dim]``."""
        enc: Any = self.backbone
        z: Tensor = self.pre_quant(enc.forward_features(x))  # [B, D, h, w]
        return z.permute(0, 2, 3, 1)

    def decode(self, z_q: Tensor) -> Tensor:
        """Codes ``[B, h, w, code_dim]`` -> images ``[B, C, S, S]``."""
        out: Tensor = self.decoder(z_q.permute(0, 3, 1, 2))
        return out[..., : self.image_size, : self.image_size]

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> Tensor:
        """Images ``[B, C, S, S]`` (normalised as in training) -> token ids ``[B, h, w]``
        (int64 in ``[0, codebook_size)``); what BEiT predicts."""
        ids: Tensor = self.quantizer.lookup(self.encode(x))
        return ids

    def training_step(self, batch: Batch) -> StepOutput:
        """Reconstruct ``batch.views[0]`` ``[B, C, S, S]`` through the codebook.

        Raises:
            DataError: without a view, or for a view of another size or channel count.
        """
        if not batch.views:
            raise DataError("vq_tokenizer needs one view per image, got none")
        x = batch.views[0]
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[-2:] != (self.image_size,) * 2:
            raise DataError(f"vq_tokenizer expects views [B, {self.in_chans}, {self.image_size}, "
                            f"{self.image_size}], got {tuple(x.shape)}")
        z_e = self.encode(x)  # [B, h, w, D]
        q = self.quantizer(z_e)
        rec = self.decode(q.quantized)
        recon = F.mse_loss(rec.float(), x.float())
        loss = recon + q.codebook_loss + self.cfg.beta * q.commitment_loss
        logs = {"recon": recon.detach(), "codebook": q.codebook_loss.detach(),
                "commitment": q.commitment_loss.detach(), "perplexity": q.perplexity,
                "usage": q.usage}
        return StepOutput(loss=loss, logs=logs, embeddings=z_e.mean(dim=(1, 2)).detach())
