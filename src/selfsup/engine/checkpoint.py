"""Checkpoints: one ``torch.save`` payload holding the method's ``state_dict`` (which includes all
training state: EMA teachers, queues, centers), the optimiser, the step, all RNG states, the data
normalisation and the fully resolved run config.

Distributed runs also keep what is each rank's own: the RNG states of every rank
(``rng_per_rank``) and the buffers whose value differs between ranks (``buffers_per_rank``:
BatchNorm running statistics under ``broadcast_buffers=False``, SwAV's per-rank queue), so a
resumed rank continues from its own state rather than rank 0's.

Writes are atomic: the payload goes to ``NAME.tmp`` in the same folder, is flushed to disk, then
renamed over ``NAME``, so a crash or Ctrl-C during a save never leaves a half-written ``last.pt``.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from selfsup.utils import dist
from selfsup.utils.log import logger
from selfsup.utils.seed import seed_everything, set_rng_state

FORMAT = "selfsup-checkpoint-v1"


def library_version() -> str:
    """The installed selfsup version (stored in checkpoints and exports)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfsup")
    except PackageNotFoundError:
        return "unknown"


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` via a temp file + ``os.replace`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load(path: str | Path, *, expect: str = FORMAT) -> dict[str, Any]:
    """Load a selfsup checkpoint (or export) onto the CPU.

    Raises:
        CheckpointError: if the file is missing, unreadable/corrupt, or not a ``expect`` payload.
    """
    from selfsup.types import CheckpointError

    path = Path(path)
    if not path.is_file():
        hint = " (pass the run's last.pt)" if path.is_dir() else ""
        raise CheckpointError(f"checkpoint '{path}' does not exist{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise CheckpointError(f"checkpoint '{path}' is unreadable or corrupt ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != expect:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(
            f"'{path}' is not a selfsup {expect} file (found format {found!r})"
        )
    return payload


def restore_rng(payload: dict[str, Any], seed: int, step: int) -> None:
    """Give this rank its own saved RNG streams. A checkpoint from another world size (or one
    written before per-rank states were saved, on rank > 0) re-seeds from seed, rank and step,
    with a warning: the run goes on reproducibly but not as the uninterrupted one would."""
    per_rank = payload.get("rng_per_rank")
    r, world = dist.rank(), dist.world_size()
    if per_rank is not None and len(per_rank) == world:
        set_rng_state(per_rank[r])
    elif world == 1 and (per_rank is None or len(per_rank) == 1):
        set_rng_state(payload["rng"])
    else:
        saved = len(per_rank) if per_rank is not None else "an unknown number of"
        if dist.is_main():
            logger.warning("the checkpoint was written by %s processes and this run has %d: "
                           "random streams re-seeded from seed, rank and step", saved, world)
        seed_everything(seed + 1_000_003 * (step + 1) + r)


@torch.no_grad()
def rank_buffers(method: nn.Module) -> list[dict[str, Tensor]] | None:
    """Every rank's value of the persistent buffers that differ from rank 0's on some rank, in
    rank order (a collective: every rank must call it), or None in one process or when all
    buffers agree. Memory banks, EMA teachers and centers, kept equal by the methods' own
    collectives, are compared (one broadcast per dtype) but not gathered."""
    if dist.world_size() == 1:
        return None
    params = {id(p) for p in method.parameters()}
    state = method.state_dict(keep_vars=True)
    names = [k for k, v in state.items() if isinstance(v, Tensor) and id(v) not in params
             and v.numel() > 0]
    if not names:
        return None
    device = state[names[0]].device
    differs = torch.zeros(len(names), device=device)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, k in enumerate(names):
        by_dtype.setdefault(state[k].dtype, []).append(i)
    for idx in by_dtype.values():
        mine = torch.cat([state[names[i]].detach().reshape(-1).to(device) for i in idx])
        ref = dist.broadcast(mine.clone(), 0)
        off = 0
        for i in idx:
            n = state[names[i]].numel()
            differs[i] = float(not torch.equal(mine[off:off + n], ref[off:off + n]))
            off += n
    dist.all_reduce_max(differs)
    keep = [k for k, d in zip(names, differs.tolist()) if d > 0]
    if not keep:
        return None
    own = {k: state[k].detach().cpu().clone() for k in keep}
    return dist.all_gather_object(own)  # type: ignore[return-value]


def restore_rank_buffers(method: nn.Module, payload: dict[str, Any]) -> None:
    """Load this rank's own buffers (:func:`rank_buffers`) over the model state just loaded.
    A checkpoint from another world size leaves rank 0's, with a warning."""
    per_rank = payload.get("buffers_per_rank")
    if not per_rank:
        return
    r, world = dist.rank(), dist.world_size()
    if len(per_rank) == world:
        method.load_state_dict(per_rank[r], strict=False)
    elif dist.is_main():
        logger.warning("the checkpoint was written by %d processes and this run has %d: every "
                       "rank starts from rank 0's BatchNorm statistics and per-rank buffers (%s)",
                       len(per_rank), world, ", ".join(sorted(per_rank[0])[:4]))
