"""Pictures of what a masked-modeling run learned (``selfsup visualize``).

One PNG grid, one column per image:

- pixel-reconstruction methods (MAE, SimMIM): the original, the masked input (masked patches
  grey) and the reconstruction with the visible patches pasted back (MAE's
  ``run_one_image`` shows the same three rows). MAE's per-patch normalised predictions are
  mapped back to pixels with each true patch's mean and variance, as its demo notebook does.
- BEiT with a selfsup ``vq_tokenizer``: the masked input, the tokenizer's decoding of the
  image's true tokens, and of the tokens with BEiT's predictions at the masked patches.
- a method with a ``picture_rows(x, mean, std, generator) -> [(name, [B, 3, H, W])]`` method
  (pretext and generative tasks: colorization, inpainting, autoencoders) draws its own rows
  below the original, in unit range; no ViT is needed.
- MaskFeat: the masked input, the HOG of the image (its target) and the HOG with the model's
  predictions in the masked patches, drawn as HOG glyphs (one line per orientation bin along
  the edge direction, as bright as the bin).
- any ViT method (I-JEPA, DINO, ...): the original and the first three principal components of
  the encoder's patch tokens as an RGB map (the PCA figures of DINO and I-JEPA), each image's
  components scaled to [0, 1].

Images are shown in unit range after undoing the run's normalisation; one channel is shown as
grey, three as RGB, more (multispectral) as their first three channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

import selfsup.methods  # noqa: F401  (registers the methods)
from selfsup import registry
from selfsup.config import RunConfig, from_dict
from selfsup.data.datasets import open_dataset
from selfsup.engine import checkpoint
from selfsup.engine.runs import backbone_from, method_config, preprocessor
from selfsup.methods.base import Method
from selfsup.nn.hog import hog_glyphs, patches_to_cells
from selfsup.nn.patches import patchify, unpatchify
from selfsup.types import CheckpointError, ConfigError
from selfsup.utils.log import logger

__all__ = ["load_method", "visualize"]


def load_method(path: str) -> tuple[Method, RunConfig, Any, int]:
    """The whole trained method of a checkpoint (heads and decoders too), in eval mode, with its
    config, normalisation and image size.

    Raises:
        CheckpointError: for a missing/corrupt checkpoint or weights that do not fit.
    """
    from selfsup.data.stats import Normalization

    payload = checkpoint.load(path)
    cfg = from_dict(RunConfig, payload["config"])
    info = payload["data"]
    backbone = backbone_from(cfg, int(info["channels"]), int(info["image_size"]))
    method: Method = registry.get("method", cfg.method).obj(backbone, method_config(cfg))
    try:
        method.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint '{path}' does not fit method '{cfg.method}': "
                              f"{str(e)[:300]}") from None
    return (method.eval(), cfg, Normalization.from_dict(payload["normalization"]),
            int(info["image_size"]))


def _display(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Normalised ``[B, C, H, W]`` -> unit-range ``[B, 3, H, W]`` for the picture."""
    x = (x * std + mean).clamp(0, 1)
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    return x[:, :3] if x.shape[1] >= 3 else torch.cat([x, x[:, :1]], 1)[:, :3]


def _pca_map(tokens: Tensor, grid: int, size: int) -> Tensor:
    """Patch tokens ``[B, N, D]`` -> ``[B, 3, size, size]``: their first 3 principal components
    (over all images' tokens), each image's map scaled to [0, 1]."""
    b, n, d = tokens.shape
    flat = tokens.reshape(-1, d).float()
    flat = flat - flat.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(flat, full_matrices=False)
    comp = (flat @ v[:3].T).reshape(b, n, 3)
    lo, hi = comp.amin(1, keepdim=True), comp.amax(1, keepdim=True)
    comp = (comp - lo) / (hi - lo).clamp_min(1e-8)
    maps = comp.transpose(1, 2).reshape(b, 3, grid, grid)
    return F.interpolate(maps, size=(size, size), mode="nearest")


@torch.no_grad()
def visualize(checkpoint_path: str, out: str, data: str | None = None, num: int = 8,
              seed: int = 0) -> dict[str, Any]:
    """Write the picture grid of a checkpoint's first ``num`` images of ``data`` (default: the
    run's own data) to ``out`` (PNG). Returns ``{"out", "rows", "images"}``.

    Raises:
        CheckpointError: as :func:`load_method`.
        ConfigError: for a method with no picture (not a ViT method), or ``num`` < 1.
    """
    if num < 1:
        raise ConfigError(f"--num must be >= 1, got {num}")
    method, cfg, norm, size = load_method(checkpoint_path)
    ds = open_dataset(data or cfg.data.path, split=cfg.data.split, limit=num)
    raw, _ = ds.get_batch(torch.arange(min(num, len(ds))))
    x = preprocessor(norm, size)(raw)
    mean = torch.tensor(norm.mean).reshape(1, -1, 1, 1)
    std = torch.tensor(norm.std).reshape(1, -1, 1, 1)
    gen = torch.Generator().manual_seed(seed)
    rows: list[tuple[str, Tensor]] = [("original", _display(x, mean, std))]
    own = getattr(method, "picture_rows", None)
    if callable(own):  # a method that draws its own rows (colorization, inpainting, ...)
        rows += [(name, r.clamp(0, 1)) for name, r in own(x, mean, std, gen)]
    vit: Any = method.backbone
    patch = getattr(vit, "patch_size", None)
    if not (hasattr(vit, "forward_tokens") and isinstance(patch, int)):
        if callable(own):
            return _save(rows, size, out)
        raise ConfigError(f"selfsup visualize: method '{cfg.method}' has no picture (pictures: "
                          "reconstructions of mae/simmim/beit, HOG of maskfeat, the pretext "
                          "tasks' own rows, patch PCA for any ViT)")
    if not callable(own):
        rows += _method_rows(method, vit, x, mean, std, patch, gen)
    tokens = vit.forward_tokens(x)[:, getattr(vit, "num_prefix_tokens", 1):]
    rows.append(("patch-feature PCA", _pca_map(tokens, size // patch, size)))
    return _save(rows, size, out)


def _method_rows(m_: Any, vit: Any, x: Tensor, mean: Tensor, std: Tensor, patch: int,
                 gen: torch.Generator) -> list[tuple[str, Tensor]]:
    """The rows of the masked-modeling methods visualize knows (MaskFeat, MAE, SimMIM, BEiT);
    none for another ViT method."""
    rows: list[tuple[str, Tensor]] = []
    if hasattr(m_, "targets") and hasattr(m_, "predict") and hasattr(m_, "cell"):  # MaskFeat
        rows += _maskfeat_rows(m_, x, mean, std, patch, gen)
    elif hasattr(m_, "decode") and hasattr(m_, "sample_masks"):  # MAE
        ms = m_.sample_masks(x.shape[0], None, gen)
        pred = m_.decode(vit.forward_tokens(x, keep=ms["keep"]), ms["ids_restore"])
        target = patchify(x, patch)
        if getattr(m_.cfg, "norm_pix_loss", False):  # back to pixels, as MAE's demo
            mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mu
        m = ms["mask"].unsqueeze(-1).to(x.dtype)  # [B, N, 1]
        rows.append(("masked", _display(unpatchify(target * (1 - m), patch, x.shape[1]), mean,
                                        std) * _keep_grey(m, patch, x) + _grey(m, patch, x)))
        rows.append(("reconstruction + visible", _display(
            unpatchify(target * (1 - m) + pred * m, patch, x.shape[1]), mean, std)))
    elif hasattr(m_, "reconstruct") and hasattr(m_, "sample_masks"):  # SimMIM
        mask = m_.sample_masks(x.shape[0], None, gen)["mask"]
        rec, _ = m_.reconstruct(x, mask)
        m = mask.unsqueeze(-1).to(x.dtype)
        pix = unpatchify(m.expand(-1, -1, patch * patch * x.shape[1]), patch, x.shape[1])
        rows.append(("masked", _display(x * (1 - pix), mean, std) * _keep_grey(m, patch, x)
                     + _grey(m, patch, x)))
        rows.append(("reconstruction + visible", _display(x * (1 - pix) + rec * pix, mean, std)))
    elif hasattr(m_, "lm_head") and hasattr(m_, "tokenize"):  # BEiT
        rows += _beit_rows(m_, vit, x, mean, std, patch, gen)
    return rows


def _save(rows: list[tuple[str, Tensor]], size: int, out: str) -> dict[str, Any]:
    """Write the rows (each ``[B, 3, h, w]`` in unit range; a row may be drawn finer than the
    images, e.g. HOG glyphs) as one PNG grid; the summary dict. Small images are enlarged
    (nearest) to at least 96 px so the patches stay visible."""
    from PIL import Image

    side = max([size * max(1, 96 // size)] + [int(r.shape[-1]) for _, r in rows])
    grid = torch.cat([torch.cat(list(_enlarge(r, side)), dim=2) for _, r in rows], dim=1)
    img = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(img)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    pil.save(path)
    n = int(rows[0][1].shape[0])
    logger.info("wrote %s: rows %s, %d images", path, [r for r, _ in rows], n)
    return {"out": str(path), "rows": [r for r, _ in rows], "images": n}


def _beit_rows(m_: Any, vit: Any, x: Tensor, mean: Tensor, std: Tensor, patch: int,
               gen: torch.Generator) -> list[tuple[str, Tensor]]:
    """BEiT: the masked input, the tokenizer's decoding of the true tokens (what the tokenizer
    keeps of an image) and of the tokens with BEiT's predictions at the masked patches. Only for
    a selfsup ``vq_tokenizer`` (a user tokenizer module has no decoder we know of)."""
    mask = m_.sample_masks(x.shape[0], None, gen)["mask"]
    m = mask.unsqueeze(-1).to(x.dtype)
    pix = unpatchify(m.expand(-1, -1, patch * patch * x.shape[1]), patch, x.shape[1])
    rows = [("masked", _display(x * (1 - pix), mean, std) * _keep_grey(m, patch, x)
             + _grey(m, patch, x))]
    tok = m_.tokenizer
    if not (callable(getattr(tok, "decode", None)) and hasattr(tok, "quantizer")):
        return rows
    labels = m_.tokenize(x)  # [B, N]
    tokens = vit.forward_tokens(x, mask=mask, mask_token=m_.mask_token)[:, 1:]
    ids = torch.where(mask, m_.lm_head(tokens).argmax(-1), labels)
    g = m_.grid

    def decoded(t: Tensor) -> Tensor:
        codes = tok.quantizer.codes()[t].view(t.shape[0], g, g, -1)  # [B, g, g, code_dim]
        img = (tok.decode(codes) - m_.tok_shift) / m_.tok_scale  # back to the view's units
        if img.shape[-1] != x.shape[-1]:
            img = F.interpolate(img, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return _display(img, mean, std)

    rows.append(("tokenizer decoding of the true tokens", decoded(labels)))
    rows.append(("decoding with predicted tokens where masked", decoded(ids)))
    return rows


def _enlarge(r: Tensor, side: int) -> Tensor:
    """A row ``[B, 3, h, w]`` scaled to ``side`` pixels: nearest for a whole factor, else
    bilinear."""
    if r.shape[-1] == side:
        return r
    if side % r.shape[-1] == 0:
        return F.interpolate(r, scale_factor=side // r.shape[-1], mode="nearest")
    return F.interpolate(r, size=(side, side), mode="bilinear", align_corners=False).clamp(0, 1)


def _maskfeat_rows(m_: Any, x: Tensor, mean: Tensor, std: Tensor, patch: int,
                   gen: torch.Generator) -> list[tuple[str, Tensor]]:
    """MaskFeat: the masked input, the HOG of the image (the target) and the HOG with the
    model's predictions in the masked patches, as glyph pictures (:func:`hog_glyphs`, 12 px
    per cell)."""
    mask = m_.sample_masks(x.shape[0], None, gen)["mask"]
    m = mask.unsqueeze(-1).to(x.dtype)
    pix = unpatchify(m.expand(-1, -1, patch * patch * x.shape[1]), patch, x.shape[1])
    pred, _ = m_.predict(x, mask)
    target = m_.targets(x)
    mixed = torch.where(mask.unsqueeze(-1), pred, target)
    grid = x.shape[-1] // patch

    def glyphs(v: Tensor) -> Tensor:
        cells = patches_to_cells(v, grid, x.shape[1], patch, m_.cell, m_.cfg.nbins)
        return hog_glyphs(cells, 12).expand(-1, 3, -1, -1)

    return [("masked", _display(x * (1 - pix), mean, std) * _keep_grey(m, patch, x)
             + _grey(m, patch, x)),
            ("HOG of the image (target)", glyphs(target)),
            ("HOG: prediction where masked, target elsewhere", glyphs(mixed))]


def _pixels(m: Tensor, patch: int, x: Tensor) -> Tensor:
    """Patch mask ``[B, N, 1]`` -> ``[B, 3, H, W]`` pixel mask."""
    return unpatchify(m.expand(-1, -1, patch * patch * 3), patch, 3)


def _keep_grey(m: Tensor, patch: int, x: Tensor) -> Tensor:
    return 1 - _pixels(m, patch, x)


def _grey(m: Tensor, patch: int, x: Tensor) -> Tensor:
    return 0.5 * _pixels(m, patch, x)
