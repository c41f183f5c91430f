"""Distributed training through PyTorch's own engine: `torchrun` + DDP, FSDP, tensor parallelism
(`torch.distributed.tensor.parallel`) or FSDP x TP on a 2-D device mesh. Nothing home-made."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, distribute_module
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    ParallelStyle,
    RowwiseParallel,
    parallelize_module,
)

from lmforge.models.config import ConfigError

TP_STRATEGIES = ("tp", "fsdp-tp")
# Megatron-LM's split (Shoeybi et al. 2019): the first projection of attention and of the FFN column-wise
# (each rank holds some heads / some hidden units), the second row-wise (one all-reduce after each).
COLWISE = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROWWISE = ("o_proj", "down_proj")


@dataclass
class DistEnv:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None
    """The ("dp", "tp") device mesh under tensor parallelism (`with_mesh`); None: every process is data-parallel."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dp_rank(self) -> int:
        """Which slice of each batch this process trains on (every rank of a TP group gets the same one)."""
        return self.mesh["dp"].get_local_rank() if self.mesh is not None else self.rank

    @property
    def dp_size(self) -> int:
        """Slices each batch is split into: the processes, or the TP groups under tensor parallelism."""
        return self.mesh["dp"].size() if self.mesh is not None else self.world_size

    @property
    def tp_size(self) -> int:
        return self.mesh["tp"].size() if self.mesh is not None else 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> DistEnv:
    """Read the `torchrun` environment; join the process group (gloo on CPU, nccl on GPU) when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device, local) if device == "cuda" else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistEnv(rank, world, local, dev)


def with_mesh(env: DistEnv, strategy: str, tp_size: int | None = None) -> DistEnv:
    """`env` with a ("dp", "tp") device mesh under tp / fsdp-tp; `env` itself for other strategies.

    TP groups are `tp_size` consecutive ranks (all of them under tp), so on GPUs a group stays inside a
    node (NVLink) and FSDP shards across the groups. The sizes were checked by `TrainConfig.validate`.
    """
    if not env.enabled or strategy not in TP_STRATEGIES:
        return env
    tp = env.world_size if strategy == "tp" else tp_size
    mesh = init_device_mesh(env.device.type, (env.world_size // tp, tp), mesh_dim_names=("dp", "tp"))
    return dataclasses.replace(env, mesh=mesh)


def wrap(model: nn.Module, env: DistEnv, strategy: str) -> nn.Module:
    """DDP (default), FSDP (`fully_shard` per block, then the root), TP, or TP inside FSDP, across the process group.

    Under tp / fsdp-tp, `env` must come from `with_mesh`. FSDP and TP change `model` in place.
    """
    if not env.enabled or strategy == "none":
        return model
    if strategy in TP_STRATEGIES:
        if env.mesh is None:
            raise ValueError(f"distributed strategy {strategy!r} needs a device mesh: pass env = with_mesh(env, ...)")
        tensor_parallel(model, env.mesh["tp"])
        if strategy == "fsdp-tp":
            from torch.distributed.fsdp import fully_shard

            for block in model.blocks():
                fully_shard(block, mesh=env.mesh["dp"])
            fully_shard(model, mesh=env.mesh["dp"])
        return model
    if strategy in ("ddp", "auto"):
        from torch.nn.parallel import DistributedDataParallel

        ids = [env.device.index] if env.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks():
            fully_shard(block)
        fully_shard(model)
        return model
    raise ValueError(f"distributed strategy {strategy!r} is not one of auto, ddp, fsdp, tp, fsdp-tp, none")


class Replicated(ParallelStyle):
    """Parameters replicated over the TP group; inputs and outputs plain tensors (norms, positions, small heads).

    Plain parameters would compute the same, but `clip_grad_norm_` and the fused optimizer refuse a
    mix of tensors and DTensors, so every parameter of a TP model is a DTensor.
    """

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        def inputs_in(_module, inputs, mesh):
            return tuple(DTensor.from_local(x, mesh, [Replicate()], run_check=False)
                         if isinstance(x, torch.Tensor) and not isinstance(x, DTensor) else x for x in inputs)

        def outputs_out(_module, output, _mesh):
            return output.full_tensor() if isinstance(output, DTensor) else output

        return distribute_module(module, device_mesh, input_fn=inputs_in, output_fn=outputs_out)


def tensor_parallel(model: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Split `model` over the 1-D `mesh` in place with `parallelize_module`; every parameter becomes a DTensor.

    q/k/v and gate/up are column-wise (each rank holds n_heads / tp heads and d_ff / tp hidden units),
    o and down row-wise; the token embedding and the LM / MLM head are split over the vocabulary (the
    head all-gathers its logits: the objectives compute their loss from whole logits, so no loss
    parallelism); a tied head shares the embedding's vocabulary shards. Everything else is replicated.
    """
    modules = dict(model.named_modules())
    plan: dict[str, ParallelStyle] = {}
    for name, module in modules.items():
        leaf = name.rpartition(".")[2]
        if isinstance(module, nn.Linear) and leaf in COLWISE:
            plan[name] = ColwiseParallel()
        elif isinstance(module, nn.Linear) and leaf in ROWWISE:
            plan[name] = RowwiseParallel()
    if not plan:
        raise ConfigError(f"train.distributed tp / fsdp-tp: {type(model).__name__} has no "
                          f"{'/'.join(COLWISE + ROWWISE)} projections to split")
    if isinstance(modules.get("body.tokens"), nn.Embedding):
        plan["body.tokens"] = RowwiseParallel(input_layouts=Replicate())  # vocabulary-parallel embedding
    for head in ("lm_head.proj", "mlm_head.proj"):
        if isinstance(modules.get(head), nn.Linear):
            plan[head] = ColwiseParallel(output_layouts=Replicate())
    holders = []  # modules with parameters of their own, outside the plan
    for name, module in modules.items():
        if name in plan or not list(module.parameters(recurse=False)):
            continue
        if list(module.children()):
            holders.append(f"{name or 'the model'} ({type(module).__name__})")
        plan[name] = Replicated()
    if holders:
        raise ConfigError("train.distributed tp / fsdp-tp replicates the parameters of leaf modules only; these "
                          f"modules hold parameters beside their children: {', '.join(holders)}")
    parallelize_module(model, mesh, plan)
    model.tie_weights()  # parallelize_module gave the head a copy: share the embedding's shards again
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean over ranks (identity for one process)."""
    if env.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= env.world_size
    return value


def all_true(flag: bool, env: DistEnv) -> bool:
    """True only when every rank says True."""
    if not env.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def teardown(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
