"""The SFT corpus from YouTube (docs/recipes.md): crawl (metadata + captions) -> category
select -> media (whole videos) -> transcribe (Whisper) -> SFT clip -> wps filter ->
talking-head filter -> language -> LM loss (keep 1.5-5) -> query (GPT-4o user queries) -> shard."""
from stages.category_select import CategorySelect
from stages.clip import SftClip, WpsFilter
from stages.crawl import YoutubeCrawl
from stages.crawl.media import VideoMediaDownload
from stages.language import LanguageFilter
from stages.lm_loss import LmLossFilter
from stages.query import Query
from stages.shard import Shard
from stages.talking_head import TalkingHead
from stages.transcribe import Transcribe

STAGES = [
    YoutubeCrawl,
    CategorySelect,
    VideoMediaDownload,
    Transcribe,
    SftClip,
    WpsFilter,
    TalkingHead,
    LanguageFilter,
    LmLossFilter,
    Query,
    Shard,
]
