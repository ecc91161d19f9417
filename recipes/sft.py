"""The SFT corpus (the paper's Live-WhisperX-526K recipe, docs/recipes.md):
ingest -> category select -> transcribe (Whisper) -> SFT clip (sentence starts) -> wps filter
-> talking-head filter (face detection + Light-ASD) -> language -> LM loss (keep 1.5-5)
-> query (GPT-4o user queries) -> shard.
"""
from stages.category_select import CategorySelect
from stages.clip import SftClip, WpsFilter
from stages.ingest import LocalIngest
from stages.language import LanguageFilter
from stages.lm_loss import LmLossFilter
from stages.query import Query
from stages.shard import Shard
from stages.talking_head import TalkingHead
from stages.transcribe import Transcribe

STAGES = [
    LocalIngest,
    CategorySelect,
    Transcribe,
    SftClip,
    WpsFilter,
    TalkingHead,
    LanguageFilter,
    LmLossFilter,
    Query,
    Shard,
]
