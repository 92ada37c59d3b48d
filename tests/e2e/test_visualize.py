"""``selfsup visualize``: the picture grid of a masked-modeling run (issue 11). The masked row is
grey exactly on the masked patches and the original elsewhere, the reconstruction row shows the
original on the visible patches, and a method without a ViT gets a one-line error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig
from selfsup.engine.trainer import pretrain
from selfsup.engine.visualize import visualize

SIZE = 16  # the grid is enlarged x6 (nearest) to 96 px per image


def _run(tmp: Path, method: str, **args: object) -> str:
    cfg = RunConfig(
        method=method, method_args=dict(args),
        backbone=BackboneConfig(name="vit_tiny", patch_size=4, kwargs={"depth": 1}),
        data=DataConfig(path="digits", image_size=SIZE, limit=64),
        train=TrainConfig(steps=2, batch_size=16, out=str(tmp / method), progress=False,
                          tensorboard=False, seed=0),
    )
    return str(pretrain(cfg).checkpoint)


@pytest.mark.parametrize("method, args", [
    ("mae", {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}),
    ("simmim", {}),
])
def test_grid_rows_show_masked_input_and_reconstruction(tmp_path: Path, method: str,
                                                        args: dict[str, int]) -> None:
    ckpt = _run(tmp_path, method, **args)
    res = visualize(ckpt, str(tmp_path / "grid.png"), num=3)
    assert res["rows"] == ["original", "masked", "reconstruction + visible", "patch-feature PCA"]
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(np.float32) / 255
    s = 6 * SIZE
    assert img.shape == (4 * s, 3 * s, 3)
    orig, masked, rec = img[:s], img[s:2 * s], img[2 * s:3 * s]
    grey = np.all(np.abs(masked - 0.5) < 1 / 255, axis=-1)  # [H, W]
    patch = 6 * 4
    cells = grey.reshape(SIZE // 4, patch, 3 * SIZE // 4, patch).transpose(0, 2, 1, 3)
    whole = cells.all(axis=(2, 3))  # patches grey in every pixel: the masked ones
    # MAE masks int(16 x 0.25) = 4 visible of 16 patches; SimMIM ceil(4 x 0.6) = 3 of 4 mask
    # patches (2 x 2 tokens each): 12 of 16 either way, in each of the 3 images
    assert whole.sum() == 3 * 12, whole
    visible = ~np.repeat(np.repeat(whole, patch, 0), patch, 1)
    np.testing.assert_allclose(masked[visible], orig[visible], atol=1 / 255)
    np.testing.assert_allclose(rec[visible], orig[visible], atol=1 / 255)


def test_a_method_without_vit_is_a_one_line_cli_error(tmp_path: Path) -> None:
    cfg = RunConfig(method="simclr", method_args={"proj_hidden_dim": 16, "proj_out_dim": 8},
                    backbone=BackboneConfig(name="small_cnn", kwargs={"width": 4}),
                    data=DataConfig(path="digits", image_size=8, limit=32),
                    train=TrainConfig(steps=1, batch_size=16, out=str(tmp_path / "s"),
                                      progress=False, tensorboard=False))
    ckpt = pretrain(cfg).checkpoint
    p = subprocess.run([sys.executable, "-m", "selfsup", "visualize", "--checkpoint", str(ckpt),
                        "--out", str(tmp_path / "g.png")], capture_output=True, text=True)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("selfsup: error: selfsup visualize: "
                                                        "method 'simclr' has no picture")


def test_beit_grid_decodes_true_and_predicted_tokens(tmp_path: Path) -> None:
    """BEiT with a vq_tokenizer: the masked row, then the tokenizer's decoding of the true tokens
    and of the tokens with BEiT's predictions where masked. Where every prediction is replaced
    by the true token, the two decodings are the same picture."""
    import torch

    from selfsup.engine.visualize import load_method

    tok = _run(tmp_path, "vq_tokenizer", codebook_size=16, code_dim=8, hidden_dim=16)
    ckpt = _run(tmp_path, "beit", tokenizer=tok)
    res = visualize(ckpt, str(tmp_path / "grid.png"), num=2)
    assert res["rows"] == ["original", "masked", "tokenizer decoding of the true tokens",
                           "decoding with predicted tokens where masked", "patch-feature PCA"]
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))
    assert img.shape == (5 * 6 * SIZE, 2 * 6 * SIZE, 3)
    # the true-token row is the tokenizer's own reconstruction, in the view's units
    method, _, norm, size = load_method(ckpt)
    from selfsup.data.datasets import open_dataset
    from selfsup.engine.runs import preprocessor

    raw, _ = open_dataset("digits", limit=2).get_batch(torch.arange(2))
    x = preprocessor(norm, size)(raw)
    with torch.no_grad():
        t = method.tokenizer
        rec = t.decode(t.quantizer(t.encode(x * method.tok_scale + method.tok_shift)).quantized)
    mean, std = torch.tensor(norm.mean).view(1, -1, 1, 1), torch.tensor(norm.std).view(1, -1, 1, 1)
    want = ((rec - method.tok_shift) / method.tok_scale * std + mean).clamp(0, 1)  # [2, 1, S, S]
    s = 6 * SIZE
    got = img[2 * s:3 * s, :s, 0].astype(np.float32)[::6, ::6] / 255  # first image, grey
    np.testing.assert_allclose(got, want[0, 0].numpy(), atol=1.5 / 255)


def test_maskfeat_grid_draws_target_hog_and_predictions_where_masked(tmp_path: Path) -> None:
    """MaskFeat: masked input, the HOG glyphs of the image, and the glyphs with the model's
    predictions in the masked patches: the last two rows agree exactly outside the masked
    patches (the target is pasted there) and differ inside them (a wrong paste or a row drawn
    from the wrong vectors fails)."""
    ckpt = _run(tmp_path, "maskfeat")
    res = visualize(ckpt, str(tmp_path / "grid.png"), num=2)
    assert res["rows"] == ["original", "masked", "HOG of the image (target)",
                           "HOG: prediction where masked, target elsewhere", "patch-feature PCA"]
    img = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB")).astype(np.float32) / 255
    s = 6 * SIZE  # 8 x 8 cells of 2 px, 12 px per glyph: 96 px, the images' enlarged side
    assert img.shape == (5 * s, 2 * s, 3)
    masked, target, mixed = img[s:2 * s], img[2 * s:3 * s], img[3 * s:4 * s]
    grey = np.all(np.abs(masked - 0.5) < 1 / 255, axis=-1)
    patch = 6 * 4
    whole = grey.reshape(SIZE // 4, patch, 2 * SIZE // 4, patch).transpose(0, 2, 1, 3).all((2, 3))
    assert 0 < whole.sum() < whole.size
    inside = np.repeat(np.repeat(whole, patch, 0), patch, 1)
    # each image's glyphs are scaled by its own maximum: compare the shapes, not the scale
    for b in range(2):
        cols = slice(b * s, (b + 1) * s)
        t, m, ins = target[:, cols, 0], mixed[:, cols, 0], inside[:, cols]
        k = t[~ins].max() / max(m[~ins].max(), 1e-6)
        np.testing.assert_allclose(m[~ins] * k, t[~ins], atol=3 / 255)
        assert np.abs(m[ins] * k - t[ins]).max() > 0.1
