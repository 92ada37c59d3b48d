"""lightly's implementation of a selfsup method on one benchmark setting, as one row of the
per-method table (run in its own process so that its peak memory is its own).

One small builder per method lightly (1.6.0) implements turns the selfsup method's resolved
hyper-parameters (:class:`method_common.MethodSetting`: its Config, optimiser and view preset)
into lightly's modules, losses and transforms, set up as in lightly's ``examples/pytorch``
scripts; :func:`lightly_common.run_recipe` trains it with the loop every lightly row shares and
scores the backbone with selfsup's kNN code. What could not be aligned is returned as the row's
``notes`` and printed under the table.

Usage (in an environment where ``lightly`` imports, with ``PYTHONPATH=src`` if selfsup is not
installed there)::

    python benchmarks/lightly_methods.py --method byol --dataset mnist --epochs 3 --json out.json
    python benchmarks/lightly_methods.py --list
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
from collections.abc import Callable
from typing import Any

import common
import lightly_common
import lightly_mim
import method_common
import numpy as np
from lightly_common import Recipe, lightly_view_kwargs, multicrop_kwargs, normalize_arg
from method_common import MethodSetting
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812


class TwoBranch(nn.Module):
    """A method's modules: ``backbone`` (evaluated) and named heads / momentum copies."""

    def __init__(self, backbone: nn.Module, **heads: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        for name, module in heads.items():
            self.add_module(name, module)


def _backbone(s: MethodSetting, x: np.ndarray) -> tuple[nn.Module, int]:
    bb = common.build_backbone(s, int(x.shape[-1]), int(x.shape[1]))
    return bb, int(getattr(bb, "num_features"))  # noqa: B009  (a Backbone attribute)


def _frozen_copy(m: nn.Module) -> nn.Module:
    """lightly's momentum copy: ``deepcopy`` + ``deactivate_requires_grad``."""
    from lightly.models.utils import deactivate_requires_grad

    c = copy.deepcopy(m)
    deactivate_requires_grad(c)
    return c


def _byol_pair(s: MethodSetting, size: int, norm: Any) -> Any:
    """lightly's ``BYOLTransform`` with selfsup's two asymmetric ``byol`` preset groups."""
    from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform

    g1, g2 = s.views(size)
    return BYOLTransform(
        view_1_transform=BYOLView1Transform(input_size=size, **lightly_view_kwargs(g1),
                                            solarization_prob=g1.solarize_p,
                                            normalize=normalize_arg(norm)),
        view_2_transform=BYOLView2Transform(input_size=size, **lightly_view_kwargs(g2),
                                            solarization_prob=g2.solarize_p,
                                            normalize=normalize_arg(norm)))


def _ema(pairs: list[tuple[nn.Module, nn.Module]], momentum: Callable[[int, int], float]
         ) -> Callable[[int, int], None]:
    """A before-step hook moving each ``(online, copy)`` pair by lightly's ``update_momentum``."""
    from lightly.models.utils import update_momentum

    def hook(step: int, total: int) -> None:
        m = momentum(step, total)
        for online, ema in pairs:
            update_momentum(online, ema, m=m)

    return hook


def _cosine_momentum(base: float, end: float) -> Callable[[int, int], float]:
    from lightly.utils.scheduler import cosine_schedule

    return lambda step, total: cosine_schedule(step, total, base, end)


def build_simclr(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's SimCLR example (``lightly_simclr.py``) with the method's Config."""
    import lightly_simclr

    cfg = s.config()
    s2 = dataclasses.replace(s, temperature=cfg.temperature, proj_hidden_dim=cfg.proj_hidden_dim,
                             proj_out_dim=cfg.proj_out_dim)
    return lightly_simclr.recipe(s2, x)


def build_simclr_v2(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's SimCLR example with ``SimCLRProjectionHead(num_layers=3)``, the head lightly
    documents for SimCLR v2 (BN after every layer, as selfsup's ``simclr_v2``)."""
    import lightly_simclr

    cfg = s.config()
    s2 = dataclasses.replace(s, temperature=cfg.temperature, proj_hidden_dim=cfg.proj_hidden_dim,
                             proj_out_dim=cfg.proj_out_dim)
    return lightly_simclr.recipe(s2, x, num_layers=cfg.proj_layers)


def build_moco_v2(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's MoCo example: MoCoProjectionHead, NTXentLoss with a memory bank of keys."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import MoCoProjectionHead
    from lightly.transforms import MoCoV2Transform

    cfg, size = s.config(), int(x.shape[1])
    if cfg.proj_hidden_dim < 1:
        raise SystemExit("lightly's MoCoProjectionHead has no linear (MoCo v1) form")
    bb, nf = _backbone(s, x)
    head = MoCoProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_dim)
    bb_m, head_m = _frozen_copy(bb), _frozen_copy(head)
    model = TwoBranch(bb, projection_head=head, backbone_momentum=bb_m,
                      projection_head_momentum=head_m)
    criterion = NTXentLoss(temperature=cfg.temperature,
                           memory_bank_size=(cfg.queue_size, cfg.proj_dim))
    (g,) = s.views(size)

    def query(v: Tensor) -> Tensor:
        return head(bb(v).flatten(start_dim=1))

    def key(v: Tensor) -> Tensor:
        return head_m(bb_m(v).flatten(start_dim=1)).detach()

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        out = criterion(query(views[0]), key(views[1]))
        if cfg.symmetric:
            out = (out + criterion(query(views[1]), key(views[0]))) / 2
        return out

    notes = [f"no shuffle-BN (selfsup: key BN over {cfg.shuffle_bn_groups} shuffled "
             "sub-batches)"]
    if cfg.mask_same_image:
        notes.append("queued keys of the query's own image stay negatives (selfsup masks them)")
    return Recipe(model=model, transform=MoCoV2Transform(
        input_size=size, **lightly_view_kwargs(g), normalize=normalize_arg(norm)),
        trainable=[bb, head], loss=loss, notes=notes,
        before_step=_ema([(bb, bb_m), (head, head_m)], lambda _s, _t: cfg.momentum))


def build_byol(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's BYOL example: projection/prediction heads, cosine momentum, NegativeCosine."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

    cfg, size = s.config(), int(x.shape[1])
    bb, nf = _backbone(s, x)
    proj = BYOLProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_out_dim)
    pred: nn.Module = (BYOLPredictionHead(cfg.proj_out_dim, cfg.pred_hidden_dim,
                                          cfg.proj_out_dim) if cfg.use_predictor
                       else nn.Identity())
    bb_m, proj_m = _frozen_copy(bb), _frozen_copy(proj)
    model = TwoBranch(bb, projection_head=proj, prediction_head=pred, backbone_momentum=bb_m,
                      projection_head_momentum=proj_m)
    criterion = NegativeCosineSimilarity()

    def online(v: Tensor) -> Tensor:
        return pred(proj(bb(v).flatten(start_dim=1)))

    def target(v: Tensor) -> Tensor:
        return proj_m(bb_m(v).flatten(start_dim=1)).detach()

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        x0, x1 = views
        return 0.5 * (criterion(online(x0), target(x1)) + criterion(online(x1), target(x0)))

    return Recipe(model=model, transform=_byol_pair(s, size, norm), trainable=[bb, proj, pred],
                  loss=loss, before_step=_ema(
                      [(bb, bb_m), (proj, proj_m)],
                      _cosine_momentum(cfg.momentum_base, cfg.momentum_end)),
                  notes=["loss 0.5 x (-cos - cos) as lightly's example; selfsup's is the sum of "
                         "two normalised MSEs (2 - 2 cos each): 4x the gradient (LARS-adapted "
                         "layers are insensitive to the scale, biases/BN are not)"])


def build_simsiam(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's SimSiam example: 3-layer projection (2 layers as lightly's CIFAR-10 benchmark
    when the recipe says so), bottleneck predictor, stop-gradient."""
    from lightly.loss import NegativeCosineSimilarity
    from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
    from lightly.transforms import SimSiamTransform

    cfg, size = s.config(), int(x.shape[1])
    bb, nf = _backbone(s, x)
    proj: nn.Module = SimSiamProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_out_dim)
    if cfg.proj_layers == 2:  # lightly's CIFAR-10 benchmark: "use a 2-layer projection head"
        from lightly.models.modules.heads import ProjectionHead

        proj = ProjectionHead([(nf, cfg.proj_hidden_dim, nn.BatchNorm1d(cfg.proj_hidden_dim),
                                nn.ReLU()), (cfg.proj_hidden_dim, cfg.proj_out_dim,
                                             nn.BatchNorm1d(cfg.proj_out_dim), None)])
    pred = SimSiamPredictionHead(cfg.proj_out_dim, cfg.pred_hidden_dim, cfg.proj_out_dim)
    model = TwoBranch(bb, projection_head=proj, prediction_head=pred)
    criterion = NegativeCosineSimilarity()
    (g,) = s.views(size)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        z0, z1 = (proj(bb(v).flatten(start_dim=1)) for v in views)
        p0, p1 = pred(z0), pred(z1)
        if cfg.stop_gradient:
            z0, z1 = z0.detach(), z1.detach()
        return 0.5 * (criterion(p0, z1) + criterion(p1, z0))

    notes = [] if cfg.proj_layers in (2, 3) else [f"lightly's projector has 2 or 3 layers "
                                                   f"(selfsup {cfg.proj_layers})"]
    return Recipe(model=model, transform=SimSiamTransform(
        input_size=size, **lightly_view_kwargs(g), normalize=normalize_arg(norm)),
        trainable=[bb, proj, pred], loss=loss, notes=notes)


def build_dino(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's DINO example: DINOProjectionHead, DINOLoss, DINOTransform, EMA teacher."""
    from lightly.loss import DINOLoss
    from lightly.models.modules import DINOProjectionHead
    from lightly.models.utils import deactivate_requires_grad
    from lightly.transforms import DINOTransform

    cfg, size = s.config(), int(x.shape[1])
    groups = s.views(size)
    g1, g2, loc, local = multicrop_kwargs(groups)
    kw = lightly_view_kwargs(g1)
    transform = DINOTransform(
        global_crop_size=size, global_crop_scale=g1.scale, **local, hf_prob=g1.hflip_p,
        cj_prob=g1.jitter_p, cj_strength=1.0, cj_bright=g1.brightness, cj_contrast=g1.contrast,
        cj_sat=g1.saturation, cj_hue=g1.hue, random_gray_scale=g1.grayscale_p,
        gaussian_blur=(g1.blur_p, g2.blur_p, loc.blur_p if loc else 0.0), sigmas=kw["sigmas"],
        solarization_prob=g2.solarize_p, normalize=normalize_arg(norm))
    bb, nf = _backbone(s, x)

    def make_head() -> DINOProjectionHead:
        head = DINOProjectionHead(nf, cfg.hidden_dim, cfg.bottleneck_dim, cfg.out_dim,
                                  batch_norm=cfg.use_bn_in_head,
                                  freeze_last_layer=math.ceil(cfg.freeze_last_layer),
                                  norm_last_layer=cfg.norm_last_layer)
        if cfg.head_layers == 2:  # lightly's CIFAR-10 benchmark: "use only 2 layers for cifar10"
            from lightly.models.modules.heads import ProjectionHead

            bn = nn.BatchNorm1d(cfg.hidden_dim) if cfg.use_bn_in_head else None
            head.layers = ProjectionHead([(nf, cfg.hidden_dim, bn, nn.GELU()),
                                          (cfg.hidden_dim, cfg.bottleneck_dim, None, None)]).layers
        return head

    head, teacher_head = make_head(), make_head()  # weight_norm modules cannot be deep-copied
    teacher_head.load_state_dict(head.state_dict())  # the teacher starts as the student
    deactivate_requires_grad(teacher_head)
    teacher_bb = _frozen_copy(bb)
    model = TwoBranch(bb, student_head=head, teacher_backbone=teacher_bb,
                      teacher_head=teacher_head)
    criterion = DINOLoss(output_dim=cfg.out_dim, warmup_teacher_temp=cfg.warmup_teacher_temp,
                         teacher_temp=cfg.teacher_temp,
                         warmup_teacher_temp_epochs=int(cfg.warmup_teacher_temp_epochs),
                         student_temp=cfg.student_temp, center_momentum=cfg.center_momentum)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        teacher = [teacher_head(teacher_bb(v).flatten(start_dim=1))
                   for v in views[: cfg.global_crops]]
        student = [head(bb(v).flatten(start_dim=1)) for v in views]
        return criterion(teacher, student, epoch=epoch)

    notes = []
    if cfg.head_layers not in (2, 3) or cfg.koleo_weight or not (cfg.centering and cfg.sharpening):
        notes.append("head_layers/koleo/centering/sharpening options have no lightly form")
    if cfg.warmup_teacher_temp_epochs % 1:
        notes.append("lightly's teacher temperature warm-up is per epoch (selfsup per step)")
    return Recipe(model=model, transform=transform, trainable=[bb, head], loss=loss,
                  before_step=_ema([(bb, teacher_bb), (head, teacher_head)],
                                   _cosine_momentum(cfg.momentum_base, cfg.momentum_end)),
                  after_backward=lambda _step, epoch: head.cancel_last_layer_gradients(epoch),
                  notes=notes)


def build_swav(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's SwAV example: SwaVProjectionHead, SwaVPrototypes, SwaVLoss, SwaVTransform."""
    from lightly.loss import SwaVLoss
    from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
    from lightly.transforms import SwaVTransform

    cfg, size = s.config(), int(x.shape[1])
    groups = s.views(size)
    high = groups[0]  # the small recipe has no low-resolution group
    kw = lightly_view_kwargs(high)
    transform = SwaVTransform(
        crop_sizes=tuple(g.size for g in groups), crop_counts=tuple(g.n for g in groups),
        crop_min_scales=tuple(g.scale[0] for g in groups),
        crop_max_scales=tuple(g.scale[1] for g in groups), hf_prob=high.hflip_p,
        cj_prob=high.jitter_p, cj_strength=1.0, cj_bright=high.brightness,
        cj_contrast=high.contrast, cj_sat=high.saturation, cj_hue=high.hue,
        random_gray_scale=high.grayscale_p, gaussian_blur=high.blur_p, sigmas=kw["sigmas"],
        normalize=normalize_arg(norm))
    per_epoch, _, _ = s.schedule(len(x))
    bb, nf = _backbone(s, x)
    head = SwaVProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_out_dim)
    protos = SwaVPrototypes(cfg.proj_out_dim, cfg.num_prototypes,
                            n_steps_frozen_prototypes=round(cfg.freeze_prototypes_epochs
                                                            * per_epoch))
    model = TwoBranch(bb, projection_head=head, prototypes=protos)
    criterion = SwaVLoss(temperature=cfg.temperature, sinkhorn_iterations=cfg.sinkhorn_iters,
                         sinkhorn_epsilon=cfg.epsilon)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        out = [protos(F.normalize(head(bb(v).flatten(start_dim=1)), dim=1), step)
               for v in views]
        return criterion(out[: high.n], out[high.n:])

    notes = []
    if cfg.queue_length and cfg.epoch_queue_starts < s.epochs:
        notes.append("no feature queue on the lightly side (selfsup's starts at epoch "
                     f"{cfg.epoch_queue_starts})")
    if list(cfg.assign_crops) != list(range(high.n)):
        notes.append(f"lightly assigns codes to the high-resolution crops (selfsup "
                     f"{cfg.assign_crops})")
    return Recipe(model=model, transform=transform, trainable=[bb, head, protos], loss=loss,
                  before_step=lambda _step, _total: protos.normalize(), notes=notes)


def build_barlow_twins(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's Barlow Twins example: BarlowTwinsProjectionHead, BarlowTwinsLoss, BYOLTransform."""
    from lightly.loss import BarlowTwinsLoss
    from lightly.models.modules import BarlowTwinsProjectionHead

    cfg, size = s.config(), int(x.shape[1])
    bb, nf = _backbone(s, x)
    head: nn.Module = BarlowTwinsProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_out_dim)
    if cfg.proj_layers == 2:  # lightly's CIFAR-10 benchmark: "use a 2-layer projection head"
        from lightly.models.modules.heads import ProjectionHead

        head = ProjectionHead([(nf, cfg.proj_hidden_dim, nn.BatchNorm1d(cfg.proj_hidden_dim),
                                nn.ReLU()), (cfg.proj_hidden_dim, cfg.proj_out_dim, None, None)])
    model = TwoBranch(bb, projection_head=head)
    criterion = BarlowTwinsLoss(lambda_param=cfg.lambd)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        z0, z1 = (head(bb(v).flatten(start_dim=1)) for v in views)
        return criterion(z0, z1)

    notes = ["lightly's projector Linear layers have biases (selfsup's none)"]
    if cfg.proj_layers not in (2, 3):
        notes.append(f"lightly's projector has 2 or 3 layers (selfsup {cfg.proj_layers})")
    return Recipe(model=model, transform=_byol_pair(s, size, norm), trainable=[bb, head],
                  loss=loss, lr_scale={"no_decay": cfg.bias_lr_ratio}, notes=notes)


def build_vicreg(s: MethodSetting, x: np.ndarray, norm: Any) -> Recipe:
    """lightly's VICReg example: VICRegProjectionHead and VICRegLoss (with selfsup's views)."""
    from lightly.loss import VICRegLoss
    from lightly.models.modules.heads import VICRegProjectionHead

    cfg, size = s.config(), int(x.shape[1])
    bb, nf = _backbone(s, x)
    head = VICRegProjectionHead(nf, cfg.proj_hidden_dim, cfg.proj_out_dim, cfg.proj_layers)
    model = TwoBranch(bb, projection_head=head)
    criterion = VICRegLoss(lambda_param=cfg.sim_coeff, mu_param=cfg.std_coeff,
                           nu_param=cfg.cov_coeff, eps=cfg.eps)

    def loss(views: list[Tensor], step: int, epoch: int) -> Tensor:
        z0, z1 = (head(bb(v).flatten(start_dim=1)) for v in views)
        return criterion(z0, z1)

    notes = ["BYOLTransform (selfsup's asymmetric byol preset) instead of lightly's symmetric "
             "VICRegTransform", "lightly's last projector layer has a bias (selfsup's none)"]
    if cfg.gamma != 1.0:
        notes.append(f"lightly's variance target is 1 (selfsup gamma={cfg.gamma})")
    return Recipe(model=model, transform=_byol_pair(s, size, norm), trainable=[bb, head],
                  loss=loss, notes=notes)


BUILDERS: dict[str, Callable[[MethodSetting, np.ndarray, Any], Recipe]] = {
    "simclr": build_simclr, "simclr_v2": build_simclr_v2, "moco_v2": build_moco_v2, "byol": build_byol,
    "simsiam": build_simsiam, "dino": build_dino, "swav": build_swav,
    "barlow_twins": build_barlow_twins, "vicreg": build_vicreg,
    **lightly_mim.BUILDERS,
}


def run(s: MethodSetting, eval_limit: int | None = None) -> dict[str, Any]:
    """Train lightly's ``s.method`` and kNN-evaluate it; returns the row."""
    if s.method not in BUILDERS:
        raise SystemExit(f"no lightly builder for {s.method!r}; wired: {', '.join(BUILDERS)}")
    row = lightly_common.run_recipe(s, BUILDERS[s.method], eval_limit)
    row["method"] = s.method
    return row


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    if argv is not None and "--list" in argv or argv is None and "--list" in sys.argv:
        print("\n".join(BUILDERS))
        raise SystemExit(0)
    common.add_setting_args(p)
    method_common.add_method_args(p)
    p.add_argument("--list", action="store_true", help="print the wired methods and exit")
    p.add_argument("--num-workers", type=int, default=2, help="DataLoader worker processes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    row = run(method_common.setting_from(a), a.eval_limit)
    row["command"] = " ".join(["python", *sys.argv]) if argv is None else None
    common.write_json(a.json, row)


if __name__ == "__main__":
    main()
