"""Engine traces: what the real engine measured, step by step and request by request, as JSONL.

One module, pydantic only (no torch), because the engine writes these files and the simulator reads
them: a field renamed here is renamed for both. Each line is one record with a `kind`:

- "meta": what produced the trace (models, policy, sampling) and its headline figures;
- "step": one decode step of a batch (per-sequence drafted / verified / accepted and confidences);
- "request": one request's whole history (per step: where its output stood, verified, accepted).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from dspark_sim.config.io import write_atomic


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceMeta(_Record):
    """Header: where the trace came from (free-form details in `info`)."""

    kind: Literal["meta"] = "meta"
    source: str = "dspark-sim engine"
    info: dict[str, Any] = Field(default_factory=dict)


class StepRecord(_Record):
    """One decode step of a batch. Lists are per sequence, in batch order; times in seconds."""

    kind: Literal["step"] = "step"
    step: int = Field(ge=0)
    batch_size: int = Field(ge=0)
    draft_time_s: float = Field(ge=0.0)
    verify_time_s: float = Field(ge=0.0)
    seq_id: list[int]
    context_len: list[int] = Field(description="tokens in each sequence's KV cache when the step began")
    drafted: list[int]
    verified: list[int] = Field(description="prefix of the drafted tokens sent to the target")
    accepted: list[int] = Field(description="verified draft tokens accepted (the bonus/correction not counted)")
    confidences: list[list[float]] = Field(
        default_factory=list, description="per sequence, the drafter's confidence c_k of each drafted token"
    )

    @model_validator(mode="after")
    def _lengths(self) -> StepRecord:
        n = self.batch_size
        for name in ("seq_id", "context_len", "drafted", "verified", "accepted"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries, batch_size is {n}")
        if self.confidences and len(self.confidences) != n:
            raise ValueError("confidences must have one list per sequence")
        return self


class RequestRecord(_Record):
    """One request's decode history; the lists run over the steps the request took part in."""

    kind: Literal["request"] = "request"
    request_id: int | str
    prompt_len: int = Field(ge=0)
    output_len: int = Field(ge=0)
    step_start: list[int] = Field(
        default_factory=list,
        description="output position when each step began: 0-based index of the first token the step adds "
        "(prefill produced output token 0, so the first step starts at 1)",
    )
    verified: list[int] = Field(default_factory=list)
    accepted: list[int] = Field(default_factory=list)
    confidences: list[list[float]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _lengths(self) -> RequestRecord:
        n = len(self.step_start)
        if len(self.verified) != n or len(self.accepted) != n:
            raise ValueError("step_start, verified and accepted must have one entry per step")
        if self.confidences and len(self.confidences) != n:
            raise ValueError("confidences must have one list per step")
        return self

    @property
    def yields(self) -> list[int]:
        """Tokens each step added to the output (accepted drafts + the bonus/correction token)."""
        return [a + 1 for a in self.accepted]


TraceRecord = Annotated[TraceMeta | StepRecord | RequestRecord, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[TraceMeta | StepRecord | RequestRecord] = TypeAdapter(TraceRecord)


def write_trace(path: str | os.PathLike[str], records: Iterable[BaseModel]) -> Path:
    """Write records as JSONL atomically (`io.write_atomic`)."""
    return write_atomic(path, "".join(rec.model_dump_json() + "\n" for rec in records))


def parse_record(data: dict[str, Any] | str) -> TraceMeta | StepRecord | RequestRecord:
    if isinstance(data, str):
        data = json.loads(data)
    return _ADAPTER.validate_python(data)


def read_trace(path: str | os.PathLike[str]) -> list[TraceMeta | StepRecord | RequestRecord]:
    """All records of a trace file, blank lines skipped. Raises ValueError naming the bad line."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(parse_record(line))
            except ValueError as err:  # json and pydantic errors are both ValueErrors
                first = str(err).splitlines()[0]
                raise ValueError(f"{path}:{lineno}: not a trace record ({first})") from err
    return out
