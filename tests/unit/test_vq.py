"""VQ-VAE quantiser (selfsup.nn.vq) and the vq_tokenizer method: nearest-code assignment against
a loop, the straight-through gradient, the codebook / commitment terms against eq. 3 and their
closed-form gradients, perplexity and usage, the token grid and the total loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.nn.vq import VectorQuantizer, code_usage, nearest_codes, straight_through, vq_losses
from selfsup.types import Batch, ConfigError, DataError


def _loop_nearest(z: torch.Tensor, codebook: torch.Tensor) -> list[int]:
    out = []
    for row in z.tolist():
        best, best_d = 0, math.inf
        for k, code in enumerate(codebook.tolist()):
            d = sum((a - b) ** 2 for a, b in zip(row, code))
            if d < best_d:  # strict: ties keep the lowest index
                best, best_d = k, d
        out.append(best)
    return out


@pytest.mark.parametrize(("m", "k", "d"), [(1, 2, 1), (17, 5, 3), (40, 32, 8)])
def test_nearest_codes_matches_loop(m: int, k: int, d: int) -> None:
    g = torch.Generator().manual_seed(m + k)
    z, codebook = torch.randn(m, d, generator=g), torch.randn(k, d, generator=g)
    assert nearest_codes(z, codebook).tolist() == _loop_nearest(z, codebook)


def test_nearest_codes_is_distance_not_dot_product_and_ties_take_lowest() -> None:
    # a long code far away has the larger dot product with z but is not the nearest
    codebook = torch.tensor([[1.0, 0.0], [10.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[1.2, 0.0], [9.0, 0.0]])
    assert nearest_codes(z, codebook).tolist() == [0, 1]  # codes 0 and 2 tie: 0
    with pytest.raises(DataError, match="nearest_codes"):
        nearest_codes(torch.zeros(3, 2), torch.zeros(4, 3))


def test_straight_through_value_is_code_gradient_is_identity() -> None:
    z_e = torch.randn(6, 4, requires_grad=True)
    z_q = torch.randn(6, 4, requires_grad=True)
    out = straight_through(z_e, z_q)
    torch.testing.assert_close(out, z_q)
    w = torch.randn(6, 4)
    (out * w).sum().backward()
    torch.testing.assert_close(z_e.grad, w)  # copied to the encoder unchanged
    assert z_q.grad is None  # nothing reaches the codes through this path


def test_vq_losses_match_eq3_and_their_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    z_e = torch.randn(5, 3, generator=g).requires_grad_(True)
    codebook = torch.randn(4, 3, generator=g).requires_grad_(True)
    ids = nearest_codes(z_e.detach(), codebook.detach())
    z_q = codebook[ids]
    cb, commit = vq_losses(z_e, z_q)
    ref = sum(((z_e[i] - codebook[ids[i]]) ** 2).sum() for i in range(5)).item() / 15
    assert cb.item() == pytest.approx(ref, rel=1e-6)
    assert commit.item() == pytest.approx(ref, rel=1e-6)
    # codebook term: moves only the codes, d/de_k = -2 sum_{i: k_i = k} (z_i - e_k) / numel
    gz, gc = torch.autograd.grad(cb, [z_e, codebook], allow_unused=True)
    assert gz is None or float(gz.abs().sum()) == 0.0
    expect = torch.zeros(4, 3)
    for i in range(5):
        expect[ids[i]] += -2 * (z_e[i] - codebook[ids[i]]).detach() / 15
    torch.testing.assert_close(gc, expect)
    # commitment term: moves only the encoder, d/dz_i = 2 (z_i - e_{k_i}) / numel
    gz, gc = torch.autograd.grad(commit, [z_e, codebook], allow_unused=True)
    assert gc is None or float(gc.abs().sum()) == 0.0
    torch.testing.assert_close(gz, 2 * (z_e - codebook[ids]).detach() / 15)


def test_code_usage_perplexity_closed_forms_and_loop() -> None:
    k = 8
    p, used = code_usage(torch.arange(k).repeat(3), k)
    assert p.item() == pytest.approx(k) and used.item() == 1.0  # every code equally
    p, used = code_usage(torch.full((10,), 3), k)
    assert p.item() == pytest.approx(1.0) and used.item() == 1 / k  # one code: dead codebook
    ids = torch.tensor([0, 0, 1, 5, 5, 5, 2])
    counts = [ids.tolist().count(j) for j in range(k)]
    ent = -sum(c / 7 * math.log(c / 7) for c in counts if c)
    p, used = code_usage(ids, k)
    assert p.item() == pytest.approx(math.exp(ent), rel=1e-6) and used.item() == 4 / k


def test_quantizer_module_outputs_and_config_errors() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    z = torch.randn(2, 3, 3, 4)
    out = vq(z)
    assert out.ids.shape == (2, 3, 3) and out.ids.dtype == torch.int64
    torch.testing.assert_close(out.quantized, vq.codebook.weight[out.ids])
    assert out.ids.tolist() == nearest_codes(z.reshape(-1, 4), vq.codebook.weight).reshape(
        2, 3, 3).tolist()
    with pytest.raises(ConfigError, match="codebook_size"):
        VectorQuantizer(1, 4)
    with pytest.raises(DataError, match="VectorQuantizer"):
        vq(torch.randn(2, 5))


def test_normalized_quantizer_picks_the_most_cosine_similar_code() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(12, 3, normalize=True)
    with torch.no_grad():
        vq.codebook.weight.mul_(torch.rand(12, 1) * 50)  # lengths no longer matter
    z = torch.randn(20, 3) * 7
    out = vq(z)
    cos = F.normalize(z, dim=-1) @ F.normalize(vq.codebook.weight, dim=-1).t()
    assert out.ids.tolist() == cos.argmax(dim=1).tolist()
    torch.testing.assert_close(out.quantized.norm(dim=-1), torch.ones(20))
    ref = ((F.normalize(z, dim=-1) - F.normalize(vq.codebook.weight, dim=-1)[out.ids]) ** 2).mean()
    torch.testing.assert_close(out.commitment_loss, ref)
    # plain Euclidean lookup differs here (the long codes are far from every z)
    assert vq.lookup(z).tolist() != nearest_codes(z, vq.codebook.weight).tolist()


def _tokenizer(in_chans: int = 1, size: int = 16, backbone: str = "vit_tiny", **kw: object):
    torch.manual_seed(0)
    opts = {"patch_size": 4, "depth": 1} if backbone == "vit_tiny" else {"width": 4}
    enc = create_backbone(backbone, in_chans=in_chans, image_size=size, **opts)
    return build_method("vq_tokenizer", enc, codebook_size=16, code_dim=8, hidden_dim=16, **kw)


@pytest.mark.parametrize("in_chans", [1, 3, 5])
def test_tokenizer_grid_is_the_vit_patch_grid_for_any_channel_count(in_chans: int) -> None:
    tok = _tokenizer(in_chans)
    x = torch.randn(3, in_chans, 16, 16)
    ids = tok.tokenize(x)
    assert ids.shape == (3, 4, 4) and ids.dtype == torch.int64
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    assert tok.decode(tok.quantizer(tok.encode(x)).quantized).shape == x.shape
    cnn = _tokenizer(in_chans, backbone="small_cnn")  # stride 8: a 2 x 2 grid, 3 upsamplings
    assert cnn.tokenize(x).shape == (3, 2, 2)


def test_tokenizer_loss_is_recon_plus_codebook_plus_beta_commitment_and_logs_usage() -> None:
    tok = _tokenizer(beta=0.5)
    x = torch.randn(4, 1, 16, 16)
    out = tok.training_step(Batch(views=[x], index=torch.arange(4)))
    z_e = tok.encode(x)
    q = tok.quantizer(z_e)
    recon = F.mse_loss(tok.decode(q.quantized), x)
    e = tok.quantizer.codebook.weight[q.ids]
    sq = ((z_e - e) ** 2).mean()
    torch.testing.assert_close(out.loss, recon + sq + 0.5 * sq)
    torch.testing.assert_close(out.logs["recon"], recon.detach())
    perplexity, usage = code_usage(tok.tokenize(x), 16)
    torch.testing.assert_close(out.logs["perplexity"], perplexity)
    torch.testing.assert_close(out.logs["usage"], usage)
    with pytest.raises(DataError, match="vq_tokenizer expects"):
        tok.training_step(Batch(views=[torch.randn(2, 3, 16, 16)], index=torch.arange(2)))


def test_reconstruction_gradient_reaches_the_encoder_through_the_codes() -> None:
    tok = _tokenizer()
    x = torch.randn(4, 1, 16, 16)
    rec = tok.decode(tok.quantizer(tok.encode(x)).quantized)
    F.mse_loss(rec, x).backward()  # the reconstruction term alone
    grads = [p.grad for p in tok.backbone.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    assert float(tok.pre_quant.weight.grad.abs().sum()) > 0
    # the codes get no gradient from the reconstruction (only from the codebook term)
    cb = tok.quantizer.codebook.weight.grad
    assert cb is None or float(cb.abs().sum()) == 0.0
