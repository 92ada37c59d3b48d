"""--init: which files are read, how keys are matched, how a changed channel count is adapted,
and what is reported."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from selfsup.engine.init_weights import init_weights, read_state_dict
from selfsup.nn.backbones import create_backbone
from selfsup.types import ConfigError


def _timm_rgb() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return timm.create_model("resnet10t", pretrained=False, num_classes=0).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "timm_ckpt", "ddp", "safetensors"])
def test_timm_weights_load_into_the_wrapper(tmp_path, wrap: str) -> None:
    sd = _timm_rgb()
    if wrap == "plain":
        path = tmp_path / "w.pth"
        torch.save(sd, path)
    elif wrap == "timm_ckpt":
        path = tmp_path / "w.pth.tar"
        torch.save({"epoch": 3, "arch": "resnet10t", "state_dict": sd}, path)
    elif wrap == "ddp":
        path = tmp_path / "w.pt"
        torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    else:
        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    b = create_backbone("timm:resnet10t", in_chans=3, image_size=32)
    rep = init_weights(b, path)
    assert rep.loaded == rep.total == len(sd) and not (rep.missing or rep.skipped or
                                                       rep.unexpected or rep.adapted)
    for k, v in sd.items():
        assert torch.equal(b.model.state_dict()[k], v), k


def test_changed_channel_count_adapts_the_input_conv(tmp_path) -> None:
    sd = _timm_rgb()
    torch.save(sd, tmp_path / "w.pt")
    b = create_backbone("timm:resnet10t", in_chans=13, image_size=32)
    rep = init_weights(b, tmp_path / "w.pt")
    first = "model.conv1.0.weight"
    assert rep.adapted == [f"{first} (3 -> 13 channels)"] and rep.loaded == rep.total
    w, w3 = b.state_dict()[first], sd["conv1.0.weight"]
    assert w.shape[1] == 13
    # channel c takes RGB kernel c mod 3, scaled by 3/13 (timm's adapt_input_conv)
    for c in (0, 4, 12):
        torch.testing.assert_close(w[:, c], w3[:, c % 3] * 3 / 13)
    assert "adapted to the data's channels: model.conv1.0.weight" in rep.summary()


def test_multiple_of_three_channels_keep_a_constant_image_response(tmp_path) -> None:
    sd = _timm_rgb()
    torch.save(sd, tmp_path / "w.pt")
    b = create_backbone("timm:resnet10t", in_chans=6, image_size=32)
    init_weights(b, tmp_path / "w.pt")
    w, w3 = b.state_dict()["model.conv1.0.weight"], sd["conv1.0.weight"]
    conv = torch.nn.functional.conv2d
    torch.testing.assert_close(conv(torch.ones(1, 6, 5, 5), w), conv(torch.ones(1, 3, 5, 5), w3))


def test_selfsup_export_and_checkpoint_layouts(tmp_path) -> None:
    src = create_backbone("small_cnn", in_chans=1, image_size=8, width=8)
    sd = src.state_dict()
    torch.save({"format": "selfsup-encoder-v1", "state_dict": sd, "rng": [1, 2]},
               tmp_path / "enc.pt")
    torch.save({"format": "selfsup-checkpoint-v1",
                "model": {**{f"backbone.{k}": v for k, v in sd.items()},
                          "projector.0.weight": torch.zeros(2, 2)}}, tmp_path / "last.pt")
    for name in ("enc.pt", "last.pt"):
        dst = create_backbone("small_cnn", in_chans=1, image_size=8, width=8)
        rep = init_weights(dst, tmp_path / name)
        assert rep.loaded == len(sd) and not rep.unexpected, name
        assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())


def test_other_shapes_are_skipped_and_missing_reported(tmp_path) -> None:
    src = create_backbone("small_cnn", in_chans=1, image_size=8, width=8)
    sd = dict(src.state_dict())
    last = [k for k in sd if k.endswith("weight")][-1]
    sd[last] = torch.zeros(3, 3)  # another shape
    first = next(iter(sd))
    del sd[first]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "w.pt")
    dst = create_backbone("small_cnn", in_chans=1, image_size=8, width=8)
    rep = init_weights(dst, tmp_path / "w.pt")
    assert rep.missing == [first] and rep.unexpected == ["extra.weight"]
    assert rep.skipped and rep.skipped[0].startswith(f"{last} [3, 3] in the file")
    assert rep.loaded == rep.total - 2


def test_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "none.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ConfigError, match="no state_dict found"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of its 1 tensors fits"):
        init_weights(create_backbone("small_cnn", in_chans=1, image_size=8), tmp_path / "other.pt")
