"""`livecc status` never touches the network, and a build lists a YouTube source once.

Regression: status() and up_to_date() used to call the crawl's plan() (discovery: a request per
search, channel or playlist page) without saving it, so `livecc status` reached the network
before any build and the first build listed the sources twice. Counted with the loopback server.
"""
from __future__ import annotations

import yaml
from typer.testing import CliRunner

from livecc.cli import app
from pipeline.config import load_config
from pipeline.pipeline import Pipeline
from recipes import recipe_stages


def test_status_sends_no_request_and_a_build_lists_the_source_once(tmp_path, srv):
    page = "".join(f'<iframe src="https://www.youtube.com/embed/{v}"></iframe>'
                   for v in ("N0gZFvpxNhQ", "Ye8mB6VsUHw", "emyi4z-O0ls"))
    srv.add_bytes("/talks.html", f"<html><head><title>t</title></head><body>{page}</body></html>".encode(),
                  "text/html")
    config = tmp_path / "yt.yaml"
    config.write_text(yaml.safe_dump({
        "corpus": "yt", "flow": "youtube_pretrain", "root": str(tmp_path / "root"),
        "stages": {"crawl": {"playlists": [srv.url("/talks.html")], "requests_per_minute": None,
                             "info_json_source": srv.url("/info/{video_id}.info.json")}}}))

    res = CliRunner().invoke(app, ["status", str(config)])
    assert res.exit_code == 0, res.output
    assert "not planned yet" in res.output
    assert srv.hits == []                                     # status: no request at all
    res = CliRunner().invoke(app, ["status", str(config), "--json"])
    assert res.exit_code == 0 and srv.hits == []

    pipe = Pipeline(load_config(config), recipe_stages(load_config(config)))
    assert not pipe.up_to_date() and srv.hits == []           # nor the no-op check before a build
    parts = pipe.plan_source()                                # a build lists the source ...
    assert [it["video_id"] for p in parts for it in p] == ["N0gZFvpxNhQ", "Ye8mB6VsUHw", "emyi4z-O0ls"]
    assert [h.path for h in srv.hits] == ["/talks.html"]
    again = Pipeline(load_config(config), recipe_stages(load_config(config)))
    assert again.plan_source() == parts                       # ... once per crawl config
    assert again.status()[0]["parts"]["pending"] == list(range(len(parts)))
    assert [h.path for h in srv.hits] == ["/talks.html"]
