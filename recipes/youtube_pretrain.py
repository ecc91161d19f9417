"""The pre-training corpus from YouTube (docs/recipes.md): crawl (metadata + captions, no
media) -> caption parse -> pre-training clip -> wps filter -> media (only videos, and only the
sections, that still have clips) -> talking-head filter (the LMM backend by default, as the
reference's step A3) -> shard."""
from stages.caption_parse import CaptionParse
from stages.clip import PretrainClip, WpsFilter
from stages.crawl import YoutubeCrawl
from stages.crawl.media import MediaDownload
from stages.shard import Shard
from stages.talking_head import PretrainTalkingHead

STAGES = [
    YoutubeCrawl,
    CaptionParse,
    PretrainClip,
    WpsFilter,
    MediaDownload,
    PretrainTalkingHead,      # backend: lmm (Qwen2-VL-2B) unless the config says asd
    Shard,
]
