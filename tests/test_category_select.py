"""Category selection on the categories of real yt-dlp / video2dataset info.json files."""
from __future__ import annotations

import json

import pytest

import schemas
from pipeline.stage import Rejected
from stages.category_select import REFERENCE_CATEGORIES, CategorySelect, CategorySelectConfig, select
from stages.ingest import video_row
from tests.conftest import fixture_path


def info_row(name: str) -> dict:
    """The ``videos`` row ingest builds from a real info.json (video2dataset nests it)."""
    info = json.loads(fixture_path("infojson", name).read_text())
    info = info.get("yt_meta_dict", {}).get("info", info)
    return video_row(info.get("id") or name.split(".")[0], info)


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
    assert len(rejected) == 3 and {r.reason for r in rejected.values()} == {"category"}
    assert "Pets & Animals" in rejected[rows["v2d_returnall_0000030_00005.json"]["video_id"]].detail
    schemas.rows_to_table(kept, schemas.VIDEOS)


def test_configured_list_and_keep_all(rows):
    out = run(CategorySelectConfig(categories=[" pets & animals", "Development"]), list(rows.values()))
    kept = sorted(c for r in out if not isinstance(r, Rejected) for c in r["categories"])
    assert kept == ["Development", "Pets & Animals"]
    assert len(run(CategorySelectConfig(categories=[]), list(rows.values()))) == 4
    assert all(not isinstance(r, Rejected) for r in run(CategorySelectConfig(categories=[]), list(rows.values())))


def test_missing_categories_are_rejected_with_their_own_reason():
    assert select(None, REFERENCE_CATEGORIES) == (False, "no_category", "the video metadata lists no category")
    assert select(["", "  "], ["Gaming"])[1] == "no_category"
    assert select(None, [])[0] is True
    assert select(["Music", "Gaming"], REFERENCE_CATEGORIES) == (True, "", "")
