"""The pre-training corpus (the paper's Live-CC-5M recipe, docs/recipes.md):
ingest -> caption parse -> pre-training clip -> wps filter -> language -> LM loss (keep 1.5-6.5)
-> [query, off unless stages.query.enabled: true] -> shard."""
from stages.caption_parse import CaptionParse
from stages.clip import PretrainClip, WpsFilter
from stages.ingest import LocalIngest
from stages.language import LanguageFilter
from stages.lm_loss import PretrainLmLossFilter
from stages.query import OptionalQuery
from stages.shard import Shard

STAGES = [
    LocalIngest,
    CaptionParse,
    PretrainClip,
    WpsFilter,
    LanguageFilter,
    PretrainLmLossFilter,
    OptionalQuery,
    Shard,
]
