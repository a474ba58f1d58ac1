"""Members on one axis: bucket sizes, stacking, padding, grouping and sharding.

The one owner of batching for :mod:`leads_jax.compile`, :mod:`leads_jax.simulate`
and the fitting engine (:mod:`leads_jax.fit`).

Every candidate of one topology compiles to a pytree with identical structure and
leaf shapes (:func:`group_key`), so a group is one stacked pytree whose array leaves
carry a leading *member* axis. The member count is padded up to a bucket size
(:func:`bucket_size`: powers of two, and a multiple of the device count when
sharded) so that a new batch of similar size reuses the compiled program. Padding
members are copies of member 0, flagged invalid (the mask of :func:`stack_models`),
and never reported. Stacking, padding and unstacking run on the host (NumPy) and
only transfer the result, so a new batch dispatches no XLA computation: nothing
here compiles.

Scale-out: :func:`candidate_mesh` builds a one-axis ``jax.sharding.Mesh`` named
``"cand"`` over ``jax.devices()``; :func:`shard_members` places every member array
with ``NamedSharding(mesh, PartitionSpec("cand"))`` and `jit` follows the data,
so each device trains its slice of candidates; the (small) data are replicated.
Across hosts, start every process with ``jax.distributed.initialize()`` (or
``jax.distributed.initialize(coordinator_address, num_processes, process_id)``)
before any other JAX call; ``jax.devices()`` then lists the devices of all hosts,
the same ``candidate_mesh()`` spans them, and each process runs the same
``fit(...)`` call on the same inputs (SPMD). Results are gathered to every host
with ``jax.experimental.multihost_utils.process_allgather`` before they are
written; only process 0 should write files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = [
    "MEMBER_AXIS",
    "bucket_size",
    "candidate_mesh",
    "group_key",
    "pad_members",
    "replicate",
    "shard_members",
    "stack_members",
    "stack_models",
    "to_device",
    "unstack_member",
]

MEMBER_AXIS = "cand"


def bucket_size(n: int, *, minimum: int = 1, multiple_of: int = 1) -> int:
    """The padded batch size for `n` candidates: the next power of two (>= `minimum`),
    so batches of 5..8 share one compilation, 9..16 another, and so on; rounded up to a
    multiple of `multiple_of` (the device count, when the batch is sharded)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if multiple_of < 1:
        raise ValueError(f"multiple_of must be >= 1, got {multiple_of}")
    size = max(int(minimum), 1)
    while size < n:
        size *= 2
    return -(-size // multiple_of) * multiple_of


def group_key(model) -> tuple:
    """What decides whether two models share compiled programs: the pytree structure
    (static fields included) and the shape and dtype of every array leaf. Hashable."""
    arrays, static = eqx.partition(model, eqx.is_array)
    leaves = jax.tree.leaves(arrays)
    return (jax.tree.structure(arrays), jax.tree.structure(static),
            tuple((tuple(x.shape), str(x.dtype)) for x in leaves))


def _host(x):
    return np.asarray(x)


def to_device(x, dtype=None):
    """A host array on the default device with ``jax.device_put`` (``jnp.asarray`` of a
    NumPy array compiles a small conversion program per shape and dtype)."""
    return jax.device_put(np.asarray(x, dtype))


def stack_members(models: Sequence[Any]):
    """Stack a list of pytrees with identical structure on a new leading axis (host-side).

    Non-array leaves must be equal across the list (they are the static topology);
    models of different topologies raise ``ValueError``.
    """
    models = list(models)
    if not models:
        raise ValueError("stack_members needs at least one model")
    dyn0, static0 = eqx.partition(models[0], eqx.is_array)
    treedef0 = jax.tree.structure(dyn0)
    shapes0 = [x.shape for x in jax.tree.leaves(dyn0)]
    dyns = [dyn0]
    for i, m in enumerate(models[1:], 1):
        dyn, static = eqx.partition(m, eqx.is_array)
        if jax.tree.structure(dyn) != treedef0 or not eqx.tree_equal(static, static0):
            raise ValueError(
                f"member {i} has a different topology (pytree structure or static fields) "
                "from member 0; group candidates by topology (Structure.topology_key() or "
                "leads_jax.batching.group_key) before stacking"
            )
        shapes = [x.shape for x in jax.tree.leaves(dyn)]
        if shapes != shapes0:
            raise ValueError(f"member {i} has leaf shapes {shapes} != member 0's {shapes0}")
        dyns.append(dyn)
    stacked = jax.tree.map(lambda *xs: to_device(np.stack([_host(x) for x in xs])), *dyns)
    return eqx.combine(stacked, static0)


def pad_members(stacked, n: int, size: int):
    """Pad the member axis from `n` to `size` with copies of member 0 (host-side)."""
    if size < n:
        raise ValueError(f"size {size} is smaller than the number of members {n}")
    if size == n:
        return stacked

    def pad(x):
        if not eqx.is_array(x):
            return x
        h = _host(x)
        extra = np.broadcast_to(h[:1], (size - n,) + h.shape[1:])
        return to_device(np.concatenate([h, extra], axis=0))

    return jax.tree.map(pad, stacked)


def stack_models(models: Sequence[Any], size: int | None = None):
    """Stack models of one topology into a batch padded to `size` (default:
    ``bucket_size(len(models))``) with copies of the first model.

    **Returns:** ``(stacked, mask)``: every array leaf of ``stacked`` has a leading axis
    of length `size`; ``mask`` (bool, ``(size,)``) is True for real members.
    """
    models = list(models)
    if not models:
        raise ValueError("stack_models needs at least one model")
    size = bucket_size(len(models)) if size is None else int(size)
    stacked = pad_members(stack_members(models), len(models), size)
    return stacked, to_device(np.arange(size) < len(models))


def unstack_member(stacked, i: int):
    """Member `i` of a stacked pytree (array leaves indexed on axis 0, host-side)."""
    return jax.tree.map(lambda x: to_device(_host(x)[i]) if eqx.is_array(x) else x, stacked)


def candidate_mesh(devices=None) -> Mesh:
    """A one-axis mesh named ``"cand"`` over `devices` (default: all of ``jax.devices()``)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (MEMBER_AXIS,), axis_types=(AxisType.Auto,))


def shard_members(tree, mesh: Mesh | None):
    """Place every array leaf of `tree` sharded on its leading (member) axis."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(MEMBER_AXIS))
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)


def replicate(tree, mesh: Mesh | None):
    """Place every array leaf of `tree` replicated over `mesh`."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if eqx.is_array(x) else x, tree)
