"""Runtime: the device a stage runs on, autocast, determinism, the optimiser, and the DDP helpers.

A training stage started by `torchrun --nproc_per_node=N` runs in N processes (`start_processes`):
each trains on its share of the batches under DDP, rank 0 does what only one process should
(clustering, writing), and `broadcast` / `sum_over_ranks` / `mean_over_ranks` move tensors between them.
Started plainly, a stage is rank 0 of 1 and none of this costs anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.shards import atomic_path
from pipeline.stage import StageError


def pick_device(name: str, key: str) -> torch.device:
    """The torch device for a `device` knob's value (auto | cpu | cuda); `key` names the knob in the error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError(f"{key}: cuda asked but torch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def make_deterministic(device: torch.device) -> None:
    """Bit-reproducible runs on the CPU: deterministic kernels only. The mode would also fill every new
    tensor with NaN (a guard against reading memory before writing it, which no kernel here does); that
    fill cost about 5 % of a stage-1 step, so it is off. On CUDA this would need CUBLAS_WORKSPACE_CONFIG
    and slower kernels: not asked for."""
    torch.use_deterministic_algorithms(device.type == "cpu")
    torch.utils.deterministic.fill_uninitialized_memory = False


def make_optimizer(parameters, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with its multi-tensor ("foreach") update, which torch picks by itself only on CUDA: on the CPU
    it gives the same values to the bit as the per-tensor loop, in fewer steps of Python."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, foreach=True)


def native_cpu_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX): there oneDNN runs bf16 convolutions
    natively, elsewhere it emulates them, slower than fp32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def autocast(device: torch.device, cpu_precision: str = "fp32") -> torch.autocast:
    """bf16 autocast on CUDA. On the CPU as `cpu_precision` (`model.cpu_precision`) says: bf16, fp32, or auto
    (bf16 where the CPU has it natively). Both are deterministic on the CPU; they give different numbers
    (docs/decisions.md#bf16-on-cpus-that-have-it)."""
    if device.type == "cpu":
        enabled = cpu_precision == "bf16" or (cpu_precision == "auto" and native_cpu_bf16())
    else:
        enabled = device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class Processes(NamedTuple):
    """This process's place in a `torchrun` launch (rank 0 of 1 when started plainly)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_processes(device_name: str, key: str) -> Processes:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU; each
    CUDA process takes the GPU of its LOCAL_RANK. Started plainly: one process on `pick_device`'s device."""
    device = pick_device(device_name, key)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def stop_processes(processes: Processes) -> None:
    if processes.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """Rank 0's `tensor` on every rank (CPU in, CPU out; through the device, where NCCL needs it).
    The other ranks pass a buffer of the same shape and dtype."""
    if processes.world_size == 1:
        return tensor
    on_device = tensor.to(processes.device)
    dist.broadcast(on_device, src=0)
    return on_device.cpu()


def sum_over_ranks(tensor: torch.Tensor, processes: Processes) -> torch.Tensor:
    """The sum of `tensor` over the ranks, on every rank (CPU in, CPU out)."""
    on_device = tensor.to(processes.device)
    dist.all_reduce(on_device)
    return on_device.cpu()


def mean_over_ranks(values: dict[str, float], processes: Processes) -> dict[str, float]:
    """The mean of each value over the ranks (epoch losses for the log)."""
    if processes.world_size == 1:
        return values
    stacked = torch.tensor(list(values.values()), dtype=torch.float64, device=processes.device)
    dist.all_reduce(stacked)
    return {name: float(total) / processes.world_size for name, total in zip(values, stacked.tolist())}


def wrap_for_training(model: nn.Module, processes: Processes) -> nn.Module:
    """DDP over the parameters that train now (frozen ones are left out: DDP would wait for their
    gradients), or the model itself in a single process."""
    if processes.world_size == 1:
        return model
    device_ids = [processes.device.index] if processes.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def save_torch(obj: object, path: Path) -> None:
    """torch.save to `path` atomically, the same object always to the same bytes. Given a file name, torch.save
    names the zip's inner folder after it, here a temporary name with a pid and random letters, so equal
    weights gave other bytes and another DVC hash in every run; through a file object the folder is torch's
    fixed "archive"."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def epoch_steps(reader, epoch: int, processes: Processes, what: str, key: str) -> int:
    """Set the reader's (a `ShardReader`'s) epoch; the steps every rank takes: as many as the rank with the fewest
    batches has (DDP needs equal step counts)."""
    reader.set_epoch(epoch)
    steps = min(reader.num_batches(rank=rank) for rank in range(processes.world_size))
    if steps == 0:
        raise StageError(f"{what} give no full batch of {key} = {reader.batch_size} for each of "
                         f"{processes.world_size} process(es)")
    return steps
