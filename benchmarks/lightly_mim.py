"""lightly's masked-modeling methods (1.6.0) as benchmark rows beside selfsup's: MAE and I-JEPA
built from lightly's timm modules around the very ViT selfsup trains (``common.build_backbone``:
selfsup's ``vit_tiny``, a timm ``VisionTransformer``), set up as lightly's ``examples/pytorch``
scripts (``mae.py``, ``ijepa.py``), with selfsup's resolved Config, optimiser and view preset.

Imported by :mod:`lightly_methods` (its ``BUILDERS``); lightly is imported inside the builders
only. What could not be aligned is returned as the row's ``notes``.
"""

from __future__ import annotations

import copy
from typing import Any

import common
import numpy as np
import torch
from lightly_common import Recipe, normalize_arg
from method_common import MethodSetting
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from selfsup.utils.schedules import linear


class Parts(nn.Module):
    """A method's modules: ``backbone`` (the evaluated ViT) and named wrappers / copies."""

    def __init__(self, backbone: nn.Module, **parts: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        for name, module in parts.items():
            self.add_module(name, module)


def _vit(s: MethodSetting, x: np.ndarray) -> Any:
    return common.build_backbone(s, int(x.shape[-1]), int(x.shape[1]))


def build_mae(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's MAE example: MaskedVisionTransformerTIMM (sine-cosine position embedding,
    lightly's weight init), MAEDecoderTIMM, random_token_mask, MSE on the masked patches, with
    selfsup's decoder size, mask ratio and per-patch normalised target (``normalize_mean_var``,
    as lightly's ImageNet MAE benchmark)."""
    from lightly.models import utils
    from lightly.models.modules import MAEDecoderTIMM, MaskedVisionTransformerTIMM
    from lightly.transforms import MAETransform

    cfg, size = s.config(), int(x.shape[1])
    g = s.views(size)[0]
    vit = _vit(s, x)
    encoder = MaskedVisionTransformerTIMM(vit=vit)
    patch, chans = int(vit.patch_size), int(x.shape[-1])
    decoder = MAEDecoderTIMM(num_patches=vit.num_patches, patch_size=patch, in_chans=chans,
                             embed_dim=vit.num_features, decoder_embed_dim=cfg.decoder_dim,
                             decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_heads,
                             mlp_ratio=cfg.decoder_mlp_ratio)
    seq = encoder.sequence_length

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        images = views[0]
        b = images.shape[0]
        keep, masked = utils.random_token_mask(size=(b, seq), mask_ratio=cfg.mask_ratio,
                                               device=images.device)
        z = encoder.encode(images=images, idx_keep=keep)
        tokens = utils.repeat_token(decoder.mask_token, (b, seq))
        tokens = utils.set_at_index(tokens, keep, decoder.embed(z).type_as(tokens))
        pred = decoder.predict(utils.get_at_index(decoder.decode(tokens), masked))
        target = utils.get_at_index(utils.patchify(images, patch), masked - 1)
        if cfg.norm_pix_loss:
            target = utils.normalize_mean_var(target, dim=-1)
        return F.mse_loss(pred, target)

    notes = ["lightly's MAETransform resizes bicubically (selfsup's batched crop bilinearly)"]
    if not cfg.mae_init:
        notes.append("lightly always applies its own weight init")
    return Recipe(model=Parts(vit, encoder=encoder, decoder=decoder),
                  transform=MAETransform(input_size=size, min_scale=g.scale[0],
                                         normalize=normalize_arg(norm)),
                  trainable=[encoder, decoder], loss=loss, notes=notes)


def build_ijepa(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's I-JEPA pieces on timm: MaskedVisionTransformerTIMM as context and (EMA) target
    encoder, IJEPAPredictorTIMM, IJEPAMaskCollator's masks (sampled in the loss, on the
    main process, as selfsup samples them in the method), ``F.layer_norm`` of the target
    tokens, smooth L1, momentum linear from ``momentum_base`` to ``momentum_end``."""
    from lightly.data.ijepa_collate import IJEPAMaskCollator
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.models.modules.ijepa_timm import IJEPAPredictorTIMM
    from lightly.transforms.ijepa_transform import IJEPATransform

    cfg, size = s.config(), int(x.shape[1])
    g = s.views(size)[0]
    vit = _vit(s, x)
    encoder = MaskedVisionTransformerTIMM(vit=vit)
    target = copy.deepcopy(encoder)
    for p in target.parameters():
        p.requires_grad_(False)
    patch = int(vit.patch_size)
    grid = size // patch
    heads = int(vit.blocks[0].attn.num_heads)
    predictor = IJEPAPredictorTIMM(num_patches=vit.num_patches, depth=cfg.pred_depth,
                                   mlp_dim=vit.num_features, predictor_embed_dim=cfg.pred_dim,
                                   num_heads=heads)
    n = grid * grid
    min_keep = cfg.min_keep if n >= 196 else max(2, round(cfg.min_keep * n / 196))
    collator = IJEPAMaskCollator(input_size=size, patch_size=patch,
                                 enc_mask_scale=tuple(cfg.context_scale),
                                 pred_mask_scale=tuple(cfg.target_scale),
                                 aspect_ratio=tuple(cfg.target_aspect), nenc=1,
                                 npred=cfg.num_targets, min_keep=min_keep)
    prefix = int(vit.num_prefix_tokens)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        images = views[0]
        b = images.shape[0]
        _, enc, pred = collator([(img, 0) for img in images])
        with torch.no_grad():
            h = target.encode(images)[:, prefix:]
            h = F.layer_norm(h, (h.shape[-1],))
            h = utils.repeat_interleave_batch(utils.apply_masks(h, pred), b, repeat=len(enc))
        keep = torch.cat([torch.zeros(b, prefix, dtype=torch.long), enc[0] + prefix], dim=1)
        z = encoder.encode(images=images, idx_keep=keep)[:, prefix:]
        p = predictor(z, enc, pred)
        return F.smooth_l1_loss(p, h)

    def before_step(step: int, steps: int) -> None:
        # the EMA selfsup applies after optimiser step ``step - 1`` (its on_step_end)
        if step > 0:
            utils.update_momentum(encoder, target,
                                  linear(step - 1, steps, cfg.momentum_base, cfg.momentum_end))

    one = IJEPATransform(input_size=size, min_scale=g.scale[0], normalize=normalize_arg(norm))

    notes = ["lightly's IJEPATransform adds a horizontal flip and resizes bicubically "
             "(selfsup's ijepa preset: crop only)",
             "lightly's collator draws one block size per batch (selfsup per image)"]
    if g.hflip_p:
        notes.pop(0)
    return Recipe(model=Parts(vit, encoder=encoder, target=target, predictor=predictor),
                  transform=lambda img: [one(img)],  # one view, as MAETransform's list
                  trainable=[encoder, predictor], loss=loss, before_step=before_step,
                  notes=notes)


BUILDERS = {"mae": build_mae, "ijepa": build_ijepa}
