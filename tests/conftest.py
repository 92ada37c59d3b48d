"""Shared test settings: CPU only, few threads, quiet progress bars."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_run(tmp_path):
    """A RunConfig factory for a very small SimCLR run on digits with the small CNN."""
    from selfsup.config import BackboneConfig, DataConfig, RunConfig, TrainConfig

    def make(out: str = "run", steps: int = 6, batch: int = 64, **train):
        return RunConfig(
            method="simclr",
            backbone=BackboneConfig(name="small_cnn", kwargs={"width": 8}),
            data=DataConfig(path="digits", image_size=8),
            train=TrainConfig(steps=steps, batch_size=batch, out=str(tmp_path / out),
                              progress=False, tensorboard=False, log_every=1, **train),
        )

    return make
