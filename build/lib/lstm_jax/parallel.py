"""Data parallelism on JAX's own runtime: one process per host (or per GPU),
one 1-D device mesh, one jitted step.

    jax.distributed.initialize        (SLURM / TPU VM detected by JAX, or explicit flags)
      -> data_mesh()                  all devices of all processes on one "data" axis
      -> each process reads ITS rows  (TrainBatcher(shard_index=..., num_shards=...))
      -> to_global(batch)             host-local rows -> one global [B, T] jax.Array
      -> jit(step, in_shardings, out_shardings)
                                      params replicated, batch and carry sharded on
                                      rows; XLA inserts the gradient all-reduce

Nothing here is home-made communication: the mesh, `NamedSharding` and `jit`
decide where data lives and XLA (NCCL on GPU, ICI on TPU, gloo on CPU) moves it.
There is no `pmap`: the loss inside the step is the mean over the GLOBAL batch,
so a data-parallel step computes the same gradient as one device would.

Process i owns a contiguous block of rows of the global batch because the mesh
lists devices process by process; `process_rows` reads the block off the mesh
rather than assuming it, and refuses a mesh where it is not contiguous.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
DISTRIBUTED_MODES = ("auto", "on", "off")


# ----------------------------------------------------------------------------
# Start-up: join the other processes (before any JAX computation).


def _cluster_detected() -> bool:
    """Whether one of JAX's own cluster detectors (SLURM under srun, Open MPI,
    Cloud TPU VM / GKE) recognises this environment.

    JAX does the detection in `jax.distributed.initialize()`, but calling it
    outside a cluster raises; we ask the same detectors first so a laptop run
    stays a plain single-process run. (`jax._src.clusters` is private; if it
    moves, we fall back to the coordinator environment variable.)
    """
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    try:
        from jax._src import clusters

        envs = clusters.ClusterEnv._cluster_types
    except (ImportError, AttributeError):  # pragma: no cover - a future JAX
        logging.warning("cannot reach JAX's cluster detectors; use --distributed=on or flags")
        return False
    return any(not env.opt_in_only_method and env.is_env_present() for env in envs)


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the multi-process runtime; returns whether it is distributed.

    mode "auto": with explicit `coordinator_address`/`num_processes`/`process_id`
    (all three, as `launch/local.py` passes them) use those; otherwise call
    `jax.distributed.initialize()` only where JAX detects a cluster (SLURM
    `srun`, Open MPI, Cloud TPU VM, or `JAX_COORDINATOR_ADDRESS` set); else stay
    single-process. "on": always initialize (fail loudly if JAX finds no
    cluster). "off": never.

    On CPU, processes exchange gradients through gloo collectives
    (`jax_cpu_collectives_implementation`), so the multi-process path runs for
    real on one machine without GPUs.
    """
    if mode not in DISTRIBUTED_MODES:
        raise ValueError(f"unknown --distributed mode {mode!r}; valid: {list(DISTRIBUTED_MODES)}")
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        raise ValueError(
            "--coordinator_address, --num_processes and --process_id go together: got "
            f"{coordinator_address!r}, {num_processes!r}, {process_id!r}"
        )
    if mode == "off" or (mode == "auto" and None in explicit and not _cluster_detected()):
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def use_cpu_devices(count: int) -> None:
    """Present the CPU backend as `count` devices (0: leave JAX's default, one).

    XLA:CPU runs a small per-step matmul and the elementwise gate math of a
    recurrent loop on one core; with one device per core the data mesh splits
    the rows and every core runs its own loop (`recurrent.run_stack` with a mesh).
    Must run before the first JAX computation; GPU/TPU backends ignore it.
    """
    if count < 0:
        raise ValueError(f"cpu_devices must be >= 0, got {count}")
    if count:
        jax.config.update("jax_num_cpu_devices", count)


# ----------------------------------------------------------------------------
# The mesh and where each array lives.


def data_mesh(devices: list[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all devices (of all processes), process by process.

    Ordering by process keeps each process's rows of the global batch one
    contiguous block, which is what `TrainBatcher(shard_index, num_shards)` reads.
    """
    devices = sorted(devices or jax.devices(), key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Parameters, step, RNG key, metrics: one full copy on every device."""
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows (streams) split over the data axis: batches, carries, reset masks."""
    return NamedSharding(mesh, P(DATA_AXIS))


def shard_dim(shape: tuple[int, ...], num_devices: int) -> int | None:
    """The dimension an optimizer-state leaf is split on: the largest one that
    divides evenly over the devices (None: too small or indivisible, replicate)."""
    if num_devices == 1:
        return None
    dims = [i for i, n in enumerate(shape) if n % num_devices == 0]
    return max(dims, key=lambda i: shape[i]) if dims else None


def optimizer_state_sharding(abstract_opt_state: Any, mesh: Mesh) -> Any:
    """Shardings for an optimizer state that is split over devices (ZeRO-1 style).

    Each device keeps 1/N of every moment it can split, cutting optimizer
    memory N-fold; the parameters stay replicated, so XLA computes the update
    on the shards and all-gathers the new parameters. The result is the same
    as the replicated update (elementwise optimizers: Adam, RMSProp, SGD...).
    """
    n = mesh.devices.size

    def leaf(x: jax.ShapeDtypeStruct) -> NamedSharding:
        dim = shard_dim(tuple(x.shape), n)
        if dim is None:
            return replicated(mesh)
        spec = [None] * len(x.shape)
        spec[dim] = DATA_AXIS
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(leaf, abstract_opt_state)


# ----------------------------------------------------------------------------
# Batch sizes and which rows this process reads.


def global_batch_size(batch_size: int, per_device_batch_size: int, num_devices: int) -> int:
    """The global batch: `per_device_batch_size x devices` when that is set (> 0),
    else `batch_size`; either way it must split evenly over the devices."""
    if per_device_batch_size < 0:
        raise ValueError(
            f"parallel.per_device_batch_size must be >= 0, got {per_device_batch_size}"
        )
    if per_device_batch_size:
        return per_device_batch_size * num_devices
    if batch_size % num_devices:
        raise ValueError(
            f"train.batch_size {batch_size} (the global batch) does not split over the "
            f"{num_devices} devices of the data mesh: use a multiple of {num_devices}, or set "
            "--config.parallel.per_device_batch_size=... instead"
        )
    return batch_size


def process_rows(mesh: Mesh) -> tuple[int, int]:
    """(shard_index, num_shards): this process feeds rows
    `shard_index*B/num_shards : (shard_index+1)*B/num_shards` of every global batch."""
    owners = [d.process_index for d in mesh.devices.flat]
    mine = [i for i, p in enumerate(owners) if p == jax.process_index()]
    n, k = len(owners), len(mine)
    if not mine or n % k or mine != list(range(mine[0], mine[0] + k)) or mine[0] % k:
        raise ValueError(
            "each process must own one contiguous, equal block of the mesh's devices; "
            f"got device owners {owners}"
        )
    return mine[0] // k, n // k


def to_global(tree: Any, mesh: Mesh, global_rows: int) -> Any:
    """Host arrays -> jax.Arrays of `global_rows` rows sharded over the mesh.

    Each process passes either its own block of rows (training batches) or all
    rows (evaluation batches, zero carries: every process holds the same data);
    `jax.make_array_from_process_local_data` tells the two apart by the shape.
    In a single process the host arrays are returned as they are: the jitted
    step's `in_shardings` puts them on the devices on its C++ fast path, which
    is what keeps the one-device step as fast as a plain `jit`.
    """
    if jax.process_count() == 1:
        return tree
    sharding = batch_sharding(mesh)

    def leaf(x: Any) -> jax.Array:
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (global_rows, *x.shape[1:]))

    return jax.tree.map(leaf, tree)


# ----------------------------------------------------------------------------
# Host-side agreement between processes.


def barrier(name: str) -> None:
    """All processes reach this line before any goes on (no-op alone)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (one small all-gather)."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def describe(mesh: Mesh, batch_size: int) -> str:
    """One line for the log: the layout of this run."""
    n = mesh.devices.size
    kinds = sorted({d.platform for d in mesh.devices.flat})
    return (
        f"data parallel: {jax.process_count()} process(es) x {jax.local_device_count()} "
        f"{'/'.join(kinds)} device(s) = {n}; global batch {batch_size} = {batch_size // n} "
        "per device"
    )
