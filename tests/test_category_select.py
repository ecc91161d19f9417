"""Category selection on the categories of real yt-dlp / video2dataset info.json files."""
from __future__ import annotations

import json

import pytest

import schemas
from pipeline.stage import Rejected
from stages.category_select import REFERENCE_CATEGORIES, CategorySelect, CategorySelectConfig
from stages.crawl import CrawlConfig, metadata_rejection
from stages.videos import category_rejection, video_row
from tests.conftest import fixture_path


def info_row(name: str) -> dict:
    """The ``videos`` row ingest builds from a real info.json (video2dataset nests it)."""
    info = json.loads(fixture_path("infojson", name).read_text())
    info = info.get("yt_meta_dict", {}).get("info", info)
    return video_row(info, video_id=info.get("id") or name.split(".")[0], source="local")


@pytest.fixture(scope="module")
def rows():
    names = ["ytdlp_TEDEd_emyi4z-O0ls.info.json",          # Education
             "pinchflat_example_postdownload.info.json",   # Development
             "v2d_returnall_0000008_00001.json",           # Film & Animation
             "v2d_returnall_0000030_00005.json"]           # Pets & Animals
    return {name: info_row(name) for name in names}


def run(config: CategorySelectConfig, rows: list[dict]) -> list:
    stage = CategorySelect(config, None)
    return [out for result in stage.process_batch(rows) for out in result]


def test_reference_categories_keep_education_only(rows):
    assert len(REFERENCE_CATEGORIES) == 7
    out = run(CategorySelectConfig(), list(rows.values()))
    kept = [r for r in out if not isinstance(r, Rejected)]
    rejected = {r.row["video_id"]: r for r in out if isinstance(r, Rejected)}
    assert [r["categories"] for r in kept] == [["Education"]]
    assert kept[0]["video_id"] == "emyi4z-O0ls" and kept[0] is rows["ytdlp_TEDEd_emyi4z-O0ls.info.json"]
    assert len(rejected) == 3 and {r.reason for r in rejected.values()} == {"category_excluded"}
    assert "Pets & Animals" in rejected[rows["v2d_returnall_0000030_00005.json"]["video_id"]].detail
    schemas.rows_to_table(kept, schemas.VIDEOS)


def test_configured_list_and_keep_all(rows):
    out = run(CategorySelectConfig(categories=[" pets & animals", "Development"]), list(rows.values()))
    kept = sorted(c for r in out if not isinstance(r, Rejected) for c in r["categories"])
    assert kept == ["Development", "Pets & Animals"]
    assert len(run(CategorySelectConfig(categories=[]), list(rows.values()))) == 4
    assert all(not isinstance(r, Rejected) for r in run(CategorySelectConfig(categories=[]), list(rows.values())))


def test_missing_categories_are_rejected_with_their_own_reason():
    assert category_rejection(None, REFERENCE_CATEGORIES) == ("no_category", "the video metadata lists no category")
    assert category_rejection(["", "  "], ["Gaming"])[0] == "no_category"
    assert category_rejection(None, []) is None and category_rejection(None, None) is None
    assert category_rejection(["Music", "Gaming"], REFERENCE_CATEGORIES) is None


@pytest.mark.parametrize("categories, allow, deny, expected", [
    (["Education"], ["education "], [], None),                      # case and spaces ignored
    (["Education"], ["Gaming"], [], "category_excluded"),
    (["Education"], None, ["EDUCATION"], "category_excluded"),       # deny list, any case
    (["Education"], ["Education"], ["education"], "category_excluded"),  # deny wins
    ([], ["Gaming"], [], "no_category"),
    (None, [], [], None),
])
def test_crawl_filter_and_category_select_are_one_rule(categories, allow, deny, expected):
    """The crawl's metadata filter and the category_select stage decide alike, with the same codes."""
    info = {"id": "emyi4z-O0ls", "duration": 300.0, "categories": categories}
    crawl = metadata_rejection(info, CrawlConfig(categories=allow, exclude_categories=deny))
    assert (crawl[0] if crawl else None) == expected
    if not deny:
        row = video_row(info, video_id="emyi4z-O0ls", source="local")
        (out,) = CategorySelect(CategorySelectConfig(categories=allow or []), None).process(row)
        assert (out.reason if isinstance(out, Rejected) else None) == expected
