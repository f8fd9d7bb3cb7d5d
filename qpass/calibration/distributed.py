"""Data-parallel calibration on torch.distributed (DESIGN §12).

Under `torchrun --nproc-per-node N -m qpass quantize …` every rank holds the whole model
and a shard of the calibration batches (batch i goes to rank i mod N, so the batches are the
ones a single process would form); every statistic (InputStats: Σxᵀx, per-channel absmax and
Σ|x|, token counts, min/max) is all-reduced in float64 before any pass uses it, so each rank
takes the same decisions and rank 0 writes the result. gloo on CPU, nccl on CUDA."""
from __future__ import annotations

import os

import torch


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist is not None else (0, 1)


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1 in the environment); True
    when this process is one rank of several."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    import torch.distributed as dist
    if not dist.is_initialized():
        if str(device).startswith("cuda"):          # nccl's buffers on this rank's GPU
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return True


class ShardedCalibration:
    """This rank's share of a CalibrationSet: batch i of `batches(bs)` when i % world == rank."""

    def __init__(self, calib, rank: int, world: int):
        self.calib, self.rank, self.world = calib, rank, world

    def batches(self, batch_size: int = 8, device=None):
        for i, batch in enumerate(self.calib.batches(batch_size, device)):
            if i % self.world == self.rank:
                yield batch

    def __len__(self) -> int:
        return sum(b[0].shape[0] for b in self.batches())

    def check_vocab(self, vocab_size: int) -> None:
        self.calib.check_vocab(vocab_size)

    def __getattr__(self, name):                    # seq_len, masking, … of the whole set
        return getattr(self.calib, name)


def shard(calib):
    """`calib` itself in one process, else this rank's ShardedCalibration."""
    rank, world = rank_and_world()
    if calib is None or world == 1:
        return calib
    n_batches = sum(1 for _ in calib.batches(8))
    if n_batches < world:
        from qpass.errors import CalibrationError
        raise CalibrationError(f"{n_batches} calibration batch(es) of 8 windows cannot feed {world} "
                               f"ranks: use at least {8 * world} windows (--calib-n)")
    return ShardedCalibration(calib, rank, world)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """`t` reduced over the ranks in float64 (returned in t's dtype and device); t itself in
    one process."""
    dist = _dist()
    if dist is None or dist.get_world_size() == 1:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    backend_device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    buf = t.detach().to(device=backend_device, dtype=torch.float64).contiguous()
    dist.all_reduce(buf, op=ops[op])
    return buf.to(device=t.device, dtype=t.dtype)
