"""The stage contract: what every module in ``stages/`` implements (docs/architecture.md).

A stage maps input part *k* to output part *k* (lineage is by part id). The executor calls
:meth:`Stage.setup` once per actor, then :meth:`Stage.process_batch` on the rows of each
part, ``resources.batch_size`` rows at a time (``None``: the whole part in one call). Per
item a stage returns output rows, :class:`Rejected` rows (a filter's decision, with a
reason code), or raises (an ``_errors`` row; the part goes on). A source stage
(``input_schema is None``) lists its items in :meth:`Stage.plan` instead of reading a part;
a stage that aggregates over all parts (the shard index) implements :meth:`Stage.finalize`.

Modelled on NeMo Curator's stage contract (resources, ``setup`` once per worker, ``process``
/ ``process_batch``) and datatrove's filters (a drop carries a reason; nothing is lost).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class Resources(BaseModel):
    """What one actor of a stage needs, and how its work is batched: Ray logical
    ``num_cpus``/``num_gpus`` and a ``memory_bytes`` reservation per actor; ``batch_size`` rows
    per :meth:`Stage.process_batch` call (``None``: the whole part); ``concurrency`` caps the
    stage's parts in flight (``None``: as many as its actors); ``max_parts_waiting`` bounds the
    parts finished upstream and not yet started here (backpressure: upstream stops when full)."""
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_bytes: int | None = Field(None, ge=0)
    batch_size: int | None = Field(64, ge=1)
    concurrency: int | None = Field(None, ge=1)
    max_parts_waiting: int = Field(8, ge=1)


class StageConfig(BaseModel):
    """Base of every stage's config model; unknown keys are errors. ``resources`` overrides the
    stage's default :class:`Resources` and, with ``enabled`` and the fields in ``runtime_fields``
    (speed and placement, not results), stays out of the config hash. ``inherits`` maps another stage's
    section to fields this one takes from it when unset (applied as the config loads)."""
    model_config = ConfigDict(extra="forbid")
    runtime_fields: ClassVar[frozenset[str]] = frozenset()
    inherits: ClassVar[dict[str, frozenset[str]]] = {}

    resources: Resources | None = None
    enabled: bool = True  # false: the recipe runs without this stage (its neighbours must connect)

    def hash_payload(self) -> dict[str, Any]:
        """The settings that decide the stage's output."""
        return self.model_dump(mode="json", exclude={"resources", "enabled", *self.runtime_fields})


class Rejected(NamedTuple):
    """A row a filter dropped: ``reason`` is a short code counted in reports
    (``"wps_out_of_range"``), ``detail`` the specifics (``"wps=5.21 > 4"``)."""
    row: dict[str, Any]
    reason: str
    detail: str = ""


Result = list  # list[dict | Rejected]: what one input row became


@dataclass(frozen=True)
class Histogram:
    """A histogram in the stage report: ``compute`` turns the ``columns`` of the kept rows into
    the values (default: the one column as it is)."""
    label: str
    columns: tuple[str, ...]
    compute: Callable[[pa.Table], pa.Array] | None = None


@dataclass(frozen=True)
class Output:
    """Something a stage publishes beyond its part files (e.g. ``kind="shards"``: a folder,
    root-relative ``path``, with ``counts`` such as samples and shards)."""
    kind: str
    path: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class StageContext:
    """Where a stage runs: the corpus :class:`pipeline.storage.Storage`, the corpus name, the
    stage's folder, the part being processed (``None`` in setup/finalize) and the whole build
    config as plain data (read-only)."""
    storage: Any
    corpus: str
    stage_dir: str
    part: int | None = None
    build: dict[str, Any] = field(default_factory=dict)

    def corpus_path(self, *parts: str) -> str:
        """A path under ``<root>/<corpus>/``."""
        return self.storage.join(self.corpus, *parts)


class Stage:
    """Base class of a pipeline stage: set the class attributes, implement :meth:`process` (per
    row) or :meth:`process_batch` (e.g. on a GPU). ``name`` is the folder and CLI name;
    ``key_field`` names an item in ``_errors`` rows; ``count_field``, when one item writes
    several rows (the shard's row per member), is the column whose distinct values count as kept;
    ``replan`` (sources): list the items again on every run; ``version``: bump it when a code
    change alters the output for the same input and config (it is part of every part's key)."""

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    input_schema: ClassVar[pa.Schema | None] = None
    output_schema: ClassVar[pa.Schema]
    resources: ClassVar[Resources] = Resources()
    key_field: ClassVar[str] = "video_id"
    count_field: ClassVar[str | None] = None
    replan: ClassVar[bool] = True
    version: ClassVar[str] = "1"
    report_histograms: ClassVar[dict[str, Histogram]] = {}

    def __init__(self, config: StageConfig, context: StageContext):
        self.config = config
        self.context = context

    def setup(self) -> None:
        """Load models or open clients; runs once per actor, before any part."""

    def plan(self) -> Iterable[dict[str, Any]]:
        """Sources only: the items to process (small dicts holding ``key_field``); the executor
        groups them into parts and saves the plan, so part membership is stable across runs."""
        raise NotImplementedError(f"{self.name} is not a source stage")

    def process(self, row: dict[str, Any]) -> Iterable[dict[str, Any] | Rejected]:
        """One input row -> output rows and/or :class:`Rejected` rows; raising records an
        ``_errors`` row for this item. Build new rows (``{**row, ...}``); never mutate ``row``
        or its values in place: a fused chain hands values passed through to the next stage."""
        raise NotImplementedError(f"{self.name} implements process_batch, not process")

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """Entry *i* is the result for ``rows[i]``: its output and :class:`Rejected` rows, or the
        exception it raised. ``self.context.part`` is the rows' part."""
        out: list[Result | BaseException] = []
        for row in rows:
            try:
                out.append(list(self.process(row)))
            except Exception as exc:  # noqa: BLE001 - per-item isolation is the contract
                out.append(exc)
        return out

    def fingerprint(self) -> Any:
        """What the output depends on besides the input part and the config (e.g. model files),
        as JSON-able data; computed on the driver, part of every part's key. Default: nothing."""
        return None

    def key(self, row: dict[str, Any]) -> str:
        """The item's id in ``_errors`` rows and reports."""
        value = row.get(self.key_field)
        return "?" if value is None else str(value)

    def finalize(self, part_ids: list[int]) -> dict[str, Any] | None:
        """Aggregate over all done parts (on the driver); returns a summary for the manifest."""
        return None

    def outputs(self, summary: dict[str, Any] | None) -> list[Output]:
        """What the stage publishes, given its finalize ``summary`` (None before finalize)."""
        return []

    def dry_run(self, rows: list[dict[str, Any]]) -> str | None:
        """What processing ``rows`` would cost, found without doing it (``livecc stage run
        --dry-run``; no ``setup()``): a few lines of text, or None when there is nothing to say."""
        return None

    def report_section(self, parts: list[int]) -> dict[str, Any] | None:
        """Stage-specific figures for the stage report over the done ``parts`` (on the driver):
        saved as ``stage_section`` in ``_report.json``; a ``markdown`` entry is appended to
        ``_report.md`` and the Prefect artifact."""
        return None
