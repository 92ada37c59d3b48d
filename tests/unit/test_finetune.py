"""Fine-tuning and self-distillation (selfsup.eval.finetune): the distillation loss against a loop
over the paper's formula (SimCLR v2 eq. 2), the closed forms, the training loop on separable data,
accuracy bookkeeping and bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from selfsup.data.stats import Normalization
from selfsup.eval.finetune import (
    Classifier,
    FinetuneConfig,
    classify,
    distill_loss,
    finetune,
    self_distill,
)
from selfsup.types import ConfigError, DataError


def _reference_distill(s: torch.Tensor, t: torch.Tensor, tau: float) -> float:
    total = 0.0
    for i in range(s.shape[0]):
        zt = sum(math.exp(float(v) / tau) for v in t[i])
        zs = sum(math.exp(float(v) / tau) for v in s[i])
        for y in range(s.shape[1]):
            p_t = math.exp(float(t[i, y]) / tau) / zt
            total -= p_t * math.log(math.exp(float(s[i, y]) / tau) / zs)
    return total / s.shape[0]


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("k", [2, 7])
def test_distill_loss_matches_loop_reference(tau: float, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    s, t = torch.randn(5, k, generator=g, dtype=torch.float64), torch.randn(5, k, generator=g)
    got = distill_loss(s, t.double(), tau)
    assert got.item() == pytest.approx(_reference_distill(s, t, tau), rel=1e-6)


def test_distill_loss_closed_forms() -> None:
    s = torch.randn(6, 4)
    # a one-hot teacher (very confident) turns the loss into cross-entropy with its argmax
    t = torch.full((6, 4), -1e4)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    t[torch.arange(6), y] = 1e4
    ce = nn.functional.cross_entropy(s, y)
    assert distill_loss(s, t).item() == pytest.approx(ce.item(), rel=1e-5)
    # student = teacher: the loss is the teacher's entropy; uniform logits -> log K
    u = torch.zeros(3, 4)
    assert distill_loss(u, u).item() == pytest.approx(math.log(4), rel=1e-6)


def test_distill_loss_gradient_reaches_only_the_student() -> None:
    s = torch.randn(4, 3, requires_grad=True)
    t = torch.randn(4, 3, requires_grad=True)
    distill_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


def test_distill_loss_rejects_shape_mismatch() -> None:
    with pytest.raises(DataError, match=r"\[B, K\]"):
        distill_loss(torch.zeros(4, 3), torch.zeros(4, 5))


@pytest.mark.parametrize("kw", [{"epochs": 0}, {"lr": 0.0}, {"alpha": 1.5}, {"batch_size": 0}])
def test_config_rejects_bad_values(kw: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="finetune"):
        FinetuneConfig(**kw)  # type: ignore[arg-type]


class _Source:
    """Two classes of 8x8 one-channel uint8 images: bright left half vs bright right half."""

    def __init__(self, n: int = 64, unlabeled: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.labels = torch.arange(n) % 2
        x = torch.randint(0, 60, (n, 1, 8, 8), generator=g)
        x[self.labels == 0, :, :, :4] += 180
        x[self.labels == 1, :, :, 4:] += 180
        self.x = x.to(torch.uint8)
        self.y = torch.full_like(self.labels, -1) if unlabeled else self.labels

    def __len__(self) -> int:
        return len(self.x)

    def get_batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[index], self.y[index]


class _Encoder(nn.Module):
    num_features = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


NORM = Normalization(low=[0.0], high=[255.0], mean=[0.4], std=[0.3])
CFG = FinetuneConfig(epochs=15, batch_size=16, lr=0.5, crop_scale=(0.9, 1.0), hflip_p=0.0)


def _prep(x: torch.Tensor) -> torch.Tensor:
    return NORM.normalize(NORM.to_unit(x))


def test_finetune_learns_separable_classes_and_trains_the_encoder() -> None:
    torch.manual_seed(0)
    src, enc = _Source(), _Encoder()
    before = enc.net[1].weight.detach().clone()
    model, history = finetune(enc, src, torch.arange(len(src)), 2, NORM, 8, CFG)
    assert history[-1] < history[0]
    assert not torch.equal(before, enc.net[1].weight)  # fine-tuning, not a frozen probe
    assert classify(model, src, _prep)["top1"] == 100.0
    assert not model.training


def test_finetune_rejects_unlabeled_samples() -> None:
    with pytest.raises(DataError, match="unlabeled"):
        finetune(_Encoder(), _Source(unlabeled=True), torch.arange(8), 2, NORM, 8, CFG)


def test_classifier_needs_num_features_and_two_classes() -> None:
    with pytest.raises(ConfigError, match="num_features"):
        Classifier(nn.Identity(), 3)
    with pytest.raises(DataError, match="2 classes"):
        Classifier(_Encoder(), 1)


def test_self_distillation_transfers_the_teacher_without_labels() -> None:
    torch.manual_seed(0)
    src = _Source()
    teacher, _ = finetune(_Encoder(), src, torch.arange(len(src)), 2, NORM, 8, CFG)
    t_before = [p.detach().clone() for p in teacher.parameters()]
    student = Classifier(_Encoder(), 2)
    unlabeled = _Source(unlabeled=True)  # labels never reach the student
    history = self_distill(teacher, student, unlabeled, torch.arange(len(src)), NORM, 8, CFG)
    assert history[-1] < history[0]
    assert classify(student, src, _prep)["top1"] == 100.0
    assert all(torch.equal(a, b) for a, b in zip(t_before, teacher.parameters()))


def test_classify_counts_top1_and_top5() -> None:
    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # class 1 always ranked first
            return torch.tensor([[0.0, 9.0, 1.0]]).expand(x.shape[0], 3)

    src = _Source(n=10)  # labels 0,1,0,1,...
    acc = classify(Fixed(), src, _prep, batch_size=3)
    assert acc == {"top1": 50.0, "top5": 100.0}


def test_mae_recipe_layer_decay_groups_and_drop_path() -> None:
    """MAE's ``param_groups_lrd`` (main_finetune.py, util/lr_decay.py): with L blocks, patch
    embedding / class token / position embedding at decay^(L+1), block i at decay^(L-i), the
    final norm and the new linear layer at 1; no weight decay on 1-D tensors and the tokens."""
    from selfsup.eval.finetune import Classifier, mae_recipe, param_groups, set_drop_path
    from selfsup.nn.backbones import create_backbone

    vit = create_backbone("vit_tiny", in_chans=1, image_size=8, patch_size=4, depth=3)
    model = Classifier(vit, 10)
    groups = param_groups(model, 0.05, 0.75)
    scale = {id(p): (g["lr_scale"], g["weight_decay"]) for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale[id(named["encoder.patch_embed.proj.weight"])] == (0.75 ** 4, 0.05)
    assert scale[id(named["encoder.cls_token"])] == (0.75 ** 4, 0.0)
    assert scale[id(named["encoder.pos_embed"])] == (0.75 ** 4, 0.0)
    for i in range(3):
        assert scale[id(named[f"encoder.blocks.{i}.attn.qkv.weight"])] == (0.75 ** (3 - i), 0.05)
        assert scale[id(named[f"encoder.blocks.{i}.norm1.weight"])] == (0.75 ** (3 - i), 0.0)
    assert scale[id(named["encoder.norm.weight"])] == (1.0, 0.0)
    assert scale[id(named["fc.weight"])] == (1.0, 0.05) and scale[id(named["fc.bias"])][1] == 0.0
    assert len(scale) == sum(1 for p in model.parameters() if p.requires_grad)
    set_drop_path(vit, 0.1)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in vit.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])
    cfg = mae_recipe(epochs=2)
    assert (cfg.optimizer, cfg.lr, cfg.layer_decay, cfg.label_smoothing, cfg.epochs) == (
        "adamw", 1e-3, 0.75, 0.1, 2)


def test_convvit_layer_decay_and_drop_path_follow_convmae() -> None:
    """ConvMAE's util/lr_decay.py: L = len(blocks3); patch embeddings, position embedding and the
    convolution stages blocks1/blocks2 at decay^(L+1), blocks3.i at decay^(L-i), the rest at 1;
    drop path linear over all blocks of the three stages (its ``dpr``)."""
    from selfsup.eval.finetune import Classifier, param_groups, set_drop_path
    from selfsup.nn.backbones import create_backbone

    enc = create_backbone("convvit_tiny", in_chans=1, image_size=16, depth=2, conv_depth=1)
    model = Classifier(enc, 10)
    scale = {id(p): g["lr_scale"] for g in param_groups(model, 0.05, 0.5) for p in g["params"]}
    named = dict(model.named_parameters())
    for name in ("patch_embed1.proj.weight", "patch_embed4.weight", "pos_embed",
                 "blocks1.0.conv1.weight", "blocks2.0.attn.weight"):
        assert scale[id(named[f"encoder.{name}"])] == 0.5 ** 3, name
    assert scale[id(named["encoder.blocks3.0.attn.qkv.weight"])] == 0.5 ** 2
    assert scale[id(named["encoder.blocks3.1.attn.qkv.weight"])] == 0.5
    assert scale[id(named["encoder.norm.weight"])] == 1.0 and scale[id(named["fc.weight"])] == 1.0
    set_drop_path(enc, 0.3)
    blocks = [*enc.blocks1, *enc.blocks2, *enc.blocks3]
    rates = [getattr(getattr(b, "drop_path", getattr(b, "drop_path1", None)), "drop_prob", 0.0)
             for b in blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2, 0.3])


def test_finetune_recipe_auto_is_mae_for_masked_modeling() -> None:
    from selfsup.engine.finetune import finetune_config

    assert finetune_config("auto", "mae")[0] == "mae"
    assert finetune_config("auto", "ijepa", lr=0.5)[1].lr == 0.5
    name, cfg = finetune_config("auto", "simclr", lr=None)
    assert name == "simclr" and cfg.optimizer == "sgd" and cfg.lr == 0.05
    with pytest.raises(ConfigError, match="--recipe"):
        finetune_config("beit", "mae")
