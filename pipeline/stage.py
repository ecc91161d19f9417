"""The stage contract: what every module in ``stages/`` implements.

A stage maps input part *k* to output part *k* (lineage is by part id). The executor
calls :meth:`Stage.setup` once per Ray actor, then :meth:`Stage.process_batch` on the
rows of each part, ``resources.batch_size`` rows at a time. Per item, a stage returns
output rows, :class:`Rejected` rows (a filter's decision, with a reason code) or
raises (the executor records an ``_errors`` row and the part goes on).

Source stages (``input_schema is None``) implement :meth:`Stage.plan` instead of
reading an upstream part: it lists the items, and the executor groups them into parts.

Stages that aggregate over all parts (the shard index) implement :meth:`Stage.finalize`,
which the executor runs on the driver once every part is done.

Modelled on NeMo Curator's stage/resources contract and datatrove's filter
``(False, reason)`` convention (see ../shared/STYLE.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, NamedTuple

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field


class Resources(BaseModel):
    """What one actor of a stage needs, and how work is batched.

    ``num_cpus``/``num_gpus`` are Ray logical resources per actor; ``memory_bytes`` is a
    Ray memory reservation; ``batch_size`` is rows per :meth:`Stage.process_batch` call;
    ``concurrency`` caps the number of actors (``None``: as many as the cluster fits).
    """
    model_config = ConfigDict(extra="forbid")

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    memory_bytes: int | None = Field(None, ge=0)
    batch_size: int = Field(64, ge=1)
    concurrency: int | None = Field(None, ge=1)


class StageConfig(BaseModel):
    """Base of every stage's config model. Unknown keys are errors.

    ``resources`` overrides the stage's default :class:`Resources`; it does not enter
    the config hash, so changing it never marks parts stale.
    """
    model_config = ConfigDict(extra="forbid")

    resources: Resources | None = None

    def hash_payload(self) -> dict[str, Any]:
        """The settings that decide the stage's output (everything but resources)."""
        return self.model_dump(mode="json", exclude={"resources"})


class Rejected(NamedTuple):
    """A row a filter dropped. ``reason`` is a short code counted in reports
    (e.g. ``"wps_out_of_range"``); ``detail`` says the specifics (``"wps=5.21 > 4"``)."""
    row: dict[str, Any]
    reason: str
    detail: str = ""


Result = list  # list[dict | Rejected]: what one input row became


@dataclass
class StageContext:
    """What a stage may know about where it runs.

    ``storage`` is the corpus :class:`pipeline.storage.Storage` (fsspec-backed);
    ``corpus`` the corpus name; ``part`` the part being processed (``None`` in setup
    and finalize); ``build`` the whole build config as plain data (read-only).
    """
    storage: Any
    corpus: str
    stage_dir: str
    part: int | None = None
    build: dict[str, Any] = field(default_factory=dict)

    def corpus_path(self, *parts: str) -> str:
        """A path under ``<root>/<corpus>/``."""
        return self.storage.join(self.corpus, *parts)


class Stage:
    """Base class of a pipeline stage. Subclasses set the class attributes and implement
    :meth:`process` (per row) or :meth:`process_batch` (batched, e.g. on a GPU).

    Class attributes:
        name: directory name under ``<root>/<corpus>/`` and the CLI name.
        Config: the pydantic config model (subclass of :class:`StageConfig`).
        input_schema: schema of the rows read from the previous stage; ``None`` for a source.
        output_schema: schema of the rows written to the stage's part files.
        resources: default :class:`Resources`; the config's ``resources`` overrides it.
    """

    name: ClassVar[str]
    Config: ClassVar[type[StageConfig]] = StageConfig
    input_schema: ClassVar[pa.Schema | None] = None
    output_schema: ClassVar[pa.Schema]
    resources: ClassVar[Resources] = Resources()

    def __init__(self, config: StageConfig, context: StageContext):
        self.config = config
        self.context = context

    # -- lifecycle -----------------------------------------------------------
    def setup(self) -> None:
        """Load models or open clients; runs once per actor, before any part."""

    def plan(self) -> Iterable[dict[str, Any]]:
        """Source stages only: list the items to process (small dicts with a stable key).
        The executor groups them into parts of ``build.part_size`` and saves the plan, so
        part membership is stable across runs; items found later are appended as new parts."""
        raise NotImplementedError(f"{self.name} is not a source stage")

    def process(self, row: dict[str, Any]) -> Iterable[dict[str, Any] | Rejected]:
        """Turn one input row into zero or more output rows and/or :class:`Rejected` rows.
        Raising records an ``_errors`` row for this item; the part goes on."""
        raise NotImplementedError

    def process_batch(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """Process a batch; entry *i* is the result for ``rows[i]``: a list of output and
        :class:`Rejected` rows, or the exception that item raised. Override to batch on a GPU."""
        out: list[Result | BaseException] = []
        for row in rows:
            try:
                out.append(list(self.process(row)))
            except Exception as exc:  # noqa: BLE001 - per-item isolation is the contract
                out.append(exc)
        return out

    def process_part(self, rows: list[dict[str, Any]]) -> list[Result | BaseException]:
        """Process all rows of one part (``self.context.part``); entry *i* is the result for
        ``rows[i]``. The default feeds :meth:`process_batch` ``resources.batch_size`` rows at a
        time. Override when the part is the natural unit (e.g. the shard writer)."""
        size = (self.config.resources or self.resources).batch_size
        out: list[Result | BaseException] = []
        for i in range(0, len(rows), size):
            out.extend(self.process_batch(rows[i:i + size]))
        return out

    def key(self, row: dict[str, Any]) -> str:
        """The item's id in ``_errors`` rows and reports."""
        for k in ("clip_id", "video_id", "key", "id"):
            if row.get(k) is not None:
                return str(row[k])
        return "?"

    def finalize(self, part_ids: list[int]) -> dict[str, Any] | None:
        """Aggregate over all done parts (runs on the driver); returns a summary for the manifest."""
        return None

    # -- reporting -------------------------------------------------------------
    #: output columns to histogram in the stage report (column name -> axis label)
    report_histograms: ClassVar[dict[str, str]] = {}
