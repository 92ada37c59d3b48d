"""``torchrun`` with two gloo processes on CPU trains through the real CLI and writes one
checkpoint with the global step count."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from selfsup.engine import checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", "-m", "selfsup",
           "pretrain", "--data", "digits", "--backbone", "small_cnn", "--steps", "3",
           "--batch-size", "32", "--image-size", "8", "--device", "cpu", "--out", str(out),
           "--no-progress", "--no-tensorboard", "--json", "--set", "backbone.kwargs.width=8"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-3000:]
    results = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert len(results) == 1 and results[0]["step"] == 3  # rank 0 reports
    ck = checkpoint.load(out / "last.pt")
    assert ck["step"] == 3
    # a normal run prints no warnings (torch 2.14 deprecates DDP's broadcast_buffers)
    assert "Warning" not in p.stderr and "Traceback" not in p.stderr, p.stderr[-3000:]
    # every rank's RNG streams are saved (rank r resumes its own, not rank 0's)
    rngs = ck["rng_per_rank"]
    assert len(rngs) == 2 and not bool((rngs[0]["torch"] == rngs[1]["torch"]).all())
