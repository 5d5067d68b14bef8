"""The rows of a fit batch: the one place where :func:`iia_jax.fit` splits it (docs/design.md §4).

A fit batch is a pytree whose leaves share a leading axis of ``B`` rows: the initial states
``x_T`` and, for a conditional denoiser ``D(x, sigma, cond)``, the conditions.  Every split the fit
makes is a method of :class:`Layout`, applied to every leaf alike, so conditions and a sharding of
the rows over devices cannot disagree about which row is which.

- **Padding.** The batch is padded at its end (copies of row 0) to ``padded`` rows, a multiple of
  ``group * chunks * shards``; padded rows have weight 0 everywhere.
- **Held-out rows.** In every complete group of ``group`` consecutive rows, ``hold`` rows are held
  out (``hold / group`` is ``holdout`` as a fraction with denominator at most 32: 0.25 is one row
  in four).  Which ones is drawn per group from ``fold_in(key, group index)``, or the last
  ``hold`` of each group without a key.  The choice depends on the row index alone, so it is the
  same for every chunking and on any number of devices, and it is stratified: a batch sorted by
  label holds out rows of every label.  Rows of a trailing incomplete group are training rows.
  Shuffling the whole batch instead would move every row between devices.
- **Chunks.** Chunk ``c`` holds the groups ``c, c + C, c + 2C, ...`` (strided), laid out as
  ``[C, chunk_rows, ...]``; its held-out rows are the sub-view ``[C, chunk_hold, ...]``.  The fit
  reads the rows one chunk at a time (:meth:`FitRows.chunk`), never as a stacked copy.  On a batch
  sharded along its rows each device holds its own share of every chunk: chunking is per device,
  and no layout step moves samples between devices.
"""
from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

MAX_GROUP = 32  # the held-out fraction is rounded to k / g with g <= MAX_GROUP


class Sharding(NamedTuple):
    """How the rows are spread over devices: a mesh and the name(s) of its data axis."""

    mesh: Any
    axis: Any   # a mesh axis name, or a tuple of names

    @property
    def shards(self) -> int:
        names = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        return int(np.prod([self.mesh.shape[n] for n in names]))

    def rows_at(self, position: int, ndim: int) -> NamedSharding:
        """A sharding of an ``ndim`` array whose rows are on axis ``position``."""
        spec = [None] * ndim
        spec[position] = self.axis
        return NamedSharding(self.mesh, PartitionSpec(*spec))


def batch_sharding(x, mesh=None, batch_axis="data") -> Sharding | None:
    """The :class:`Sharding` of a batch: from ``mesh``/``batch_axis`` if given, else read off
    ``x`` when it is a ``NamedSharding`` along its leading axis; None on one device."""
    if mesh is not None:
        names = batch_axis if isinstance(batch_axis, tuple) else (batch_axis,)
        missing = [n for n in names if n not in mesh.shape]
        if missing:
            raise ValueError(f"batch_axis {batch_axis!r} is not an axis of the mesh (axes "
                             f"{tuple(mesh.shape)})")
        return Sharding(mesh, batch_axis)
    sharding = getattr(x, "sharding", None)
    if isinstance(x, jax.core.Tracer) or not isinstance(sharding, NamedSharding):
        return None
    spec = tuple(sharding.spec) + (None,) * (x.ndim - len(sharding.spec))
    if spec[0] is None or any(s is not None for s in spec[1:]):
        return None if all(s is None for s in spec) else _unsupported(spec)
    found = Sharding(sharding.mesh, spec[0])
    return found if found.shards > 1 else None


def _unsupported(spec):
    raise ValueError(f"x_T is sharded as {spec}; only the leading (batch) axis may be sharded")


def check_cond(cond, batch: int, name: str = "cond") -> None:
    """Conditions are a pytree of numeric arrays, each with a leading axis of ``batch`` rows."""
    if cond is None:
        return
    leaves = jax.tree_util.tree_leaves(cond)
    if not leaves:
        raise ValueError(f"{name} is an empty pytree; pass None for an unconditional denoiser")
    for leaf in leaves:
        shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
        if shape is None or dtype is None:
            raise TypeError(f"{name} leaves must be arrays with a leading batch axis, got "
                            f"{type(leaf).__name__}")
        if not (jnp.issubdtype(dtype, jnp.number) or jnp.issubdtype(dtype, jnp.bool_)):
            raise TypeError(f"{name} leaves must be numeric arrays, got dtype {dtype}")
        if len(shape) == 0 or shape[0] != batch:
            raise ValueError(f"{name} leaves need a leading axis of {batch} rows (one per sample "
                             f"of x_T), got shape {tuple(shape)}")


def shard_rows(tree, sharding: Sharding | None):
    """Place every leaf's rows along the data axis (``device_put`` outside jit, a sharding
    constraint inside); the tree itself when there is no sharding."""
    if sharding is None:
        return tree

    def place(a):
        if a.shape[0] % sharding.shards:
            raise ValueError(f"a batch of {a.shape[0]} rows cannot be split evenly over "
                             f"{sharding.shards} devices along {sharding.axis!r}; use a multiple of "
                             f"{sharding.shards} (fit pads for you when given a host array and mesh=)")
        target = sharding.rows_at(0, a.ndim)
        if isinstance(a, jax.core.Tracer):
            return jax.lax.with_sharding_constraint(a, target)
        return jax.device_put(a, target)

    return jax.tree_util.tree_map(place, tree)


def holdout_fraction(holdout: float) -> tuple[int, int]:
    """``(hold, group)``: ``holdout`` as the nearest fraction with denominator <= MAX_GROUP."""
    if holdout == 0:
        return 0, 1
    frac = Fraction(holdout).limit_denominator(MAX_GROUP)
    return frac.numerator, frac.denominator


class Layout(NamedTuple):
    """Padding, held-out rows and chunks of a batch of ``rows`` (see the module docstring)."""

    rows: int
    group: int
    hold: int
    chunks: int
    padded: int
    sharding: Sharding | None = None
    chunked: bool = False       # a chunk_size was given: the rows go chunk by chunk, even one chunk

    @property
    def whole(self) -> bool:
        """One pass over every row on one device (no ``chunk_size``, no sharding): only then may
        a fit keep every row's features and solve from the rows themselves.  With ``chunk_size``
        even a single chunk takes the chunked path, so fits of any batch with the same chunk run
        the same compiled programs (docs/scaling.md)."""
        return not self.chunked and self.sharding is None

    @property
    def groups_per_chunk(self) -> int:
        return self.padded // (self.group * self.chunks)

    @property
    def chunk_rows(self) -> int:
        return self.groups_per_chunk * self.group

    @property
    def chunk_hold(self) -> int:
        return self.groups_per_chunk * self.hold

    @property
    def hold_rows(self) -> int:
        """Real held-out rows: ``hold`` in each complete group."""
        return (self.rows // self.group) * self.hold

    @property
    def train_rows(self) -> int:
        return self.rows - self.hold_rows

    # -------------------------------------------------------------------- views of the rows

    def pad(self, tree):
        """Every leaf padded with copies of its row 0 to ``padded`` rows."""
        extra = self.padded - self.rows

        def pad_leaf(a):
            return jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]) if extra else a

        return jax.tree_util.tree_map(pad_leaf, tree)

    def to_chunks(self, tree, row_axis: int = 0):
        """``[..., padded, ...] -> [..., C, chunk_rows, ...]`` with the rows at ``row_axis``."""
        def split(a):
            lead = a.shape[:row_axis]
            a = a.reshape(lead + (self.groups_per_chunk, self.chunks, self.group) + a.shape[row_axis + 1:])
            a = jnp.moveaxis(a, row_axis + 1, row_axis)
            return self.constrain(a.reshape(lead + (self.chunks, self.chunk_rows) + a.shape[row_axis + 3:]),
                                   row_axis + 1)

        return jax.tree_util.tree_map(split, tree)

    def holdout_of_chunks(self, tree, positions, row_axis: int = 1):
        """The held-out rows ``[..., C, chunk_hold, ...]`` of chunked leaves ``[..., C, chunk_rows, ...]``."""
        pos = jnp.moveaxis(positions.reshape(self.groups_per_chunk, self.chunks, self.hold), 1, 0)

        def take(a):
            lead, tail = a.shape[:row_axis - 1], a.shape[row_axis + 1:]
            g = a.reshape(lead + (self.chunks, self.groups_per_chunk, self.group) + tail)
            idx = pos.reshape((1,) * len(lead) + pos.shape + (1,) * len(tail))
            held = jnp.take_along_axis(g, idx, axis=len(lead) + 2)
            return self.constrain(held.reshape(lead + (self.chunks, self.chunk_hold) + tail), row_axis)

        return jax.tree_util.tree_map(take, tree)

    def holdout_of_chunk(self, a, positions, chunk: int):
        """The held-out rows ``[chunk_hold, ...]`` of one chunk's rows ``a [chunk_rows, ...]``
        (chunk ``chunk`` of :meth:`holdout_of_chunks`, without the other chunks in memory)."""
        pos = positions.reshape(self.groups_per_chunk, self.chunks, self.hold)[:, chunk]
        groups = a.reshape((self.groups_per_chunk, self.group) + a.shape[1:])
        held = jnp.take_along_axis(groups, pos.reshape(pos.shape + (1,) * (a.ndim - 1)), axis=1)
        return held.reshape((self.chunk_hold,) + a.shape[1:])

    def constrain(self, a, row_axis):
        """``a`` with its rows at ``row_axis`` placed on the layout's sharding (as is without one)."""
        if self.sharding is None:
            return a
        return jax.lax.with_sharding_constraint(a, self.sharding.rows_at(row_axis, a.ndim))

    # -------------------------------------------------------------------- weights

    def holdout_positions(self, key=None):
        """``[padded // group, hold]`` in-group positions of the held-out rows (sorted)."""
        n_groups = self.padded // self.group
        if key is None:
            last = jnp.arange(self.group - self.hold, self.group)
            return jnp.broadcast_to(last, (n_groups, self.hold))

        def draw(j):
            u = jax.random.uniform(jax.random.fold_in(key, j), (self.group,))
            return jnp.sort(jnp.argsort(u)[:self.hold])

        return jax.vmap(draw)(jnp.arange(n_groups))

    def split_indices(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """``(train, held)``: host indices of the real training and held-out rows, given the
        held-out ``positions`` (:meth:`holdout_positions`; tiny, copied to the host)."""
        pos = np.asarray(positions)[: self.rows // self.group]
        held = (np.arange(pos.shape[0])[:, None] * self.group + pos).reshape(-1)
        train = np.setdiff1d(np.arange(self.rows), held)
        return train, held

    def weights(self, positions, dtype):
        """Row weights ``[2, padded]``: training rows, held-out rows (0 on padding)."""
        n_groups = self.padded // self.group
        held = jnp.zeros((n_groups, self.group), bool)
        held = jax.vmap(lambda h, p: h.at[p].set(True))(held, positions)
        complete = jnp.arange(n_groups) < self.rows // self.group
        held = (held & complete[:, None]).reshape(-1)
        real = jnp.arange(self.padded) < self.rows
        return jnp.stack([real & ~held, held]).astype(dtype)


def make_layout(rows: int, holdout: float, chunk_size: int | None,
                sharding: Sharding | None = None) -> Layout:
    """The :class:`Layout` of ``rows`` samples: chunks of at most about ``chunk_size`` rows
    (whole groups, a multiple of the device count), padded as little as that allows."""
    hold, group = holdout_fraction(holdout)
    shards = 1 if sharding is None else sharding.shards
    unit = group * shards
    chunks = 1 if chunk_size is None else max(1, math.ceil(rows / max(chunk_size, unit)))
    padded = math.ceil(rows / (unit * chunks)) * unit * chunks
    return Layout(rows, group, hold, chunks, padded, sharding, chunk_size is not None)


class FitRows(NamedTuple):
    """A fit batch after :func:`split_batch`: its rows, read chunk by chunk (:meth:`chunk`,
    :meth:`held`: gathered when asked for, so the fit never holds a chunked copy of the whole
    batch), row weights ``[C, 2, b]`` (training, held-out), the held-out rows' weights
    ``hold_weights [C, h]`` (0 on padding) and the in-group held-out ``positions``.  ``source`` is
    ``(x_T, cond)`` as given, or padded and placed on the devices for a host batch with ``mesh=``."""

    layout: Layout
    source: Any
    weights: jax.Array
    hold_weights: jax.Array
    positions: jax.Array

    def chunk(self, c: int):
        """``(x, cond)`` of chunk ``c``: ``[chunk_rows, ...]`` (padding: copies of row 0)."""
        return _take(self.source, self.positions, jnp.int32(c), layout=self.layout, held=False)

    def cond_of(self, c: int):
        """The conditions of chunk ``c`` alone (None for an unconditional batch)."""
        cond = self.source[1]
        return None if cond is None else _take(cond, self.positions, jnp.int32(c), layout=self.layout, held=False)

    def held(self, c: int):
        """``(x, cond)`` of chunk ``c``'s held-out rows ``[chunk_hold, ...]``."""
        return _take(self.source, self.positions, jnp.int32(c), layout=self.layout, held=True)

    def holdout_indices(self) -> np.ndarray:
        """Indices into the batch of the real held-out rows."""
        return self.layout.split_indices(to_host(self.positions))[1]


@functools.partial(jax.jit, static_argnames=("layout", "held"))
def _take(source, positions, c, *, layout: Layout, held: bool):
    """Chunk ``c``'s rows (``held``: its held-out rows) of every leaf of ``source``, in the order of
    :meth:`Layout.to_chunks` and :meth:`Layout.holdout_of_chunks` (compiled once per layout; the
    chunk is data).  On one device a gather from the unpadded rows, padding pointing at row 0; on
    a sharding, a slice of the padded rows that every device takes from its own share."""
    def of_chunk(a):    # [padded // group * ...] -> chunk c's [groups_per_chunk, ...], laid out as the rows
        a = a.reshape((layout.groups_per_chunk, layout.chunks) + a.shape[1:])
        return jax.lax.dynamic_index_in_dim(a, c, axis=1, keepdims=False)

    g = layout.groups_per_chunk
    offsets = of_chunk(positions) if held else jnp.broadcast_to(jnp.arange(layout.group), (g, layout.group))
    if layout.sharding is None:
        groups = jnp.arange(g) * layout.chunks + c
        idx = (groups[:, None] * layout.group + offsets).reshape(-1)
        idx = jnp.where(idx < layout.rows, idx, 0)
        return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), source)

    def local(a):
        rows = of_chunk(a.reshape((-1, layout.group) + a.shape[1:]))            # [g, group, ...]
        rows = jnp.take_along_axis(rows, offsets.reshape(offsets.shape + (1,) * (a.ndim - 1)), axis=1)
        return layout.constrain(rows.reshape((-1,) + a.shape[1:]), 0)

    return jax.tree_util.tree_map(local, source)


def to_host(a) -> np.ndarray:
    """A device array on the host.  Across processes: a replicated one from this process's copy,
    a sharded one (e.g. one scalar a row) gathered from all processes."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    if a.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def split_batch(x_T, cond, holdout: float, chunk_size: int | None, key=None, mesh=None,
                batch_axis="data") -> FitRows:
    """Pad, shard, chunk and split the rows ``(x_T, cond)`` of a fit: the one place a fit batch is
    split (module docstring).  Refuses layouts that cannot be fitted, naming the argument."""
    sharding = batch_sharding(x_T, mesh, batch_axis)
    layout = make_layout(x_T.shape[0], holdout, chunk_size, sharding)
    if layout.hold and layout.hold_rows == 0:
        raise ValueError(f"holdout={holdout} holds out {layout.hold} row(s) in every group of "
                         f"{layout.group}, but x_T has only {layout.rows} rows; pass at least "
                         f"{layout.group} rows or holdout=0")
    if layout.train_rows < 1:
        raise ValueError(f"x_T has {layout.rows} samples; with holdout={holdout} none is left to fit on")
    if sharding is not None and mesh is None and layout.padded != layout.rows:
        raise ValueError(f"x_T is sharded over {sharding.shards} devices; with holdout={holdout} and "
                         f"chunk_size={chunk_size} ({layout.chunks} chunks) the fit needs a multiple of "
                         f"{layout.group * sharding.shards * layout.chunks} "
                         f"rows, got {layout.rows}: pass a host array with mesh= (padded with "
                         "zero-weight rows for you) or trim the batch")
    source = (x_T, cond)
    if mesh is not None:          # a host batch: pad with zero-weight rows, then shard
        source = shard_rows(layout.pad(source), sharding)
    return FitRows(layout, source, *_weights(key, layout=layout, dtype=jnp.dtype(x_T.dtype)))


@functools.partial(jax.jit, static_argnames=("layout", "dtype"))
def _weights(key, *, layout: Layout, dtype):
    """The chunked row weights, the held-out rows' weights and the held-out positions of
    :func:`split_batch` (compiled once per layout)."""
    positions = layout.holdout_positions(key)
    weights = layout.to_chunks(layout.weights(positions, dtype), row_axis=1)
    hold_w = layout.holdout_of_chunks(weights[1], positions)
    return jnp.swapaxes(weights, 0, 1), hold_w, positions


def split_indices(rows: int, holdout: float, key=None) -> tuple[np.ndarray, np.ndarray]:
    """``(train, held)`` indices of ``rows`` rows: the rows :func:`split_batch` trains on and
    holds out with this ``holdout`` and ``key`` (whatever the chunking or devices)."""
    layout = make_layout(rows, holdout, None)
    return layout.split_indices(layout.holdout_positions(key))


__all__ = ["Layout", "Sharding", "FitRows", "make_layout", "split_batch", "split_indices",
           "batch_sharding", "shard_rows", "check_cond", "holdout_fraction", "to_host"]
