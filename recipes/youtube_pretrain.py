"""The pre-training corpus from YouTube (docs/recipes.md): crawl (metadata + captions, no
media) -> caption parse -> pre-training clip -> wps filter -> language -> LM loss (keep 1.5-6.5)
-> media (only videos, and only the sections, that still have clips) -> talking-head filter (the
LMM backend by default, as the reference's step A3) -> [query, off unless stages.query.enabled:
true] -> shard."""
from stages.caption_parse import CaptionParse
from stages.clip import PretrainClip, WpsFilter
from stages.crawl import YoutubeCrawl
from stages.crawl.media import MediaDownload
from stages.language import LanguageFilter
from stages.lm_loss import PretrainLmLossFilter
from stages.query import OptionalQuery
from stages.shard import Shard
from stages.talking_head import PretrainTalkingHead

STAGES = [
    YoutubeCrawl,
    CaptionParse,
    PretrainClip,
    WpsFilter,
    LanguageFilter,
    PretrainLmLossFilter,
    MediaDownload,
    PretrainTalkingHead,      # backend: lmm (Qwen2-VL-2B) unless the config says asd
    OptionalQuery,
    Shard,
]
