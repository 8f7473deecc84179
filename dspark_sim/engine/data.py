"""Training text every machine has offline: the running Python's standard-library source, as bytes.

Byte-level tokens (0-255) plus a few specials; the vocabulary is padded to 264 (a multiple of 8).
Everything is deterministic: files are sorted by relative path, a fixed stride picks them when the
corpus is capped, and every `eval_every`-th file (in that order) is held out for evaluation.
Different Python versions ship different sources, so corpora (and trained weights) differ between
Python versions, never between runs on one machine.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

BOS = 256  # starts every file
EOS = 257  # reserved (generation stops on it if a caller asks)
VOCAB_SIZE = 264
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


def encode(text: str | bytes) -> list[int]:
    return list(text.encode("utf-8") if isinstance(text, str) else text)


def decode(tokens: list[int]) -> str:
    """Bytes back to text; specials dropped, invalid UTF-8 replaced (a byte model can split characters)."""
    return bytes(t for t in tokens if 0 <= t < 256).decode("utf-8", errors="replace")


def stdlib_files(root: Path | None = None) -> list[Path]:
    """The standard library's .py files (tests and third-party packages left out), sorted."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


@dataclass
class Corpus:
    train: Tensor  # int64 tokens, files joined, each starting with BOS
    eval: Tensor
    train_files: int
    eval_files: int


def load_corpus(max_bytes: int | None = None, eval_every: int = 20, root: Path | None = None) -> Corpus:
    """Read the corpus. `max_bytes` caps the total by taking every k-th file (spread over the library)."""
    files = stdlib_files(root)
    if not files:
        raise RuntimeError(f"no Python source files found under {root or sysconfig.get_paths()['stdlib']}")
    if max_bytes:
        total = sum(p.stat().st_size for p in files)
        stride = max(1, total // max_bytes)
        picked, size = [], 0
        for p in files[::stride]:
            if size >= max_bytes:
                break
            picked.append(p)
            size += p.stat().st_size
        files = picked
    train_parts: list[list[int]] = []
    eval_parts: list[list[int]] = []
    for i, p in enumerate(files):
        part = [BOS, *p.read_bytes()]
        (eval_parts if i % eval_every == eval_every - 1 else train_parts).append(part)
    if not eval_parts:  # tiny corpora: hold out the last file
        eval_parts.append(train_parts.pop())

    def join(parts: list[list[int]]) -> Tensor:
        return torch.tensor([t for part in parts for t in part], dtype=torch.long)

    return Corpus(join(train_parts), join(eval_parts), len(train_parts), len(eval_parts))


def random_batch(data: Tensor, batch: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`batch` random windows (inputs, next-token targets) drawn with `generator`."""
    starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)
    win = data[idx]
    return win[:, :-1], win[:, 1:]


def fixed_batches(data: Tensor, n: int, batch: int, seq_len: int) -> list[tuple[Tensor, Tensor]]:
    """Evenly spaced windows: the same evaluation set every time."""
    count = n * batch
    span = max(len(data) - seq_len - 1, 1)
    starts = torch.linspace(0, span - 1, count).long()
    idx = starts[:, None] + torch.arange(seq_len + 1)
    win = data[idx.clamp_max(len(data) - 1)]
    return [(win[i * batch:(i + 1) * batch, :-1], win[i * batch:(i + 1) * batch, 1:]) for i in range(n)]


def held_out_prompts(corpus: Corpus, n: int, length: int = 64) -> list[list[int]]:
    """`n` prompts: evenly spaced `length`-byte windows of the held-out files (never trained on)."""
    data = corpus.eval
    starts = torch.linspace(0, len(data) - length - 1, n).long().tolist()
    return [data[s:s + length].tolist() for s in starts]
