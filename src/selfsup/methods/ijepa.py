"""I-JEPA: predict the target encoder's representations of masked blocks from a context block.

Assran et al. 2023, "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture". Reference code: facebookresearch/ijepa ``src/train.py`` (the step, the
schedules), ``src/models/vision_transformer.py`` (``VisionTransformerPredictor``),
``src/masks/multiblock.py`` (``MaskCollator``) and ``configs/in1k_vith14_ep300.yaml``.

- Masks (sec. 3, "Targets" / "Context"; :func:`selfsup.nn.block_masks.multiblock_masks`): per
  image 4 target blocks (scale 0.15-0.2, aspect 0.75-1.5) and one context block (scale
  0.85-1, square) with the targets' patches removed from it.
- Context encoder (the backbone, evaluated and exported): a ViT on the context patches only
  (``forward_tokens(x, keep=context)``).
- Target encoder: an EMA of the context encoder's parameters (momentum linear from 0.996 to
  1.0 over the run, ``train.py``'s ``momentum_scheduler``) on the whole image; its patch
  tokens are layer-normalised without affine parameters (``F.layer_norm(h, (D,))``) and the
  target blocks' tokens are the targets. No gradient reaches it.
- Predictor (``VisionTransformerPredictor``): a narrow ViT (``pred_dim`` 384, ``pred_depth``
  12, the encoder's head count): the context tokens mapped to ``pred_dim`` plus the predictor's
  fixed sine-cosine position embedding of their patches, one mask token plus the position
  embedding of every target patch, ``pred_depth`` blocks, LayerNorm, and a linear map back to
  the encoder width; run once per target block, and only the mask tokens' outputs are kept.
- Loss: smooth L1 between predictions and targets, averaged over all target patches of all
  blocks (``F.smooth_l1_loss``).
- Optimiser (``in1k_vith14_ep300.yaml``): AdamW, lr 1e-3 at batch 2048 (1.25e-4 x B / 256
  here) after 40 warm-up epochs (from 2e-4 in the reference; from lr / steps here), cosine to
  1e-6; weight decay cosine from 0.04 to 0.4 on weights only; no gradient clipping.
- Augmentation: random resized crop (scale 0.3-1) only, no flip or colour (the ``ijepa``
  preset).
- Position embeddings: fixed 2-D sine-cosine in encoder and predictor (``requires_grad=False``
  in the reference); this file writes them into the ViT's ``pos_embed`` and freezes it.

Departure: the reference's ViT has no class token; the library's ViT has one, which here takes
part in the context and target encoders' attention but whose output is not used (nor
predicted). I-JEPA features are evaluated by the average of the patch tokens, as the paper
does: ``eval_pool = "avg"`` fills ``backbone.kwargs.global_pool=avg`` unless the user sets
it. On small patch grids the masks' ``min_keep``
(10 of 196 patches in the reference) is scaled to the grid, at least 2.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from selfsup.methods.base import Method
from selfsup.nn.backbones.vit import check_vit, first_view
from selfsup.nn.block_masks import multiblock_masks
from selfsup.nn.patches import sincos_2d
from selfsup.registry import register
from selfsup.types import Batch, ConfigError, StepOutput
from selfsup.utils.schedules import linear


@dataclass
class IJEPAConfig:
    """I-JEPA hyper-parameters; defaults are the paper's (``selfsup.methods.ijepa.Config``)."""

    pred_dim: int = 384  # predictor width (configs: pred_emb_dim 384)
    pred_depth: int = 12  # predictor blocks (configs: pred_depth 12; sec. 5 ablates it)
    num_targets: int = 4  # target blocks per image (sec. 3: M = 4)
    target_scale: tuple[float, float] = (0.15, 0.2)  # target block area (sec. 3)
    target_aspect: tuple[float, float] = (0.75, 1.5)  # target block aspect ratio (sec. 3)
    context_scale: tuple[float, float] = (0.85, 1.0)  # context block area, unit aspect (sec. 3)
    min_keep: int = 10  # least context patches (multiblock.py); scaled to small grids
    momentum_base: float = 0.996  # EMA momentum at the start (configs: ema [0.996, 1.0])
    momentum_end: float = 1.0  # ... at the end, linear in between (train.py)


Config = IJEPAConfig


class Predictor(nn.Module):
    """``VisionTransformerPredictor``: context tokens + positional mask tokens -> predictions.

    Args:
        dim: encoder width ``D``; pred_dim: predictor width; depth: blocks; heads: attention
        heads; grid: patch-grid side (the fixed sine-cosine embedding is ``[grid^2, pred_dim]``).
    """

    pos_embed: Tensor

    def __init__(self, dim: int, pred_dim: int, depth: int, heads: int, grid: int) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, pred_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_dim))
        self.register_buffer("pos_embed", sincos_2d(pred_dim, grid), persistent=False)
        norm = functools.partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*[
            Block(pred_dim, heads, mlp_ratio=4.0, qkv_bias=True,
                  norm_layer=norm)  # type: ignore[arg-type]
            for _ in range(depth)])
        self.norm = nn.LayerNorm(pred_dim, eps=1e-6)
        self.proj = nn.Linear(pred_dim, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # the reference's init_std
        for m in self.modules():  # VisionTransformerPredictor._init_weights
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for i, blk in enumerate(self.blocks):  # fix_init_weight: rescale by depth
            b: Any = blk
            for lin in (b.attn.proj, b.mlp.fc2):
                lin.weight.data.div_((2.0 * (i + 1)) ** 0.5)

    def forward(self, context: Tensor, ctx_index: Tensor, tgt_index: Tensor) -> Tensor:
        """``context`` ``[B, Kc, D]`` at patches ``ctx_index`` ``[B, Kc]`` -> predictions
        ``[B, Kt, D]`` for patches ``tgt_index`` ``[B, Kt]``."""
        x = self.embed(context) + self.pos_embed[ctx_index].to(context.dtype)  # [B, Kc, Dp]
        b, kt = tgt_index.shape
        tokens = self.mask_token.to(x.dtype).expand(b, kt, -1) + self.pos_embed[tgt_index].to(
            x.dtype)
        x = self.norm(self.blocks(torch.cat([x, tokens], dim=1)))
        out: Tensor = self.proj(x[:, -kt:])
        return out


@register(
    "method",
    "ijepa",
    description="context-block ViT + narrow predictor regress the EMA target encoder's "
    "layer-normalised features of 4 masked blocks (no pixel targets, no augmentation)",
    reference="Assran et al. 2023, Self-Supervised Learning from Images with a Joint-Embedding "
    "Predictive Architecture (I-JEPA)",
)
class IJEPA(Method):
    """I-JEPA around a ViT backbone.

    Attributes:
        backbone: the context encoder (evaluated and exported).
        target: EMA copy of the backbone (frozen, no gradient).
        predictor: :class:`Predictor`.

    Raises:
        ConfigError: for a backbone that is not a ViT or an invalid Config value.
    """

    Config: ClassVar[type] = IJEPAConfig
    default_views: ClassVar[str] = "ijepa"
    backbone_kind: ClassVar[str] = "vit"
    # the paper evaluates the average of the last layer's patch tokens (sec. 5); the class token
    # receives no loss here
    eval_pool: ClassVar[str | None] = "avg"
    # in1k_vith14_ep300.yaml: lr 1e-3 at batch 2048 (128 x 16 GPUs), warm-up 40 epochs, final lr
    # 1e-6, weight decay 0.04 -> 0.4 (cosine), AdamW; biases and 1-D parameters not decayed
    default_optim: ClassVar[dict[str, Any]] = {
        "name": "adamw",
        "lr": 1.25e-4,
        "lr_scaling": "linear",
        "weight_decay": 0.04,
        "weight_decay_end": 0.4,
        "betas": (0.9, 0.999),
        "warmup_epochs": 40,
        "min_lr_ratio": 1e-3,
        "clip_grad": 0.0,
        "decay_norm_bias": False,
    }

    def __init__(self, backbone: nn.Module, cfg: IJEPAConfig) -> None:
        super().__init__(backbone, cfg)
        dim = self.feature_dim()
        self.patch, self.in_chans = check_vit(backbone, "ijepa")
        self.require_positive(cfg, ("pred_dim", "pred_depth", "num_targets"))
        if not 0.0 <= cfg.momentum_base <= cfg.momentum_end <= 1.0:
            raise ConfigError("method_args.momentum_base <= momentum_end must lie in [0, 1], got "
                              f"{cfg.momentum_base}, {cfg.momentum_end}")
        vit: Any = backbone
        self.grid = int(vit.image_size) // self.patch
        heads = int(vit.blocks[0].attn.num_heads)
        if cfg.pred_dim % heads or cfg.pred_dim % 4:
            raise ConfigError(f"method_args.pred_dim={cfg.pred_dim} must be a multiple of 4 and "
                              f"of the encoder's {heads} heads")
        n = self.grid * self.grid
        self.min_keep = cfg.min_keep if n >= 196 else max(2, round(cfg.min_keep * n / 196))
        with torch.no_grad():
            vit.pos_embed.copy_(sincos_2d(dim, self.grid, cls_token=True).unsqueeze(0))
        vit.pos_embed.requires_grad_(False)
        self.target = copy.deepcopy(backbone)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.predictor = Predictor(dim, cfg.pred_dim, cfg.pred_depth, heads, self.grid)

    def sample_masks(self, batch_size: int, device: torch.device | None = None,
                     generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """I-JEPA's masks for ``batch_size`` images: ``context`` ``[B, Kc]`` and ``target_i``
        ``[B, Kt]`` for each target block (:func:`~selfsup.nn.block_masks.multiblock_masks`);
        what ``Batch.masks`` may carry."""
        cfg = self.cfg
        ms = multiblock_masks(batch_size, self.grid, self.grid, num_targets=cfg.num_targets,
                              target_scale=tuple(cfg.target_scale),
                              target_aspect=tuple(cfg.target_aspect),
                              context_scale=tuple(cfg.context_scale), min_keep=self.min_keep,
                              device=device, generator=generator)
        return {"context": ms.context, **{f"target_{i}": t for i, t in enumerate(ms.targets)}}

    def training_step(self, batch: Batch) -> StepOutput:
        """Smooth L1 between the predictor's outputs and the target encoder's normalised
        features of every target block of ``batch.views[0]`` ``[B, C, S, S]``.

        Raises:
            DataError: without a view, or for a view of another size or channel count.
        """
        x = first_view(batch.views, "ijepa", self.in_chans, self.grid * self.patch)
        ms = batch.masks if batch.masks is not None else self.sample_masks(x.shape[0], x.device)
        ctx = ms["context"].to(x.device)
        targets = [ms[f"target_{i}"].to(x.device) for i in range(self.cfg.num_targets)]
        with torch.no_grad():
            h = self.target.forward_tokens(x)[:, 1:]  # type: ignore[operator]  # [B, N, D]
            h = F.layer_norm(h, (h.shape[-1],))
        z = self.backbone.forward_tokens(x, keep=ctx)[:, 1:]  # type: ignore[operator]
        preds, tgts = [], []
        for t in targets:
            preds.append(self.predictor(z, ctx, t))  # [B, Kt, D]
            tgts.append(torch.gather(h, 1, t.unsqueeze(-1).expand(-1, -1, h.shape[-1])))
        loss = F.smooth_l1_loss(torch.cat(preds, 1).float(), torch.cat(tgts, 1).float())
        return StepOutput(loss=loss, logs={"context": float(ctx.shape[1])},
                          embeddings=z.mean(dim=1).detach())

    @torch.no_grad()
    def on_step_end(self, step: int, total: int) -> None:
        """EMA update of the target encoder (momentum linear from ``momentum_base`` to
        ``momentum_end`` over the run, as ``train.py``'s scheduler)."""
        m = linear(step, total, self.cfg.momentum_base, self.cfg.momentum_end)
        torch._foreach_lerp_(list(self.target.parameters()),
                             [p.detach() for p in self.backbone.parameters()], 1.0 - m)
