"""The drafter table: the bundled engine's drafters measured on one device (`dspark-sim engine drafters
table`), which `dspark-sim validate --drafters` predicts.

Part of the one schema. A row is one temperature x batch x drafter configuration, labelled
`DRAFTER/POLICY` in the shorthand of `config.shorthand` (`dspark/dspark:5`, `mtp/fixed:1`, `baseline`).
Besides the rows, the table carries what the prediction needs from the same run (the SPS(B) tables
DSpark's scheduler used, each drafter loop's profiled step times) and what describes the drafters
(architecture, training, calibration teacher-forced and live).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from dspark_sim.config.errors import InputError, from_validation_error
from dspark_sim.config.io import read_json
from dspark_sim.config.shorthand import BASELINE, ShortPolicy, parse_drafter_config


class Doc(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DraftModelDescription(Doc):
    kind: Literal["draft_model"]
    layers: int
    dim: int
    params: int


class HeadDrafterDescription(Doc):
    """A drafter on the target's hidden states (engine.drafters.DrafterArgs, abridged)."""

    kind: Literal["mtp", "parallel_block", "dspark"]
    layers: int
    dim: int = Field(description="the target's hidden width, which the drafter works at")
    heads: int
    ffn: int
    block: int = Field(description="draft tokens per block (parallel_block, dspark) or unrolled training depth (mtp)")
    window: int = Field(description="context positions read from the target's hidden states")
    markov_rank: int | None = Field(description="rank of DSpark's Markov head (null for the others)")
    params: int = Field(description="trainable parameters (the shared embedding and output head not counted)")


DrafterDescription = Annotated[DraftModelDescription | HeadDrafterDescription, Field(discriminator="kind")]


class CalibrationSummary(Doc):
    """`engine.drafter_calibration.calibration_report`, rounded: the head's figures for DSpark only."""

    temperature: list[float] | None = None
    ece_before: list[float] | None = None
    ece_after: list[float] | None = None
    ece_before_all: float | None = None
    ece_after_all: float | None = None
    mean_conf_before: list[float] | None = None
    mean_conf_after: list[float] | None = None
    token_conf_ece_before: list[float]
    token_conf_ece_after: list[float]
    token_conf_ece_before_all: float
    token_conf_ece_after_all: float
    token_conf_temperature: list[float]
    expected_acceptance: list[float]
    samples: int


class HeadDrafterTraining(Doc):
    params: int
    train_time_s: float = Field(description="the drafter's own forward/backward/optimiser time")
    shared_target_time_s: float = Field(description="the target passes it shared with the drafters trained beside it")
    calibration_time_s: float
    steps: int
    alpha_t1_by_position_teacher_forced: list[float]
    greedy_match_by_position_teacher_forced: list[float]
    calibration_teacher_forced: dict[str, CalibrationSummary] = Field(description="by mode: sampled, greedy")


class DraftModelTraining(Doc):
    params: int
    train_time_s: float
    alpha_t1: float | None


class DrafterTableRow(Doc):
    temperature: float
    batch: int
    config: str = Field(description="DRAFTER/POLICY (config.shorthand), or 'baseline' for plain decoding")
    tau: float
    acceptance_by_position: list[float]
    per_user_tok_s: float
    throughput_tok_s: float = Field(description="decode tokens/s of the whole batch while every sequence generates")
    speedup: float = Field(description="over plain decoding at the same temperature and batch")
    batch_completion_per_user_tok_s: float = Field(description="first token to the static batch's last finish")
    prompt_batches: int = Field(description="batches of distinct prompts pooled into the row")
    step_ms: float | None
    verified_per_seq_step: float
    draft_ms_per_step: float
    verify_ms_per_step: float
    greedy_identical: bool | None = Field(description="T=0: the output equals plain decoding's (null when sampled)")

    @field_validator("config")
    @classmethod
    def _known_config(cls, text: str) -> str:
        try:
            parse_drafter_config(text)
        except InputError as err:
            raise ValueError(err.message) from None
        return text

    def drafter_and_policy(self, sps_table: dict[int, float] | None = None) -> tuple[str, ShortPolicy]:
        """(drafter kind, policy spec) of the row's label; `sps_table` feeds a DSpark scheduler."""
        return parse_drafter_config(self.config, field="config", sps_table=sps_table)

    @property
    def drafter(self) -> str:
        """The drafter kind, or 'baseline'."""
        return BASELINE if self.config == BASELINE else self.config.partition("/")[0]


class LiveCalibration(Doc):
    """ECE of the confidences the engine fed its policy against what then happened, per draft position."""

    ece_by_position: list[float | None]
    ece_all: float
    mean_conf_by_position: list[float | None]
    accept_rate_by_position: list[float | None]
    samples_by_position: list[int]


class MatchedPoint(Doc):
    batch: int
    throughput_tok_s: float
    per_user_tok_s: float
    baseline_per_user_at_same_throughput: float | None = Field(
        description="the other curve's per-user tok/s at this throughput (None outside its range)")
    per_user_gain_pct: float | None


class CurvePoint(Doc):
    batch: int
    tau: float
    per_user_tok_s: float
    throughput_tok_s: float


class DSparkCurvePoint(CurvePoint):
    verified_per_seq_step: float


class MatchedComparison(Doc):
    dspark_vs_mtp1_at_matched_throughput: list[MatchedPoint]
    dspark: list[DSparkCurvePoint]
    mtp1: list[CurvePoint]


class DrafterTable(Doc):
    preset: str
    seed: int
    threads: int = Field(description="torch threads of the measuring process")
    new_tokens: int
    prompt_len: int
    gamma: int = Field(description="the largest draft length of the table (fixed gamma, DSpark's gamma_max)")
    repeats: int
    timing: str
    drafters: dict[str, DrafterDescription]
    training: dict[str, HeadDrafterTraining | DraftModelTraining]
    rows: list[DrafterTableRow]
    live_calibration: dict[str, dict[str, LiveCalibration]] = Field(
        description="by drafter, then 'T=<t>' (and 'T=<t> uncalibrated' for DSpark's raw head)")
    comparison: dict[str, MatchedComparison] = Field(description="by 'T=<t>': DSpark against MTP-1")
    sps_tables: dict[str, dict[str, float]] = Field(
        description="'<drafter>@<batch>': verify steps per second by tokens per verify pass")
    loop_step_s: dict[str, list[float]] = Field(
        description="'<drafter>|<temperature>|<gamma>|<batch>': [before, after] the table, seconds")
    loop_step_s_note: str
    wall_s: float
    temperatures_modes: dict[str, int]
    command: str

    @model_validator(mode="after")
    def _drafters_named_by_kind(self) -> DrafterTable:
        for name, d in self.drafters.items():
            if name != d.kind:
                raise ValueError(f"drafter {name!r} describes kind {d.kind!r}")
        return self

    @property
    def cache_tokens(self) -> int:
        """The static cache every run of the table attends over: sized by the drafter loop for the largest
        gamma, as `engine.generate.cache_tokens(prompt_len, new_tokens, gamma)` (config cannot import it)."""
        return self.prompt_len + self.new_tokens + 2 * self.gamma + 2

    def sps_table(self, drafter: str, batch: int) -> dict[int, float] | None:
        """The SPS(B) table DSpark's scheduler used with this drafter at this batch, if measured."""
        return sps_table_of(self.sps_tables, drafter, batch)

    def loop_steps(self) -> dict[tuple[str, float, int, int], list[float]]:
        """The loop step times by (drafter, temperature, gamma, batch): [before, after] seconds."""
        return loop_steps_of(self.loop_step_s)


def sps_table_of(sps_tables: Mapping[str, Mapping[str, float]], drafter: str, batch: int) -> dict[int, float] | None:
    """`DrafterTable.sps_tables`' entry for this drafter and batch, keyed by tokens per verify pass."""
    table = sps_tables.get(f"{drafter}@{batch}")
    return None if table is None else {int(k): float(v) for k, v in table.items()}


def loop_steps_of(loop_step_s: Mapping[str, Sequence[float]]) -> dict[tuple[str, float, int, int], list[float]]:
    """`DrafterTable.loop_step_s` keyed by (drafter, temperature, gamma, batch)."""
    out = {}
    for key, v in loop_step_s.items():
        kind, t, g, b = key.split("|")
        out[(kind, float(t), int(g), int(b))] = list(v)
    return out


class PartialDrafterTable(Doc):
    """What a table run has measured so far, written after every batch size (a run stopped by a time
    limit keeps its rows); not a table `validate --drafters` reads."""

    partial: Literal[True]
    preset: str
    seed: int
    new_tokens: int
    prompt_len: int
    gamma: int
    repeats: int
    device: str
    rows: list[DrafterTableRow]
    wall_s: float


def table_json(doc: DrafterTable | PartialDrafterTable) -> str:
    """The document as written: the fields it was given (a calibration summary has the head's figures for
    DSpark only), one space of indent."""
    return json.dumps(doc.model_dump(exclude_unset=True), indent=1) + "\n"


def load_drafter_table(path: str | Path) -> DrafterTable:
    """The measured drafter table at `path`; anything else is one InputError line."""
    p = Path(path)
    raw: Any = read_json(p, "drafter table",
                         "measured drafter table not found (make one with `dspark-sim engine drafters table`)")
    if not isinstance(raw, dict):
        raise InputError(str(p), None, "expected a drafter table (a JSON object)")
    if raw.get("partial"):
        raise InputError(str(p), "partial", "a partial drafter table (its run stopped before the end): measure it "
                         "again")
    try:
        return DrafterTable.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(str(p), exc, data=raw) from None
