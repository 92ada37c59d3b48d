"""BEiT: the masked-token cross-entropy against a loop, the labels are the tokenizer's ids of the
unmasked view, the tokenizer is frozen (no gradient, eval mode, not optimised, but in the
checkpoint), block masks scaled to small grids, loading a ``vq_tokenizer`` run end to end through
the Python API, and one-line errors for a missing or bad tokenizer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import selfsup
from selfsup.engine.optim import param_groups
from selfsup.losses.masked_tokens import masked_token_ce
from selfsup.methods.base import build_method
from selfsup.nn.backbones import create_backbone
from selfsup.types import Batch, ConfigError, DataError

SIZE, PATCH, GRID = 16, 4, 4
N = GRID * GRID


def _loop_ce(logits: Tensor, labels: Tensor, mask: Tensor, norm: float | None = None) -> float:
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if mask[b, i]:
                row = logits[b, i].tolist()
                lse = math.log(sum(math.exp(v) for v in row))
                total += lse - row[int(labels[b, i])]
                count += 1
    return total / (count if norm is None else norm)


@pytest.mark.parametrize(("b", "n", "v"), [(1, 4, 2), (3, 16, 7), (2, 9, 33)])
def test_masked_token_ce_matches_loop(b: int, n: int, v: int) -> None:
    g = torch.Generator().manual_seed(b * n + v)
    logits = torch.randn(b, n, v, generator=g) * 3
    labels = torch.randint(0, v, (b, n), generator=g)
    mask = torch.rand(b, n, generator=g) < 0.5
    mask[0, 0] = True
    assert masked_token_ce(logits, labels, mask).item() == pytest.approx(
        _loop_ce(logits, labels, mask), rel=1e-5)
    assert masked_token_ce(logits, labels, mask, normalizer=2.5).item() == pytest.approx(
        _loop_ce(logits, labels, mask, 2.5), rel=1e-5)


def test_masked_token_ce_closed_form_and_visible_positions_do_not_count() -> None:
    logits, labels = torch.zeros(2, 5, 8), torch.randint(0, 8, (2, 5))
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]], dtype=torch.bool)
    assert masked_token_ce(logits, labels, mask).item() == pytest.approx(math.log(8))
    base = masked_token_ce(torch.randn(2, 5, 8), labels, mask)
    changed = torch.randn(2, 5, 8)
    changed[mask] = 0.0
    ref = masked_token_ce(changed, labels, mask)
    changed[~mask] = torch.randn(int((~mask).sum()), 8) * 10  # only visible positions move
    assert masked_token_ce(changed, labels, mask).item() == ref.item()
    changed[0, 0, labels[0, 0]] += 5.0  # a masked position's label logit moves: so does the loss
    assert masked_token_ce(changed, labels, mask).item() != pytest.approx(ref.item())
    assert base.item() != pytest.approx(ref.item())
    with pytest.raises(DataError, match="hides no patch"):
        masked_token_ce(logits, labels, torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(DataError, match="token ids"):
        masked_token_ce(logits, labels + 8, mask)


class _Recorder(nn.Module):
    """A user tokenizer: ids from a frozen conv's argmax; records its inputs."""

    codebook_size = 6

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, self.codebook_size, PATCH, stride=PATCH)
        self.seen: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(x.detach().clone())
        return self.proj(x).argmax(dim=1)  # [B, h, w]


def _vit(in_chans: int = 1, size: int = SIZE, patch: int = PATCH) -> nn.Module:
    return create_backbone("vit_tiny", in_chans=in_chans, image_size=size, patch_size=patch,
                           depth=1)


def _beit(tokenizer: object, **kw: object):
    torch.manual_seed(0)
    return build_method("beit", _vit(), tokenizer=tokenizer, **kw)


def test_loss_is_ce_of_the_tokenizers_ids_of_the_unmasked_view_on_masked_patches() -> None:
    tok = _Recorder()
    m = _beit(tok).train()
    x = torch.randn(3, 1, SIZE, SIZE)
    mask = m.sample_masks(3, generator=torch.Generator().manual_seed(0))["mask"]
    tok.seen.clear()
    out = m.training_step(Batch(views=[x], index=torch.arange(3), masks={"mask": mask}))
    assert len(tok.seen) == 1 and torch.equal(tok.seen[0], x)  # the whole, unmasked view
    ids = tok.proj(x).argmax(dim=1).reshape(3, N)
    tokens = m.backbone.forward_tokens(x, mask=mask, mask_token=m.mask_token)[:, 1:]
    logits = m.lm_head(tokens)
    assert out.loss.item() == pytest.approx(_loop_ce(logits.detach(), ids, mask), rel=1e-5)
    # a shuffled labelling (another tokenizer's ids) gives another loss
    assert out.loss.item() != pytest.approx(_loop_ce(logits.detach(), ids.roll(1, 1), mask))
    assert 0.0 <= out.logs["mlm_acc"].item() <= 1.0


def test_tokenizer_is_frozen_in_eval_mode_not_optimised_but_checkpointed() -> None:
    tok = _Recorder()
    m = _beit(tok).train()
    assert not tok.training and all(not p.requires_grad for p in tok.parameters())
    out = m.training_step(Batch(views=[torch.randn(2, 1, SIZE, SIZE)], index=torch.arange(2)))
    out.loss.backward()
    assert all(p.grad is None for p in tok.parameters())
    assert m.mask_token.grad is not None and m.lm_head.weight.grad is not None
    optimised = {id(p) for g in param_groups(m, 0.05) for p in g["params"]}
    assert not optimised & {id(p) for p in tok.parameters()}
    m.train()
    assert not tok.training
    # its weights are in the state_dict: a BEiT with another tokenizer labels alike once loaded
    assert "tokenizer.proj.weight" in m.state_dict()
    other = _beit(_Recorder())
    torch.nn.init.normal_(other.tokenizer.proj.weight)
    x = torch.randn(2, 1, SIZE, SIZE)
    other.load_state_dict(m.state_dict())
    torch.testing.assert_close(other.tokenize(x), m.tokenize(x), rtol=0, atol=0)


@pytest.mark.parametrize(("grid", "masked", "block"), [(4, 6, 1), (8, 26, 5), (14, 78, 16)])
def test_block_masks_scaled_to_the_grid(grid: int, masked: int, block: int) -> None:
    size = grid * 2
    torch.manual_seed(0)
    tok = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(1))  # ids must be integers: rejected below
    with pytest.raises(ConfigError, match="integer ids"):
        build_method("beit", _vit(size=size, patch=2), tokenizer=tok, vocab_size=4)

    class Zeros(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return torch.zeros(x.shape[0], grid, grid, dtype=torch.long)

    m = build_method("beit", _vit(size=size, patch=2), tokenizer=Zeros(), vocab_size=4)
    assert (m.num_masked, m.min_block) == (masked, block)
    mask = m.sample_masks(64, generator=torch.Generator().manual_seed(1))["mask"]
    assert mask.shape == (64, grid * grid)
    counts = mask.sum(1)
    assert int(counts.max()) <= masked and float(counts.float().mean()) > 0.75 * masked


def test_tokenizer_errors_are_one_line_config_errors(tmp_path: Path) -> None:
    vit = _vit()
    with pytest.raises(ConfigError, match="selfsup pretrain --method vq_tokenizer") as e:
        build_method("beit", vit)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="method_args.tokenizer: .* does not exist"):
        build_method("beit", vit, tokenizer=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="unreadable or corrupt"):
        build_method("beit", vit, tokenizer=str(tmp_path / "junk.pt"))
    torch.save({"method": "simclr", "model": {}}, tmp_path / "simclr.pt")
    with pytest.raises(ConfigError, match="not a vq_tokenizer checkpoint"):
        build_method("beit", vit, tokenizer=str(tmp_path / "simclr.pt"))
    # a tokenizer of another grid (small_cnn: stride 8 -> 2 x 2 ids for a 4 x 4 ViT)
    cnn = build_method("vq_tokenizer", create_backbone("small_cnn", 1, SIZE, width=4),
                       codebook_size=8, code_dim=4, hidden_dim=8)
    with pytest.raises(ConfigError, match="one per ViT patch"):
        build_method("beit", vit, tokenizer=cnn)
    with pytest.raises(ConfigError, match="vocab_size"):
        build_method("beit", vit, tokenizer=nn.Conv2d(1, 1, 4, stride=4))
    with pytest.raises(ConfigError, match="needs a ViT"):
        build_method("beit", create_backbone("small_cnn", 1, SIZE, width=4), tokenizer=cnn)


def test_vq_tokenizer_run_then_beit_through_the_python_api(tmp_path: Path) -> None:
    common = {"backbone": "vit_tiny", "steps": 2, "batch_size": 16}
    sets = ["data.image_size=16", "data.limit=64", "backbone.patch_size=4",
            "backbone.kwargs.depth=1", "train.progress=false", "train.tensorboard=false"]
    tok_run = selfsup.pretrain("vq_tokenizer", "digits", out=str(tmp_path / "tok"),
                               overrides=sets, codebook_size=32, code_dim=8, hidden_dim=16,
                               **common)
    beit_run = selfsup.pretrain("beit", "digits", out=str(tmp_path / "beit"), overrides=sets,
                                tokenizer=str(tok_run.checkpoint), **common)
    m = beit_run.method
    assert m.vocab_size == 32 and m.lm_head.out_features == 32
    # the frozen tokenizer is exactly the trained one, also after BEiT's steps
    saved = torch.load(tok_run.checkpoint, map_location="cpu", weights_only=False)["model"]
    mine = {k[len("tokenizer."):]: v for k, v in m.state_dict().items()
            if k.startswith("tokenizer.")}
    assert set(mine) == set(saved)
    for k, v in saved.items():
        torch.testing.assert_close(mine[k].cpu(), v, rtol=0, atol=0, msg=k)
    # the same data: the view is already in the tokenizer's normalisation
    torch.testing.assert_close(m.tok_scale, torch.ones_like(m.tok_scale))
    torch.testing.assert_close(m.tok_shift, torch.zeros_like(m.tok_shift))
    assert math.isfinite(beit_run.final_loss)
    assert beit_run.cfg.method_args["tokenizer"] == str(tok_run.checkpoint)
