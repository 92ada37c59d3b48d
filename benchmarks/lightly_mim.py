"""lightly's masked-modeling methods (1.6.0) as benchmark rows beside selfsup's: MAE, I-JEPA,
SimMIM and iBOT built from lightly's timm modules around the very ViT selfsup trains
(``common.build_backbone``: selfsup's ``vit_tiny``, a timm ``VisionTransformer``), set up as
lightly's ``examples/pytorch`` scripts (``mae.py``, ``ijepa.py``, ``simmim.py``, ``ibot.py`` in
lightly's repository; the installed package has no examples), with selfsup's resolved Config,
optimiser and view preset.

Imported by :mod:`lightly_methods` (its ``BUILDERS``); lightly is imported inside the builders
only. What could not be aligned is returned as the row's ``notes``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from typing import Any

import common
import method_common
import numpy as np
import torch
from lightly_common import Recipe, lightly_view_kwargs, multicrop_kwargs, normalize_arg
from method_common import MethodSetting
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from selfsup.utils.schedules import cosine, linear


class Parts(nn.Module):
    """A method's modules: ``backbone`` (the evaluated ViT) and named wrappers / copies."""

    def __init__(self, backbone: nn.Module, **parts: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        for name, module in parts.items():
            self.add_module(name, module)


def _vit(s: MethodSetting, x: np.ndarray, eval_pool: bool = False) -> Any:
    """The setting's ViT; with ``eval_pool`` the pooling the selfsup method evaluates (its
    ``eval_pool``, e.g. SimMIM's mean patch token) unless the setting sets ``global_pool``, as
    selfsup's runs fill it in (``selfsup.engine.runs``), so both rows score the same feature."""
    pool = getattr(method_common.method_class(s.method), "eval_pool", None)
    if eval_pool and pool and "global_pool" not in s.backbone_kwargs:
        s = dataclasses.replace(s, backbone_kwargs={**s.backbone_kwargs, "global_pool": pool})
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
    vit = _vit(s, x, eval_pool=True)  # scored as selfsup scores I-JEPA: mean patch token
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


def build_simmim(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """SimMIM from lightly's pieces (its ``simmim.py`` example's recipe): every patch through
    MaskedVisionTransformerTIMM with the masked ones replaced by its mask token (before the
    position embedding, as selfsup), a linear layer per patch token to ``p*p*C`` pixels, L1 on
    the masked patches of ``patchify``'d input, MAETransform views. With selfsup's mask ratio
    and mask-patch size: lightly's ``random_token_mask`` draws the masked mask patches on the
    coarse grid (``ceil(M x ratio)`` of ``M``, as selfsup), each masking its aligned ViT patches.
    The ViT keeps its own initialisation and learned position embedding (``'skip'``), the mask
    token is initialised as selfsup's, and the features scored are the mean patch token (selfsup's
    ``eval_pool``)."""
    from lightly.models import utils
    from lightly.models.modules import MaskedVisionTransformerTIMM
    from lightly.transforms import MAETransform

    cfg, size = s.config(), int(x.shape[1])
    g = s.views(size)[0]
    vit = _vit(s, x, eval_pool=True)
    patch, chans, dim = int(vit.patch_size), int(x.shape[-1]), int(vit.num_features)
    mask_patch = cfg.mask_patch_size or 2 * patch
    if mask_patch % patch or size % mask_patch:
        raise SystemExit(f"simmim: mask_patch_size={mask_patch} must be a multiple of the ViT's "
                         f"patch {patch} that divides the image size {size}")
    token = nn.Parameter(torch.zeros(1, 1, dim))
    nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)  # selfsup's (the reference's) init
    encoder = MaskedVisionTransformerTIMM(vit=vit, mask_token=token, weight_initialization="skip",
                                          pos_embed_initialization="skip")
    decoder = nn.Linear(dim, patch * patch * chans)  # selfsup's 1x1 conv + pixel shuffle
    scale, prefix = mask_patch // patch, int(vit.num_prefix_tokens)
    side = size // mask_patch  # mask patches per side

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        images = views[0]
        b = images.shape[0]
        _, idx_mask = utils.random_token_mask(size=(b, side * side), mask_ratio=cfg.mask_ratio,
                                              mask_class_token=True, device=images.device)
        coarse = torch.zeros(b, side * side, dtype=torch.bool, device=images.device)
        coarse.scatter_(1, idx_mask, True)
        masked = coarse.view(b, side, side).repeat_interleave(scale, 1)
        masked = masked.repeat_interleave(scale, 2).flatten(1)  # [B, N] over the ViT's patches
        seq = torch.cat([masked.new_zeros(b, prefix), masked], dim=1)  # never the class token
        z = encoder.encode(images=images, mask=seq)[:, prefix:]
        pred = decoder(z[masked])
        target = utils.patchify(images, patch)[masked]
        return F.l1_loss(pred, target)

    notes = ["lightly's MAETransform resizes bicubically (selfsup's batched crop bilinearly)"]
    if g.hflip_p != 0.5 or g.scale[1] != 1.0:
        notes.append(f"MAETransform: flip 0.5, crop scale up to 1.0 (selfsup flip {g.hflip_p}, "
                     f"scale {g.scale})")
    return Recipe(model=Parts(vit, encoder=encoder, decoder=decoder),
                  transform=MAETransform(input_size=size, min_scale=g.scale[0],
                                         normalize=normalize_arg(norm)),
                  trainable=[encoder, decoder], loss=loss, notes=notes)


def build_ibot(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """iBOT from lightly's pieces (its ``ibot.py`` example's recipe): student
    MaskedVisionTransformerTIMM (mask token on the masked patches of the global crops) and an EMA
    teacher copy, one DINOProjectionHead on the [CLS] and the patch tokens for each (selfsup's
    ``shared_head``), DINOLoss on [CLS] across all crops, IBOTPatchLoss on the masked patches,
    ``random_block_mask`` masks, IBOTTransform views, ``update_momentum``. Both teacher
    temperatures follow selfsup's per-step warm-up (passed to the losses each step), the EMA
    momentum selfsup's cosine after each step; the ViT keeps its own initialisation and learned
    position embedding (``'skip'``)."""
    from lightly.loss import DINOLoss, IBOTPatchLoss
    from lightly.models import utils
    from lightly.models.modules import DINOProjectionHead, MaskedVisionTransformerTIMM
    from lightly.transforms import IBOTTransform

    cfg, size = s.config(), int(x.shape[1])
    if not cfg.shared_head or cfg.head_layers != 3:
        raise SystemExit("lightly's DINOProjectionHead has 3 layers and one last layer (selfsup "
                         f"shared_head={cfg.shared_head}, head_layers={cfg.head_layers})")
    if cfg.global_crops != 2:
        raise SystemExit(f"lightly's IBOTTransform makes 2 global crops (selfsup "
                         f"global_crops={cfg.global_crops})")
    groups = s.views(size)
    g1, g2, loc, local = multicrop_kwargs(groups)
    sigmas = lightly_view_kwargs(g1)["sigmas"]
    # IBOTTransform's second global view keeps the default cj_strength 0.5 whatever is passed,
    # so every view gets 0.5 x (twice selfsup's values): selfsup's jitter on all of them
    transform = IBOTTransform(
        global_crop_size=size, global_crop_scale=g1.scale, **local, hf_prob=g1.hflip_p,
        cj_prob=g1.jitter_p, cj_strength=0.5, cj_bright=2 * g1.brightness,
        cj_contrast=2 * g1.contrast, cj_sat=2 * g1.saturation, cj_hue=2 * g1.hue,
        random_gray_scale=g1.grayscale_p,
        gaussian_blur=(g1.blur_p, g2.blur_p, loc.blur_p if loc else 0.0), sigmas=sigmas,
        solarization_prob=g2.solarize_p, normalize=normalize_arg(norm))

    vit = _vit(s, x)
    nf, patch, prefix = int(vit.num_features), int(vit.patch_size), int(vit.num_prefix_tokens)
    grid, n_g = size // patch, cfg.global_crops
    student = MaskedVisionTransformerTIMM(vit=vit, weight_initialization="skip",
                                          pos_embed_initialization="skip")
    teacher = copy.deepcopy(student)
    utils.deactivate_requires_grad(teacher)

    def make_head() -> DINOProjectionHead:
        return DINOProjectionHead(nf, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                  batch_norm=False,
                                  freeze_last_layer=math.ceil(cfg.freeze_last_layer),
                                  norm_last_layer=cfg.norm_last_layer)

    head, teacher_head = make_head(), make_head()  # weight_norm modules cannot be deep-copied
    teacher_head.load_state_dict(head.state_dict())  # the teacher starts as the student
    utils.deactivate_requires_grad(teacher_head)
    cls_loss = DINOLoss(output_dim=cfg.out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                        teacher_temp=cfg.teacher_temp,
                        warmup_teacher_temp_epochs=int(cfg.warmup_teacher_temp_epochs),
                        student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)
    patch_loss = IBOTPatchLoss(output_dim=cfg.out_dim, teacher_temp=cfg.teacher_patch_temp,
                               student_temp=cfg.student_temp,
                               center_momentum=cfg.center_momentum_patch)

    # selfsup's prediction ratios (one of pred_ratio +- pred_ratio_var per crop) as lightly's
    # block mask arguments: the share of crops masked and the range of their ratios
    ratios = [float(r) for r in cfg.pred_ratio]
    var = [float(v) for v in cfg.pred_ratio_var]
    var = var * len(ratios) if len(var) == 1 else var
    ranges = [(r - v, r + v) for r, v in zip(ratios, var) if r + v > 0]
    share = len(ranges) / len(ratios)
    lo, hi = min((a for a, _ in ranges), default=0.0), max((b for _, b in ranges), default=0.0)
    n = grid * grid
    min_block = max(1, min((grid // 3) ** 2, int(n * lo)))  # selfsup: (grid // 3)^2, capped
    per_epoch = s.schedule(len(x))[0]
    warm = round(cfg.warmup_teacher_temp_epochs * per_epoch)
    start = round(cfg.pred_start_epoch * per_epoch)
    random.seed(s.seed)  # random_block_mask draws with Python's random

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        b = views[0].shape[0]
        xg = torch.cat(views[:n_g])
        m = torch.zeros(n_g * b, grid, grid, dtype=torch.bool, device=xg.device)
        if share and step >= start:
            m = utils.random_block_mask(
                size=(n_g * b, grid, grid), batch_mask_ratio=share, min_image_mask_ratio=lo,
                max_image_mask_ratio=hi, min_num_masks_per_block=min_block,
                min_block_aspect_ratio=cfg.pred_aspect[0],
                max_block_aspect_ratio=cfg.pred_aspect[1], device=xg.device)
        flat = m.flatten(1)  # [T*B, N]
        seq = torch.cat([flat.new_zeros(n_g * b, prefix), flat], dim=1)
        tau = linear(step, warm, cfg.warmup_teacher_temp, cfg.teacher_temp)
        tau_patch = linear(step - start, warm, cfg.warmup_teacher_patch_temp,
                           cfg.teacher_patch_temp)
        with torch.no_grad():
            t = teacher.encode(xg)  # unmasked global crops
            t_cls = list(teacher_head(t[:, 0]).chunk(n_g))
            t_patch = teacher_head(t[:, prefix:][flat])
        z = student.encode(images=xg, mask=seq)
        s_cls = list(head(z[:, 0]).chunk(n_g))
        if len(views) > n_g:  # local crops, unmasked, in one pass (one size) as lightly's example
            local = student.encode(torch.cat(views[n_g:]))[:, 0]
            s_cls += list(head(local).chunk(len(views) - n_g))
        out = cfg.lambda1 * cls_loss(t_cls, s_cls, teacher_temp=tau)
        if flat.any():  # IBOTPatchLoss needs a masked patch (its center is their mean)
            out = out + cfg.lambda2 * patch_loss(t_patch, head(z[:, prefix:][flat]), m,
                                                 teacher_temp=tau_patch)
        return out

    def before_step(step: int, steps: int) -> None:
        # the EMA selfsup applies after optimiser step ``step - 1`` (its on_step_end)
        if step > 0:
            mom = cosine(step - 1, steps, cfg.momentum_base, cfg.momentum_end)
            utils.update_momentum(student, teacher, mom)
            utils.update_momentum(head, teacher_head, mom)

    o = s.optim()
    spread = "merged " if len(ranges) > 1 else ""
    notes = [f"lightly's random_block_mask masks exactly {share:.0%} of the global crops of a "
             f"batch, ratios spread evenly over {spread}[{lo:g}, {hi:g}] (selfsup draws a ratio "
             f"per crop: one of {ratios} +- {var})",
             "patch center: EMA of the teacher's masked patch outputs (lightly's IBOTPatchLoss; "
             "selfsup: of every patch, each image's mean)",
             "lightly's IBOTTransform resizes bicubically (selfsup's batched crop bilinearly)"]
    if cfg.pred_shape != "block":
        notes.append(f"lightly's block masks (selfsup pred_shape={cfg.pred_shape!r})")
    if o.weight_decay_end is not None and o.weight_decay_end != o.weight_decay:
        notes.append(f"weight decay constant {o.weight_decay:g} (selfsup: cosine to "
                     f"{o.weight_decay_end:g})")
    if cfg.freeze_last_layer % 1:
        notes.append("lightly freezes the last layer for whole epochs (selfsup per step)")
    if loc is not None and not all(math.isclose(a, b) for a, b in
                                   zip(lightly_view_kwargs(loc)["sigmas"], sigmas)):
        notes.append("IBOTTransform blurs every view with the global crops' sigma")
    return Recipe(model=Parts(vit, student=student, teacher=teacher, head=head,
                              teacher_head=teacher_head),
                  transform=transform, trainable=[student, head], loss=loss,
                  before_step=before_step,
                  after_backward=lambda _step, epoch: head.cancel_last_layer_gradients(epoch),
                  notes=notes)


BUILDERS = {"mae": build_mae, "ijepa": build_ijepa, "simmim": build_simmim, "ibot": build_ibot}
