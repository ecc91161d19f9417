"""Category selection for the SFT corpus (docs/recipes.md#category_select).

Keeps the videos whose YouTube categories (info.json ``categories``, carried in the
``videos`` row) intersect the configured list. The reference kept 7 categories for
Live-WhisperX ("B1. Select 7 Categories" in ``data/production/README.md``; the list itself is
in ``debug.py``, ``filter_category``): Howto & Style, Sports, Education, Autos & Vehicles,
Science & Technology, Gaming, News & Politics. The reference filtered clips of already
transcribed videos; here it runs before media download and Whisper, so dropped videos cost
nothing.

The rule is :func:`stages.videos.category_rejection`, shared with the crawl's metadata filter:
matching ignores case and surrounding spaces; an empty list keeps every video. Rejection
reasons: ``category_excluded`` (the detail names the video's categories), ``no_category``
(the metadata has none).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

import schemas
from pipeline.stage import Rejected, Resources, Stage, StageConfig
from stages.videos import category_rejection

#: The reference's seven Live-WhisperX categories (showlab/livecc ``debug.py``).
REFERENCE_CATEGORIES = ["Howto & Style", "Sports", "Education", "Autos & Vehicles", "Science & Technology",
                        "Gaming", "News & Politics"]


class CategorySelectConfig(StageConfig):
    categories: list[str] = Field(default_factory=lambda: list(REFERENCE_CATEGORIES),
                                  description="YouTube categories to keep (empty: keep all)")


class CategorySelect(Stage):
    """``videos`` -> ``videos``: the rows whose categories are selected (module docstring)."""

    name = "category_select"
    Config = CategorySelectConfig
    input_schema = schemas.VIDEOS
    output_schema = schemas.VIDEOS
    resources = Resources(num_cpus=0.25, batch_size=1024)

    config: CategorySelectConfig

    def process(self, row: dict[str, Any]) -> list[dict[str, Any] | Rejected]:
        rejection = category_rejection(row.get("categories"), self.config.categories)
        return [Rejected(row, *rejection)] if rejection else [row]
