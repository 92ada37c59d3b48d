"""RotNet beyond the registry contract: the rotations against the reference's numpy formulas
(gidariss/FeatureLearningRotNet ``dataloader.py`` ``rotate_img``), the label of every rotated
copy, the loss and the logged accuracy against a loop, the padded random crop against
torchvision's definition, its per-image keyed offsets, the paper defaults and the errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import get_preset
from selfsup.methods.base import build_method
from selfsup.methods.rotation import Config, Rotation, pad_crop, rotate_batch, rotate_each
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE = 8


def _method(in_chans: int = 1, **kw: object) -> Rotation:
    torch.manual_seed(0)
    m = build_method("rotation", create_backbone("small_cnn", in_chans, SIZE, width=4), **kw)
    assert isinstance(m, Rotation)
    return m


def _reference_rotation(img_chw: torch.Tensor, deg: int) -> torch.Tensor:
    """The reference's ``rotate_img`` on an HWC array, written with numpy's flips/transposes."""
    img = img_chw.permute(1, 2, 0).numpy()  # HWC, as the reference's PIL -> numpy image
    import numpy as np

    if deg == 0:
        out = img
    elif deg == 90:
        out = np.flipud(np.transpose(img, (1, 0, 2)))
    elif deg == 180:
        out = np.fliplr(np.flipud(img))
    else:
        out = np.transpose(np.flipud(img), (1, 0, 2))
    return torch.from_numpy(out.copy()).permute(2, 0, 1)


def test_rotate_batch_matches_the_reference_rotations_and_labels() -> None:
    x = torch.randn(3, 2, 5, 5)
    out, labels = rotate_batch(x, [0, 90, 180, 270])
    assert out.shape == (12, 2, 5, 5)
    for r, deg in enumerate([0, 90, 180, 270]):
        for b in range(3):
            row = r * 3 + b
            torch.testing.assert_close(out[row], _reference_rotation(x[b], deg), rtol=0, atol=0)
            assert labels[row] == r
    # closed form: 90 degrees counter-clockwise moves the top-right pixel to the top-left
    one = torch.zeros(1, 1, 3, 3)
    one[0, 0, 0, 2] = 1
    assert rotate_batch(one, [90])[0][0, 0, 0, 0] == 1
    # a subset of rotations: labels index the list, not the angle
    out2, labels2 = rotate_batch(x, [90, 270])
    torch.testing.assert_close(out2[3:], out[9:])
    assert labels2.tolist() == [0, 0, 0, 1, 1, 1]


def test_rotate_each_rotates_each_image_by_its_own_label() -> None:
    x = torch.randn(4, 1, 4, 4)
    labels = torch.tensor([2, 0, 3, 1])
    out = rotate_each(x, [0, 90, 180, 270], labels)
    for b in range(4):
        ref = _reference_rotation(x[b], 90 * int(labels[b]))
        torch.testing.assert_close(out[b], ref, rtol=0, atol=0)


def test_loss_and_accuracy_match_a_loop_over_images_and_rotations() -> None:
    m = _method(crop_padding=0.0).eval()  # BN on running stats: rows independent
    x = torch.randn(3, 1, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(3)))
    losses, correct = [], []
    with torch.no_grad():
        for b in range(3):
            for r, deg in enumerate([0, 90, 180, 270]):
                img = _reference_rotation(x[b], deg).unsqueeze(0)
                logits = m.head(m.backbone(img))[0]
                losses.append(-F.log_softmax(logits, 0)[r])
                correct.append(float(logits.argmax() == r))
    torch.testing.assert_close(out.loss.detach(), torch.stack(losses).mean(), rtol=1e-5, atol=1e-6)
    assert float(out.logs["rot_acc"]) == pytest.approx(sum(correct) / len(correct))
    assert out.embeddings is not None and out.embeddings.shape == (3, m.feature_dim())
    torch.testing.assert_close(out.embeddings, m.backbone(x))  # unrotated rows


def test_pad_crop_is_torchvision_random_crop_with_padding() -> None:
    x = torch.rand(3, 2, 6, 5)
    fill = torch.tensor([-1.5, 2.0])
    offsets = torch.tensor([[0, 0], [4, 1], [2, 3]])
    out = pad_crop(x, 2, fill, offsets)
    for b in range(3):
        padded = torch.stack([F.pad(x[b, c], (2, 2, 2, 2), value=float(fill[c]))
                              for c in range(2)])
        i, j = offsets[b].tolist()
        torch.testing.assert_close(out[b], padded[:, i:i + 6, j:j + 5], rtol=0, atol=0)
    torch.testing.assert_close(pad_crop(x, 2, fill, torch.full((3, 2), 2)), x)  # centred: x


def test_crop_pads_with_black_and_offsets_are_keyed_per_image() -> None:
    mean, std = [0.25, 0.5, 0.75], [0.5, 0.25, 0.2]
    m = _method(3, input_mean=mean, input_std=std, crop_padding=0.25)  # 2 px at 8 px
    x = torch.randn(6, 3, SIZE, SIZE)
    index = torch.tensor([5, 9, 2, 7, 0, 11])
    torch.manual_seed(1)
    a = m.prepare(x, index)
    black = ((torch.zeros(3) - torch.tensor(mean)) / torch.tensor(std)).view(3, 1, 1)
    # every image is x shifted by an offset in [-2, 2]^2 with black where it left the frame
    seen = set()
    for b in range(6):
        found = [(i, j) for i in range(5) for j in range(5) if torch.equal(
            a[b], pad_crop(x[b:b + 1], 2, black.flatten(), torch.tensor([[i, j]]))[0])]
        assert len(found) == 1
        seen.add(found[0])
    assert len(seen) > 1  # not one offset for the whole batch
    # the same key (re-seeded) gives every image the same offset wherever it sits in the batch,
    # which is what makes a batch sharded over ranks crop as one process does
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    torch.manual_seed(1)
    torch.testing.assert_close(m.prepare(x[perm], index[perm]), a[perm], rtol=0, atol=0)
    torch.manual_seed(1)
    torch.testing.assert_close(m.prepare(x[:2], index[:2]), a[:2], rtol=0, atol=0)
    # over many steps, offsets cover the whole [0, 2 p] range on both axes
    offs: set[tuple[int, int]] = set()
    for s in range(60):
        torch.manual_seed(s)
        y = m.prepare(torch.full((1, 3, SIZE, SIZE), 10.0), torch.tensor([3]))
        inside = (y[0, 0] > 5).nonzero()
        lo, hi = inside.min(0).values.tolist(), inside.max(0).values.tolist()
        offs.add(tuple(2 - a if a > 0 else 2 + SIZE - 1 - z for a, z in zip(lo, hi)))
    assert {o[0] for o in offs} == set(range(5)) and {o[1] for o in offs} == set(range(5))


def test_single_random_rotation_variant() -> None:
    m = _method(all_rotations=False, crop_padding=0.0).eval()
    x = torch.randn(8, 1, SIZE, SIZE)
    out = m.training_step(Batch(views=[x], index=torch.arange(8)))
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.embeddings is not None and out.embeddings.shape[0] == 8  # B rows, not 4 B


def test_paper_defaults() -> None:
    cfg = Config()
    assert cfg.rotations == [0, 90, 180, 270] and cfg.all_rotations
    assert cfg.crop_padding == 0.125  # RandomCrop(32, padding=4)
    m = _method()
    assert isinstance(m.head, nn.Linear) and m.head.out_features == 4
    assert m.head.in_features == m.feature_dim()
    opt = Rotation.default_optim
    assert opt["name"] == "sgd" and opt["momentum"] == 0.9 and opt["weight_decay"] == 5e-4
    assert opt["lr"] * 128 / 256 == pytest.approx(0.1)  # 0.1 at the reference's batch of 128
    assert opt["min_lr_ratio"] == pytest.approx(0.0008 / 0.1)
    (view,) = get_preset("rotation", 32)
    assert (view.n, view.size, view.scale, view.hflip_p, view.jitter_p, view.blur_p) == (
        1, 32, (1.0, 1.0), 0.5, 0.0, 0.0)
    assert round(Config().crop_padding * 32) == 4 and round(Config().crop_padding * 16) == 2


@pytest.mark.parametrize(("kw", "field"), [
    ({"rotations": [0, 45, 90, 135]}, "rotations"), ({"rotations": [0, 0, 90]}, "rotations"),
    ({"rotations": [90]}, "rotations"), ({"rotations": [0, 360]}, "rotations"),
    ({"crop_padding": 1.0}, "crop_padding"), ({"crop_padding": -0.1}, "crop_padding"),
    ({"input_mean": [0.1, 0.2]}, "input_mean"), ({"input_std": [0.0]}, "input_std"),
])
def test_bad_config_names_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"method_args.{field}"):
        _method(**kw)


def test_bad_views() -> None:
    m = _method()
    with pytest.raises(DataError, match="square"):
        m.training_step(Batch(views=[torch.randn(2, 1, 8, 6)], index=torch.arange(2)))
    with pytest.raises(DataError, match="at least 2"):
        m.training_step(Batch(views=[torch.randn(2, 1, 1, 1)], index=torch.arange(2)))
    with pytest.raises(DataError, match="one view"):
        m.training_step(Batch(views=[], index=torch.arange(2)))


def test_picture_rows() -> None:
    m = _method(3).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    rows = m.picture_rows(x, torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1),
                          torch.Generator().manual_seed(0))
    assert len(rows) == 4 and all(r.shape == (2, 3, SIZE, SIZE) for _, r in rows)
    assert rows[1][0].startswith("rotated 90")
