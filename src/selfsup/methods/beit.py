"""BEiT: masked image modeling by predicting a frozen tokenizer's visual tokens.

Bao et al. 2022, "BEiT: BERT Pre-Training of Image Transformers". Reference code: microsoft/unilm
``beit/modeling_pretrain.py`` (``VisionTransformerForMaskedImageModeling``),
``beit/masking_generator.py`` (``MaskingGenerator``), ``beit/engine_for_pretraining.py``
(``train_one_epoch``), ``beit/run_beit_pretraining.py`` and ``beit/datasets.py``
(``DataAugmentationForBEiT``).

- Visual tokens (sec. 2.2): a frozen discrete tokenizer maps the image to one token id per ViT
  patch; they are computed without gradient on the unmasked image and are the labels. The paper
  uses DALL-E's dVAE (vocabulary 8192), which cannot be downloaded here: ``method_args.tokenizer``
  is the ``RUN/last.pt`` of ``selfsup pretrain --method vq_tokenizer`` (a VQ-VAE trained on the
  same data with a backbone of the same patch grid), or, from Python, any ``nn.Module`` whose
  ``tokenize(x)`` (or, without one, ``forward(x)``) maps the views ``[B, C, S, S]`` to integer ids
  ``[B, h, w]`` or ``[B, h * w]`` on the ViT's patch grid; the vocabulary is its
  ``codebook_size`` attribute or ``method_args.vocab_size``.
- Masking (sec. 2.5, Algorithm 1): blockwise masking of about 40% of the patches
  (:func:`selfsup.nn.block_masks.block_mask`; blocks of >= 16 patches on the paper's 14 x 14
  grid, aspect 0.3-1/0.3). Small grids scale the smallest block by the grid's area,
  ``max(1, round(16 N / 196))``: 1 patch on 4 x 4, 4 on 7 x 7, 5 on 8 x 8.
- Encoder (sec. 2.3): every patch goes through the ViT; a masked patch's embedding is replaced
  by one learned ``mask_token`` before the position embedding
  (:meth:`selfsup.nn.backbones.vit.ViT.forward_tokens` with ``mask``).
- Head and loss (sec. 2.3, eq. 1): a linear layer ``D -> vocabulary`` on the final patch tokens
  (``lm_head``), cross-entropy against the tokenizer's ids on the masked positions only
  (:func:`selfsup.losses.masked_tokens.masked_token_ce`). Logged: ``mlm_acc`` (the reference's
  masked-token accuracy) and the masked fraction.
- Initialisation: ``mask_token`` and ``lm_head.weight`` truncated normal(0.02), the head's bias 0.
- Optimiser (appendix, pre-training table; README command): AdamW, lr 1.5e-3 at batch 2048
  (1.875e-4 x B / 256 here), betas (0.9, 0.999), weight decay 0.05 not on biases and 1-D
  parameters, 10 warm-up epochs, cosine to 1e-5 (``--min_lr``), gradient clipping at 3.0.
- Augmentation: the ``beit`` preset (colour jitter 0.4, flip, random resized crop 0.08-1).
- Tokenizer state: the tokenizer is a frozen submodule (``requires_grad=False``, always in eval
  mode, called under ``no_grad``); its weights are part of ``state_dict()``, so a checkpoint
  holds the exact labeller it was trained with and ``--resume`` is exact even if the tokenizer
  file was retrained since: the method is rebuilt from the file (which must still exist, with the
  same architecture) and the checkpoint's tokenizer weights then replace the file's. The
  optimiser never sees it.

Departures: the tokenizer sees the same view as the ViT (resized bilinearly to the tokenizer's
own image size if that differs), not BEiT's second, 112-px view of the same crop
(``--second_input_size``, lanczos); the tokenizer is a VQ-VAE trained on the user's data, not
DALL-E's dVAE, so its vocabulary is smaller (512 by default). With ``input_mean``/``input_std``
(filled in by the trainer) the view is re-normalised into the tokenizer run's normalisation.
The library's ViT has learned absolute position embeddings and no layer scale; the reference's
ViT-B uses a shared relative position bias, layer scale 0.1, stochastic depth 0.1 and its own
truncated-normal initialisation (``fix_init_weight``). Drop path with
``--set backbone.kwargs.drop_path_rate=0.1``. The reference exempts ``pos_embed`` and
``cls_token`` from weight decay; here only parameters with fewer than 2 dimensions are exempt.
The reference's head runs on the masked tokens only; here on every patch (the loss reads the
masked ones: the same value). The cross-entropy is normalised by the mean masked count over
ranks (the reference: each rank's own mean), so DDP equals one process on the whole batch.
``mask_ratio = 0.4`` follows the paper's text; the reference's ``--num_mask_patches 75`` is
0.383 of 196.

Features for evaluation: the mean of the patch tokens (``eval_pool = "avg"``): no loss reaches
the class token, and BEiT fine-tunes and probes on average-pooled patch tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.losses.masked_tokens import masked_token_ce
from selfsup.methods.base import Method, build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.block_masks import block_mask
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, DataError, StepOutput
from selfsup.utils import dist

_NEEDS_TOKENIZER = ("beit needs method_args.tokenizer: first run `selfsup pretrain --method "
                    "vq_tokenizer --backbone <BEiT's ViT, same patch size> --data <DATA> --out RUN`"
                    ", then pass --set method_args.tokenizer=RUN/last.pt (from Python also a "
                    "module mapping images to token ids)")


@dataclass
class BEiTConfig:
    """BEiT hyper-parameters; defaults are the paper's (``selfsup.methods.beit.Config``)."""

    tokenizer: Any = None  # vq_tokenizer RUN/last.pt path, or an nn.Module (sec. 2.2: DALL-E)
    vocab_size: int = 0  # 0 = the tokenizer's codebook_size (sec. 2.2: |V| = 8192)
    mask_ratio: float = 0.4  # share of patches masked (sec. 2.5: "around 40%")
    min_num_patches: int = 0  # smallest block (Alg. 1: 16 of 14x14); 0 = round(16 N / 196)
    max_num_patches: int = 0  # largest block; 0 = the masked count (MaskingGenerator: None)
    min_aspect: float = 0.3  # block aspect range 0.3 - 1/0.3 (Alg. 1)
    input_mean: list[float] | None = None  # the view's normalisation (filled in by the trainer)
    input_std: list[float] | None = None  # its std (filled in by the trainer)


Config = BEiTConfig


def load_tokenizer(path: str) -> tuple[nn.Module, int, list[float], list[float]]:
    """The tokenizer of a ``selfsup pretrain --method vq_tokenizer`` checkpoint.

    Returns:
        ``(tokenizer, image size, mean, std)``: the VQ tokenizer with its trained weights, the
        image size and per-channel normalisation it was trained with.

    Raises:
        ConfigError: for a missing or unreadable file, or a checkpoint of another method.
    """
    file = Path(path)
    if not file.is_file():
        hint = " (pass the run's last.pt)" if file.is_dir() else ""
        raise ConfigError(f"method_args.tokenizer: '{path}' does not exist{hint}; "
                          + _NEEDS_TOKENIZER.split(": ", 1)[1])
    try:
        payload = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001  (pickle, zip and I/O errors alike)
        raise ConfigError(f"method_args.tokenizer: '{path}' is unreadable or corrupt "
                          f"({type(e).__name__})") from None
    method = payload.get("method") if isinstance(payload, dict) else None
    if method != "vq_tokenizer" or "model" not in payload:
        raise ConfigError(f"method_args.tokenizer: '{path}' is not a vq_tokenizer checkpoint "
                          f"(method {method!r}); pass the last.pt of `selfsup pretrain --method "
                          "vq_tokenizer`")
    cfg, data = payload["config"], payload["data"]
    b = cfg["backbone"]
    backbone = create_backbone(b["name"], in_chans=int(data["channels"]),
                               image_size=int(data["image_size"]), cifar_stem=b.get("cifar_stem"),
                               patch_size=b.get("patch_size"), **dict(b.get("kwargs") or {}))
    tok = build_method("vq_tokenizer", backbone, **dict(cfg["method_args"]))
    tok.load_state_dict(payload["model"])
    norm = payload["normalization"]
    return tok, int(data["image_size"]), list(norm["mean"]), list(norm["std"])


@register(
    "method",
    "beit",
    description="masked patches replaced by a learned token, a linear head predicts a frozen "
    "tokenizer's visual token of every masked patch (cross-entropy); needs a vq_tokenizer run",
    reference="Bao et al. 2022, BEiT: BERT Pre-Training of Image Transformers",
)
class BEiT(Method):
    """BEiT around a ViT backbone and a frozen tokenizer.

    Attributes:
        backbone: the ViT encoder (evaluated and exported).
        mask_token: learned ``[1, 1, D]`` embedding of a masked patch.
        lm_head: ``Linear(D, vocab_size)``.
        tokenizer: the frozen tokenizer (in ``state_dict``, never trained).

    Raises:
        ConfigError: without ``method_args.tokenizer``, for an unreadable tokenizer file, a
            tokenizer whose ids do not fit the ViT's patch grid, an unknown vocabulary size, a
            backbone that is not a ViT, or masking options out of range.
    """

    Config: ClassVar[type] = BEiTConfig
    default_views: ClassVar[str] = "beit"
    backbone_kind: ClassVar[str] = "vit"
    eval_pool: ClassVar[str | None] = "avg"
    tok_scale: Tensor
    tok_shift: Tensor
    # appendix pre-training table / README: --lr 1.5e-3 at 16 x 128 = 2048, --min_lr 1e-5,
    # --warmup_epochs 10, --clip_grad 3.0, --weight_decay 0.05, Adam betas (0.9, 0.999)
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw", "lr": 1.5e-3 * 256 / 2048, "lr_scaling": "linear",
        "weight_decay": 0.05, "betas": (0.9, 0.999), "warmup_epochs": 10,
        "min_lr_ratio": 1e-5 / 1.5e-3, "clip_grad": 3.0, "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: BEiTConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "beit")
        self.image_size = int(self._vit.image_size)
        self.grid = self.image_size // self.patch
        n = self.grid ** 2
        if not 0.0 < cfg.mask_ratio < 1.0:
            raise ConfigError(f"method_args.mask_ratio must be in (0, 1), got {cfg.mask_ratio}")
        self.num_masked = max(1, int(round(cfg.mask_ratio * n)))
        self.min_block = min(cfg.min_num_patches or max(1, round(16 * n / 196)), self.num_masked)
        self.max_block = cfg.max_num_patches or None
        tok, tok_size, mean, std = self._tokenizer(cfg.tokenizer)
        self.tokenizer = tok
        self.tok_size = tok_size
        self._set_renorm(cfg, mean, std)
        self.tokenizer.requires_grad_(False)
        for p in self.tokenizer.parameters():
            p.grad = None  # e.g. left over from training it in the same process
        self.tokenizer.eval()
        self.vocab_size = self._vocab(cfg)
        self._check_grid()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.lm_head = nn.Linear(dim, self.vocab_size)
        nn.init.trunc_normal_(self.lm_head.weight, std=0.02, a=-0.02, b=0.02)
        nn.init.zeros_(self.lm_head.bias)

    def _tokenizer(self, spec: Any) -> tuple[nn.Module, int, list[float] | None,
                                              list[float] | None]:
        if spec is None or spec == "":
            raise ConfigError(_NEEDS_TOKENIZER)
        if isinstance(spec, nn.Module):
            return spec, int(getattr(spec, "image_size", self.image_size)), None, None
        if isinstance(spec, (str, Path)):
            return load_tokenizer(str(spec))
        raise ConfigError(f"method_args.tokenizer must be a checkpoint path or an nn.Module, got "
                          f"{type(spec).__name__}")

    def _set_renorm(self, cfg: BEiTConfig, mean: list[float] | None,
                    std: list[float] | None) -> None:
        """``x_tok = x scale + shift``: the view (normalised with ``input_mean/std``) in the
        tokenizer run's normalisation ``(mean, std)``; identity when either is unknown."""
        c = self.in_chans
        scale, shift = torch.ones(1, c, 1, 1), torch.zeros(1, c, 1, 1)
        if mean is not None and std is not None and cfg.input_mean and cfg.input_std:
            if not len(mean) == len(std) == len(cfg.input_mean) == len(cfg.input_std) == c:
                raise ConfigError(f"beit: the tokenizer was trained on {len(mean)}-channel "
                                  f"images, the ViT takes {c} channels")
            tm, ts = torch.tensor(mean), torch.tensor(std)
            im, istd = torch.tensor(cfg.input_mean), torch.tensor(cfg.input_std)
            scale = (istd / ts).view(1, c, 1, 1)
            shift = ((im - tm) / ts).view(1, c, 1, 1)
        self.register_buffer("tok_scale", scale, persistent=False)
        self.register_buffer("tok_shift", shift, persistent=False)

    def _vocab(self, cfg: BEiTConfig) -> int:
        found = getattr(self.tokenizer, "codebook_size", None)
        vocab = cfg.vocab_size or found
        if not isinstance(vocab, int) or vocab < 2:
            raise ConfigError("beit: set method_args.vocab_size (>= 2) to the tokenizer's "
                              f"vocabulary; the tokenizer has no codebook_size (got {vocab!r})")
        if isinstance(found, int) and cfg.vocab_size and cfg.vocab_size < found:
            raise ConfigError(f"method_args.vocab_size={cfg.vocab_size} is below the tokenizer's "
                              f"codebook_size {found}")
        return vocab

    def _check_grid(self) -> None:
        """One probe: the tokenizer must give one integer id per ViT patch."""
        where = next(iter(self.tokenizer.parameters()), torch.zeros(())).device
        x = torch.zeros(1, self.in_chans, self.image_size, self.image_size, device=where)
        try:
            self.tokenize(x)
        except ConfigError:
            raise
        except Exception as e:  # noqa: BLE001  (a user module's own failure)
            msg = f"beit: the tokenizer failed on a [1, {self.in_chans}, {self.image_size}, " \
                f"{self.image_size}] image: {e}"
            raise ConfigError(msg.splitlines()[0][:300]) from None

    def train(self, mode: bool = True) -> BEiT:
        """Train mode for everything but the tokenizer, which stays in eval mode."""
        super().train(mode)
        self.tokenizer.eval()
        return self

    @torch.no_grad()
    def tokenize(self, x: Tensor) -> Tensor:
        """Views ``[B, C, S, S]`` -> the tokenizer's ids ``[B, N]`` (int64, no gradient).

        Raises:
            ConfigError: if the ids are not integers with one per ViT patch.
        """
        t = x * self.tok_scale.to(x) + self.tok_shift.to(x)
        if t.shape[-1] != self.tok_size:
            t = F.interpolate(t, size=(self.tok_size, self.tok_size), mode="bilinear",
                              align_corners=False, antialias=True)
        fn = getattr(self.tokenizer, "tokenize", None)
        ids = fn(t) if callable(fn) else self.tokenizer(t)
        n = self.grid ** 2
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.numel() != x.shape[0] * n:
            got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ConfigError(f"beit: the tokenizer must give integer ids [B, {self.grid}, "
                              f"{self.grid}] (one per ViT patch of {self.patch} px), got {got}; "
                              "train it with the same backbone and patch size as BEiT's ViT")
        return ids.reshape(x.shape[0], n).long()

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """BEiT's blockwise masks for ``batch_size`` images: ``mask`` ``[B, N]`` bool (True =
        masked), what ``Batch.masks`` may carry."""
        mask = block_mask(batch_size, self.grid, self.grid, self.num_masked,
                          min_num_patches=self.min_block, max_num_patches=self.max_block,
                          min_aspect=self.cfg.min_aspect, device=device, generator=generator)
        return {"mask": mask}

    def training_step(self, batch: Batch) -> StepOutput:
        """Mask ``batch.views[0]`` ``[B, C, S, S]`` and predict the tokenizer's ids of the masked
        patches.

        Raises:
            DataError: without a view, for a view of another size or channel count, or masks
                of the wrong shape.
        """
        x = first_view(batch.views, "beit", self.in_chans, self.image_size)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        mask = ms["mask"].to(x.device).bool()
        n = self.grid ** 2
        if mask.shape != (x.shape[0], n):
            raise DataError(f"beit: batch.masks['mask'] must be [{x.shape[0]}, {n}], got "
                            f"{tuple(mask.shape)}")
        labels = self.tokenize(x)  # [B, N], of the unmasked view
        tokens = self._vit.forward_tokens(x, mask=mask, mask_token=self.mask_token)[:, 1:]
        logits = self.lm_head(tokens)  # [B, N, V]
        # every masked patch of the global batch weighs the same under DDP's gradient mean
        count = dist.all_reduce_mean(mask.sum().to(torch.float32))
        loss = masked_token_ce(logits, labels, mask, normalizer=count)
        with torch.no_grad():
            acc = (logits[mask].argmax(-1) == labels[mask]).float().mean()
        return StepOutput(loss=loss, logs={"mlm_acc": acc, "masked": mask.float().mean()},
                          embeddings=tokens.mean(dim=1).detach())

    @property
    def _vit(self) -> Any:
        """The backbone as the ViT :func:`~selfsup.nn.backbones.vit.check_vit` accepted."""
        return self.backbone
