"""Category selection for the SFT corpus (DESIGN.md section 5, SFT order: crawl -> category select).

Keeps the videos whose YouTube categories (info.json ``categories``, carried in the
``videos`` row) intersect the configured list. The reference kept 7 categories for
Live-WhisperX ("B1. Select 7 Categories" in ``data/production/README.md``; the list itself is
in ``debug.py``, ``filter_category``): Howto & Style, Sports, Education, Autos & Vehicles,
Science & Technology, Gaming, News & Politics. The reference filtered clips of already
transcribed videos; here it runs before media download and Whisper, so dropped videos cost
nothing.

Matching ignores case and surrounding spaces. An empty list keeps every video. Rejection
reasons: ``category`` (the detail names the video's categories), ``no_category`` (the
metadata has none).
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

import schemas
from pipeline.stage import Rejected, Resources, Stage, StageConfig

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
        keep, reason, detail = select(row.get("categories"), self.config.categories)
        return [row] if keep else [Rejected(row, reason, detail)]


def select(categories: list[str] | None, wanted: list[str]) -> tuple[bool, str, str]:
    """Decide one video: ``(keep, reason, detail)``; ``reason``/``detail`` are empty when kept.

    ``categories``: the video's categories (``None``/empty when the metadata has none).
    ``wanted``: the configured list; empty keeps everything.
    """
    if not wanted:
        return True, "", ""
    have = [c for c in (categories or []) if isinstance(c, str) and c.strip()]
    if not have:
        return False, "no_category", "the video metadata lists no category"
    want = {c.strip().casefold() for c in wanted}
    if any(c.strip().casefold() in want for c in have):
        return True, "", ""
    return False, "category", f"categories {have} not in the selected {len(wanted)}"
