"""Arrow schemas and record types: the contract between stages (docs/architecture.md, "Parts").

Every part file carries :data:`SCHEMA_VERSION` in its Parquet metadata under the key
``livecc.schema_version``. Times are seconds (float64) on the media's own clock.

Tables:

* :data:`VIDEOS` -- one row per source video (ingest / crawl output).
* :data:`TRANSCRIPTS` -- a video row plus its ``words`` (caption parse / transcribe output).
* :data:`CLIPS` -- one row per clip; score columns are null until a stage fills them.
* :data:`ERRORS` -- one row per item that raised, in every stage's ``_errors`` folder.

``words`` is ``list<struct<start: float64, end: float64, text: string>>``: the LiveCC
"text stream", one entry per spoken word, sorted by start.
"""
from __future__ import annotations

from schemas.validate import SchemaError, validate_rows, rows_to_table

SCHEMA_VERSION = "1"

import pyarrow as pa  # noqa: E402

WORD = pa.struct([
    pa.field("start", pa.float64(), nullable=False),   # seconds
    pa.field("end", pa.float64(), nullable=False),     # seconds
    pa.field("text", pa.string(), nullable=False),
])
WORDS = pa.list_(WORD)

_VIDEO_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("source", pa.string()),            # "local" | "youtube"
    pa.field("url", pa.string()),
    pa.field("title", pa.string()),
    pa.field("channel", pa.string()),
    pa.field("categories", pa.list_(pa.string())),
    pa.field("duration", pa.float64()),         # seconds
    pa.field("language", pa.string()),
    pa.field("caption_kind", pa.string()),      # "manual" | "auto" | "unknown"
    pa.field("caption_format", pa.string()),    # "json3" | "srv3" | "vtt" | "srt"
    pa.field("caption_path", pa.string()),
    pa.field("media_path", pa.string()),
    pa.field("media_size_bytes", pa.int64()),
    pa.field("width", pa.int32()),              # pixels
    pa.field("height", pa.int32()),             # pixels
    pa.field("fps", pa.float64()),              # frames per second
    pa.field("has_audio", pa.bool_()),
]
VIDEOS = pa.schema(_VIDEO_FIELDS, metadata={"livecc.table": "videos"})

TRANSCRIPTS = pa.schema(
    _VIDEO_FIELDS + [
        pa.field("words", WORDS),
        pa.field("transcript_source", pa.string()),   # "cc" | "whisperx"
        pa.field("lang_score", pa.float64()),         # detected-language probability, when known
    ],
    metadata={"livecc.table": "transcripts"},
)

CLIPS = pa.schema([
    pa.field("clip_id", pa.string(), nullable=False),   # <video_id>_<start_ms>_<end_ms>
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("start", pa.float64(), nullable=False),    # seconds on the media clock
    pa.field("end", pa.float64(), nullable=False),      # seconds on the media clock
    pa.field("words", WORDS),
    pa.field("previous", pa.string()),                  # transcript before the clip (reference: previous / preasr)
    pa.field("title", pa.string()),
    pa.field("category", pa.string()),
    pa.field("transcript_source", pa.string()),
    pa.field("url", pa.string()),
    pa.field("media_path", pa.string()),
    pa.field("media_offset", pa.float64()),             # seconds: media-clock time of the file's first sample (section downloads)
    pa.field("has_audio", pa.bool_()),
    # filter scores: null until the stage that computes them has run
    pa.field("wps", pa.float64()),                      # words per second
    pa.field("lm_loss", pa.float64()),                  # nats per assistant token
    pa.field("lang", pa.string()),
    pa.field("lang_score", pa.float64()),
    pa.field("talking_head_ratio", pa.float64()),       # frames with a speaking face / frames examined (ASD)
    pa.field("talking_head_p_yes", pa.float64()),       # LMM's P("Yes") to "someone always showing their face and talking?"
    pa.field("query", pa.string()),                     # the user query (query stage; null before it, or on NO)
    pa.field("query_prompt_tokens", pa.int64()),        # tokens billed for the query request(s), from `usage`
    pa.field("query_completion_tokens", pa.int64()),
], metadata={"livecc.table": "clips"})

ERRORS = pa.schema([
    pa.field("stage", pa.string(), nullable=False),
    pa.field("part", pa.int64(), nullable=False),
    pa.field("item_key", pa.string()),
    pa.field("error_type", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
], metadata={"livecc.table": "errors"})

#: Columns appended to the stage's input schema in ``_rejected`` part files.
REJECT_FIELDS = [
    pa.field("reason", pa.string(), nullable=False),   # short code, e.g. "wps_out_of_range"
    pa.field("detail", pa.string()),                   # human-readable specifics, e.g. "wps=5.21 > 4"
]


def rejected_schema(input_schema: pa.Schema) -> pa.Schema:
    """The ``_rejected`` schema for a stage whose input rows follow ``input_schema``."""
    return pa.schema(list(input_schema) + REJECT_FIELDS, metadata={"livecc.table": "rejected"})


def clip_id(video_id: str, start: float, end: float) -> str:
    """Stable clip id ``<video_id>_<start_ms>_<end_ms>``; ``start``/``end`` in seconds."""
    return f"{video_id}_{int(round(start * 1000))}_{int(round(end * 1000))}"


__all__ = [
    "SCHEMA_VERSION", "WORD", "WORDS", "VIDEOS", "TRANSCRIPTS", "CLIPS", "ERRORS",
    "REJECT_FIELDS", "rejected_schema", "clip_id", "SchemaError", "validate_rows", "rows_to_table",
]
