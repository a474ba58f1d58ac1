"""Members (candidate x restart) on one axis: bucket padding, stacking, sharding.

Every candidate of one topology compiles to a pytree with identical structure and
leaf shapes, so a group is one stacked pytree whose array leaves carry a leading
*member* axis. The member count is padded up to a bucket size (powers of two, and
a multiple of the device count when sharded) so that a new batch of similar size
reuses the compiled program. Padding members are copies of member 0, flagged
invalid, and never reported.

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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MEMBER_AXIS = "cand"


def stack_members(models):
    """Stack a list of pytrees with identical structure on a new leading axis.

    Non-array leaves must be equal across the list (they are the static topology).
    """
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
                "from member 0; group candidates by topology_key before stacking"
            )
        shapes = [x.shape for x in jax.tree.leaves(dyn)]
        if shapes != shapes0:
            raise ValueError(f"member {i} has leaf shapes {shapes} != member 0's {shapes0}")
        dyns.append(dyn)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *dyns)
    return eqx.combine(stacked, static0)


def unstack_member(stacked, i: int):
    """Member `i` of a stacked pytree (array leaves indexed on axis 0)."""
    return jax.tree.map(lambda x: x[i] if eqx.is_array(x) else x, stacked)


def pad_members(stacked, n: int, size: int):
    """Pad the member axis from `n` to `size` with copies of member 0."""
    if size == n:
        return stacked

    def pad(x):
        if not eqx.is_array(x):
            return x
        extra = jnp.broadcast_to(x[:1], (size - n,) + x.shape[1:])
        return jnp.concatenate([x, extra], axis=0)

    return jax.tree.map(pad, stacked)


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
