"""Projection/prediction heads: one :func:`mlp` builder for every method's MLP.

SimCLR's projector (Chen et al. 2020, sec. 2.1: ``z = W2 ReLU(BN(W1 h))``), BYOL's projector and
predictor (Grill et al. 2020, sec. 3.3: Linear-BN-ReLU-Linear), Barlow Twins' and VICReg's 3-layer
expanders and MoCo v3's heads (BN also on the output) are all ``mlp(dims, ...)`` with different
``dims`` and flags, so no head subclass differs only in widths. :class:`DINOHead` (Caron et al.
2021) adds what an MLP cannot express: L2 normalisation of the bottleneck and a weight-normalised
last layer (:class:`WeightNormLinear`); :class:`IBOTHead` (Zhou et al. 2022) applies it to every
token of a ViT, with the patch tokens' last layer shared or separate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.types import ConfigError

__all__ = ["DINOHead", "IBOTHead", "WeightNormLinear", "mlp"]


def mlp(
    dims: Sequence[int],
    *,
    batch_norm: bool = True,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    activation: type[nn.Module] = nn.ReLU,
    bias: bool | None = None,
) -> nn.Sequential:
    """A multi-layer perceptron ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers are ``Linear [-BatchNorm1d] - activation``; the last layer is ``Linear
    [-BatchNorm1d]`` with no activation. Input ``[B, dims[0]]``, output ``[B, dims[-1]]``.

    Args:
        dims: layer widths, input first; ``len(dims) - 1`` linear layers.
        batch_norm: BatchNorm1d after every hidden linear layer.
        last_bn: BatchNorm1d after the last linear layer too (SimCLR's code, MoCo v3).
        last_bn_affine: learnable scale and shift of the last BN (False: plain standardisation,
            as Barlow Twins' / SimSiam's output BN uses ``affine=False``).
        activation: activation class for hidden layers, instantiated with no arguments.
        bias: bias of the linear layers; None = bias only where no BN follows (BN's shift makes
            it redundant), True/False forces it on every linear layer.

    Returns:
        ``nn.Sequential`` of the layers, indexable like any Sequential.

    Raises:
        ConfigError: if fewer than two widths are given or any width is not a positive integer.
    """
    dims = list(dims)
    if len(dims) < 2:
        raise ConfigError(f"mlp needs at least an input and an output width, got dims={dims}")
    if any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ConfigError(f"mlp widths must be positive integers, got dims={dims}")
    layers: list[nn.Module] = []
    n = len(dims) - 1
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == n - 1
        bn = last_bn if last else batch_norm
        layers.append(nn.Linear(d_in, d_out, bias=(not bn) if bias is None else bias))
        if bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine if last else True))
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation (Salimans & Kingma 2016):
    ``W = g * V / ||V||`` row by row, ``y = x W^T``, as ``nn.utils.weight_norm(nn.Linear(...,
    bias=False))`` in DINO's code.

    Args:
        in_dim: input width.
        out_dim: output width (number of prototypes in DINO).
        fix_norm: keep ``g`` at 1 and out of training (DINO's ``norm_last_layer=True``), so every
            output is a cosine between the input and a prototype direction times ``|x|``.

    Attributes:
        weight_v: direction ``V`` ``[out_dim, in_dim]`` (``nn.Linear``'s default initialisation).
        weight_g: row norms ``g`` ``[out_dim, 1]``, initialised to 1: the shape of
            ``torch.nn.utils.weight_norm``'s ``weight_g``, so when it is trained
            (``fix_norm=False``) the decay groups decay it as the reference's
            ``utils.get_params_groups`` does (it only spares biases and 1-d parameters).
    """

    def __init__(self, in_dim: int, out_dim: int, *, fix_norm: bool = True) -> None:
        super().__init__()
        init = nn.Linear(in_dim, out_dim, bias=False)  # kaiming-uniform rows, as the reference
        self.weight_v = nn.Parameter(init.weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not fix_norm)

    def weight(self, frozen: bool = False) -> Tensor:
        """``g * V / ||V||`` ``[out_dim, in_dim]``. With ``frozen`` the value is the same but the
        gradient reaching ``V`` and ``g`` is zero (see :meth:`DINOHead.forward`)."""
        v: Tensor = self.weight_v
        g: Tensor = self.weight_g
        if frozen:
            # same value, zero gradient: DDP still sees every parameter used (it has no
            # find_unused_parameters); the method then drops the gradient (p.grad = None) before
            # the optimiser step, as the reference (DINO.before_optimizer_step)
            v, g = v.detach() + 0.0 * v, g.detach() + 0.0 * g
        return g * v / v.norm(dim=1, keepdim=True)

    def forward(self, x: Tensor, frozen: bool = False) -> Tensor:
        """``[N, in_dim] -> [N, out_dim]``."""
        return F.linear(x, self.weight(frozen))


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, sec. 3.1 and appendix; ``DINOHead`` in the
    authors' code): an MLP with GELU, an L2-normalised bottleneck, then a weight-normalised
    linear layer to ``out_dim`` logits ("prototypes").

    ``x [N, in_dim] -> mlp -> [N, bottleneck_dim] -> x / ||x|| -> WeightNormLinear -> [N, out_dim]``

    Args:
        in_dim: backbone feature width.
        out_dim: output dimension K (65536 in the paper).
        hidden_dim: hidden width of the MLP (2048).
        bottleneck_dim: bottleneck width (256).
        num_layers: linear layers of the MLP (3); 1 gives a single linear layer.
        use_bn: BatchNorm1d after hidden layers (False for ViTs in the paper's code).
        norm_last_layer: fix the last layer's row norms ``g`` to 1 (True in the paper; the
            authors advise False for stability with ViT-Small when needed).

    Raises:
        ConfigError: if a width or ``num_layers`` is not a positive integer.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ConfigError(f"DINOHead num_layers must be a positive integer, got {num_layers}")
        dims = [in_dim, *[hidden_dim] * (num_layers - 1), bottleneck_dim]
        self.mlp = mlp(dims, batch_norm=use_bn, activation=nn.GELU, bias=True)
        for m in self.mlp.modules():  # truncated normal (std 0.02) and zero bias, as the reference
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                assert m.bias is not None
                nn.init.zeros_(m.bias)
        if out_dim < 1 or isinstance(out_dim, bool):
            raise ConfigError(f"DINOHead out_dim must be a positive integer, got {out_dim}")
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, fix_norm=norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: Tensor, freeze_last_layer: bool = False) -> Tensor:
        """``[N, in_dim] -> [N, out_dim]`` logits.

        Args:
            x: backbone features.
            freeze_last_layer: give the last layer a zero gradient while keeping it in the
                graph, so DDP (no ``find_unused_parameters``) still reduces it. DINO freezes it
                during the first epoch (appendix; facebookresearch/dino ``utils.py``
                ``cancel_gradients_last_layer``, which sets ``p.grad = None`` after backward):
                :meth:`selfsup.methods.dino.DINO.before_optimizer_step` then drops the zero
                gradient, so AdamW skips the layer (no step count, moments or weight decay).
        """
        z = F.normalize(self.mlp(x), dim=-1, p=2)  # [N, bottleneck_dim] on the unit sphere
        out: Tensor = self.last_layer(z, frozen=freeze_last_layer)
        return out


class IBOTHead(DINOHead):
    """iBOT's head (Zhou et al. 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer",
    sec. 3.3; bytedance/ibot ``models/head.py`` ``iBOTHead``): :class:`DINOHead` applied to the
    [CLS] token and to every patch token. The MLP is always shared; the patch tokens' last layer
    is the [CLS] one (``shared=True``, the paper's recipes) or a second weight-normalised layer to
    ``patch_out_dim`` logits (``shared=False``, the reference's ``last_layer2``).

    Args:
        in_dim: token width ``D``.
        out_dim: [CLS] logits ``K``.
        patch_out_dim: patch logits ``K'`` of the separate layer (ignored when ``shared``).
        shared: one last layer for [CLS] and patch tokens.
        hidden_dim, bottleneck_dim, num_layers, norm_last_layer: as :class:`DINOHead` (no
            BatchNorm: the MLP runs on ``[B, T, D]`` tokens, as the reference's ViT heads).

    Raises:
        ConfigError: if a width or ``num_layers`` is not a positive integer.
    """

    def __init__(self, in_dim: int, out_dim: int, *, patch_out_dim: int | None = None,
                 shared: bool = True, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True) -> None:
        super().__init__(in_dim, out_dim, hidden_dim=hidden_dim, bottleneck_dim=bottleneck_dim,
                         num_layers=num_layers, use_bn=False, norm_last_layer=norm_last_layer)
        self.patch_layer: WeightNormLinear | None = None
        if not shared:
            k = out_dim if patch_out_dim is None else patch_out_dim
            if isinstance(k, bool) or k < 1:
                raise ConfigError(f"IBOTHead patch_out_dim must be a positive integer, got {k}")
            self.patch_layer = WeightNormLinear(bottleneck_dim, k, fix_norm=norm_last_layer)
        self.patch_out_dim = out_dim if self.patch_layer is None else int(
            self.patch_layer.weight_v.shape[0])

    def last_layers(self) -> list[WeightNormLinear]:
        """The weight-normalised output layers, frozen during the first epoch (the reference's
        ``cancel_gradients_last_layer`` matches ``last_layer`` and ``last_layer2``)."""
        return [self.last_layer] + ([] if self.patch_layer is None else [self.patch_layer])

    def forward_tokens(self, tokens: Tensor, freeze_last_layer: bool = False,
                       patch_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``[B, 1 + N, D]`` tokens ([CLS] first) -> ``([B, K], [B, N, K'])`` logits.

        ``freeze_last_layer``: zero gradient to the last layers, kept in the graph (see
        :meth:`DINOHead.forward`). ``patch_mask`` ``[B, N]`` bool: the patch logits of those
        patches only, ``[M, K']`` in ``patch_mask.nonzero()`` order; the head works token by
        token (no BatchNorm), so they equal the full output's ``[patch_mask]`` rows."""
        if patch_mask is None:
            z = F.normalize(self.mlp(tokens), dim=-1, p=2)  # [B, 1 + N, bottleneck_dim]
            z_cls, z_patch = z[:, 0], z[:, 1:]
        else:
            picked = torch.cat([tokens[:, 0], tokens[:, 1:][patch_mask]])  # [B + M, D]
            z = F.normalize(self.mlp(picked), dim=-1, p=2)
            z_cls, z_patch = z[:tokens.shape[0]], z[tokens.shape[0]:]
        cls: Tensor = self.last_layer(z_cls, frozen=freeze_last_layer)
        layer = self.last_layer if self.patch_layer is None else self.patch_layer
        patch: Tensor = layer(z_patch, frozen=freeze_last_layer)
        return cls, patch
