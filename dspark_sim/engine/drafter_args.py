"""The hidden-state drafters' configuration: their kinds and the shape of one drafter.

Its own module so that the drafter's layers (`drafter_layers`) and the drafter (`drafters`) both read it
without importing each other."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from dspark_sim.config.shorthand import ENGINE_DRAFTER_KINDS

#: the hidden-state drafters, by the simulator's drafter kind (the draft model is the fourth engine drafter)
KINDS = tuple(k for k in ENGINE_DRAFTER_KINDS if k != "draft_model")
#: the kinds that draft their whole block in one pass (the MTP head chains one pass per token)
ONE_PASS_KINDS = ("parallel_block", "dspark")


@dataclass
class DrafterArgs:
    kind: str
    dim: int  # the target's hidden width (the drafter works at the same width)
    vocab_size: int
    n_layers: int = 1
    n_heads: int = 4
    ffn_hidden: int = 512
    block_size: int = 6  # draft tokens per block (parallel_block/dspark) and unrolled training depth (mtp)
    window: int = 32  # context positions read from the target's hidden states
    markov_rank: int = 64
    conf_hidden: int = 64
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown drafter kind {self.kind!r}; known: {KINDS}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError("dim must split into n_heads even-sized heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def one_pass(self) -> bool:
        """Drafts the whole block in one pass (parallel_block, dspark)."""
        return self.kind in ONE_PASS_KINDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DrafterArgs:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
