"""A pass as the cost model sees it: the few batch aggregates its cost depends on (`BatchShape`), and
its cost with where the time goes (`PassCost`).

A batch enters only through these aggregates, so a ragged batch from the simulator and a grid of
100,000 uniform batches from `predict` go through the same arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from dspark_sim.config.results import Bound

BOUNDS: tuple[Bound, ...] = ("compute", "memory", "communication", "overhead")


@dataclass(frozen=True)
class BatchShape:
    """What a pass's cost depends on. Each field is a number or a numpy array (broadcast together).

    num_seqs: sequences in the pass; query_tokens: new tokens over all sequences (sum of q_i);
    kv_tokens / kv_tokens_window: cached + new tokens attended, summed over sequences, for full and
    sliding-window layers; attn_pairs / attn_pairs_window: (query, key) pairs, sum of
    q_i * (ctx_i + (q_i + 1) / 2) (causal within the new tokens).
    """

    num_seqs: np.ndarray | float
    query_tokens: np.ndarray | float
    kv_tokens: np.ndarray | float
    kv_tokens_window: np.ndarray | float
    attn_pairs: np.ndarray | float
    attn_pairs_window: np.ndarray | float


def uniform_batch(num_seqs, query_per_seq, context_len, window: int | None = None) -> BatchShape:
    """A batch of `num_seqs` sequences each with `context_len` cached and `query_per_seq` new tokens."""
    b = np.asarray(num_seqs, dtype=float)
    q = np.asarray(query_per_seq, dtype=float)
    c = np.asarray(context_len, dtype=float)
    kv = c + q
    pairs = q * (c + (q + 1.0) / 2.0)
    if window:
        ckw = np.minimum(c, window)
        kvw = np.minimum(kv, window)
        pairs_w = q * (ckw + (q + 1.0) / 2.0)
    else:
        kvw, pairs_w = kv, pairs
    return BatchShape(b, b * q, b * kv, b * kvw, b * pairs, b * pairs_w)


def ragged_batch(query_lens, context_lens, window: int | None = None) -> BatchShape:
    """A real batch: per-sequence new-token counts and cached lengths (scalar aggregates)."""
    q = np.asarray(query_lens, dtype=float)
    c = np.asarray(context_lens, dtype=float)
    kv = c + q
    pairs = q * (c + (q + 1.0) / 2.0)
    if window:
        kvw = np.minimum(kv, window)
        pairs_w = q * (np.minimum(c, window) + (q + 1.0) / 2.0)
    else:
        kvw, pairs_w = kv, pairs
    return BatchShape(float(len(q)), q.sum(), kv.sum(), kvw.sum(), pairs.sum(), pairs_w.sum())


@dataclass(frozen=True)
class PassCost:
    """Time of one pass (or the sum of several) and where it goes. Fields are numbers or arrays."""

    time_s: np.ndarray | float
    compute_s: np.ndarray | float
    hbm_s: np.ndarray | float
    onchip_s: np.ndarray | float
    comm_s: np.ndarray | float
    overhead_s: np.ndarray | float
    flops: np.ndarray | float
    hbm_bytes: np.ndarray | float
    onchip_bytes: np.ndarray | float
    comm_bytes: np.ndarray | float

    @property
    def memory_s(self):
        return np.asarray(self.hbm_s) + np.asarray(self.onchip_s)

    def bound(self) -> np.ndarray:
        """Index into BOUNDS of the largest term, per element."""
        terms = np.stack(
            np.broadcast_arrays(self.compute_s, self.memory_s, self.comm_s, self.overhead_s), axis=0
        )
        return np.argmax(terms, axis=0)

    def __add__(self, other: PassCost) -> PassCost:
        return PassCost(**{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)})

    def scaled(self, k) -> PassCost:
        return PassCost(**{f.name: getattr(self, f.name) * k for f in fields(self)})

    def at(self, index) -> PassCost:
        """One element of a vectorised cost (scalars broadcast)."""
        names = [f.name for f in fields(self)]
        arrays = np.broadcast_arrays(*[np.asarray(getattr(self, n), dtype=float) for n in names])
        return PassCost(**{n: float(a[index]) if a.ndim else float(a) for n, a in zip(names, arrays, strict=True)})


ZERO_COST = PassCost(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
