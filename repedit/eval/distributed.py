"""Sharding evaluation over processes with ``torch.distributed``.

Start the processes with ``torchrun`` or ``accelerate launch``; both set ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_from_env`
creates the process group from those variables (gloo on CPU, nccl on GPUs), and
:func:`repedit.eval.harness.evaluate` then shards its fixed chunks of requests round-robin
over the ranks (:func:`assign`), gathers every rank's results with
``all_gather_object`` (:func:`gather_indexed`) and merges them in request order. Because
the chunks are the same whatever the number of ranks, the merged result equals the
single-process result.

Example (two CPU processes)::

    torchrun --nproc_per_node 2 -m repedit.cli eval --model smollm2-135m --adapter my-edit \\
        --data counterfact --limit 200 --out metrics.json

or in your own script::

    from repedit.eval import distributed as D
    D.init_from_env()                 # no-op when not launched by torchrun/accelerate
    report = evaluate(edited, tok, requests)   # sharded automatically
    if D.is_main_process():
        report.save("metrics.json")
    D.cleanup()
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any, Sequence

import torch

logger = logging.getLogger(__name__)

__all__ = [
    "launched",
    "init_from_env",
    "rank_and_world",
    "is_main_process",
    "local_device",
    "assign",
    "gather_indexed",
    "barrier",
    "cleanup",
]


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def launched() -> bool:
    """Whether this process was started by a launcher with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def init_from_env(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Create the default process group from the launcher's environment variables.

    Returns whether a group with several ranks is active. Does nothing (and returns False)
    outside ``torchrun``/``accelerate launch``; returns True if a group already exists.
    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``.

    Example::

        if init_from_env():
            print("rank", rank_and_world()[0])
    """
    dist = _dist()
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise ValueError(f"WORLD_SIZE > 1 but {var} is not set; start the processes with torchrun or accelerate launch")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    logger.info("process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed)."""
    return rank_and_world()[0] == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def assign(n_units: int, rank: int, world: int) -> list[int]:
    """The work units (e.g. chunk indices) rank ``rank`` of ``world`` handles: round robin.

    Example::

        assign(5, 0, 2), assign(5, 1, 2)   # ([0, 2, 4], [1, 3])
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of size {world}")
    return list(range(rank, n_units, world))


def gather_indexed(local: Sequence[tuple[int, Any]], n_units: int) -> list[Any]:
    """All-gather ``(unit index, value)`` pairs from every rank; return the values in unit order.

    Every unit must come from exactly one rank. Objects travel pickled
    (``all_gather_object``), so values should be plain Python data.

    Example::

        merged = gather_indexed([(c, results[c]) for c in assign(n, rank, world)], n)
    """
    dist = _dist()
    rank, world = rank_and_world()
    if world == 1:
        parts = [list(local)]
    else:
        parts = [None] * world
        dist.all_gather_object(parts, list(local))
    out: list[Any] = [None] * n_units
    seen = [False] * n_units
    for part in parts:
        for idx, value in part:
            if seen[idx]:
                raise RuntimeError(f"work unit {idx} was computed by two ranks")
            seen[idx] = True
            out[idx] = value
    missing = [i for i, s in enumerate(seen) if not s]
    if missing:
        raise RuntimeError(f"work units {missing[:5]} were computed by no rank")
    return out


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    """Destroy the default process group if one exists."""
    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
