"""Shards for the training tests, built from the real fixtures by the real shard stage.

``manifesto_shards(root)`` is the one place that produces shards; swap it for a ``livecc build``
run over the fixture folder and every training test keeps working (they only read
``<root>/<corpus>/shards/``).

Clips: the 88 s narration video (320x180, 25 fps, keyframe every 10 s) with the word times of
an independent recogniser (vosk), cut where the words start and end, as the clip stages do.
"""
from __future__ import annotations

import json
from pathlib import Path

import schemas
from tests.conftest import fixture_path

VIDEO = ("video", "videogrep_manifesto_narration.mp4")
WORDS = ("captions", "videogrep_manifesto_vosk_words.json")
TITLE = "Manifesto of the Communist Party (audiobook)"
#: (first word index, last word index + 1) of the training clips: ~15 s and ~12 s of speech.
CLIP_WORDS = [(27, 67), (103, 140)]
QUERY = "Please narrate what is happening in the video."


def real_words() -> list[dict]:
    """The recogniser's words: dicts with start, end (s) and text."""
    data = json.loads(fixture_path(*WORDS).read_text())
    return [{"start": w["start"], "end": w["end"], "text": w["word"]} for seg in data for w in seg["words"]]


def clip_rows(media: str, clip_words: list[tuple[int, int]] = CLIP_WORDS) -> list[dict]:
    """CLIPS rows for ``clip_words`` (word index ranges), with ``previous`` = the words before the clip."""
    words = real_words()
    rows = []
    for a, b in clip_words:
        inside = words[a:b]
        start, end = inside[0]["start"], inside[-1]["end"]
        rows.append({
            "clip_id": schemas.clip_id("manifesto", start, end), "video_id": "manifesto",
            "start": start, "end": end, "words": inside,
            "previous": " ".join(w["text"] for w in words[:a]), "title": TITLE, "category": "Education",
            "transcript_source": "cc", "url": "https://example.org/manifesto", "media_path": media,
            "media_offset": 0.0, "has_audio": True, "wps": len(inside) / (end - start), "lm_loss": None,
            "query": QUERY,
        })
    return rows


def manifesto_shards(root: Path, corpus: str = "c", clip_words: list[tuple[int, int]] = CLIP_WORDS) -> Path:
    """Build ``<root>/<corpus>/shards`` (tars with json + mp4 members, seek index, JSONL with
    seeks) from :func:`clip_rows` with ``stages.shard``, as ``livecc build`` does. Returns the
    shard folder."""
    from pipeline.stage import StageContext
    from pipeline.storage import Storage, part_name
    from schemas.seek_index import SEEK_INDEX
    from stages.shard import Shard, ShardConfig

    media = str(fixture_path(*VIDEO))
    storage = Storage(str(root))
    ctx = StageContext(storage=storage, corpus=corpus, stage_dir=f"{corpus}/shard", part=0)
    results = Shard(ShardConfig(), ctx).process_batch(clip_rows(media, clip_words))
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    rows = [r for res in results for r in res]
    storage.write_table(f"{corpus}/shard/{part_name(0)}", schemas.rows_to_table(rows, SEEK_INDEX))
    Shard(ShardConfig(), StageContext(storage=storage, corpus=corpus, stage_dir=f"{corpus}/shard")).finalize([0])
    return Path(root) / corpus / "shards"


def extract_media(shard_dir: Path, out: Path) -> Path:
    """Unpack the shards' ``mp4`` members into ``out`` as ``<clip_id>.mp4`` (what ``tar -xf``
    writes): the folder a JSONL-with-seeks source's ``video`` names resolve under."""
    import tarfile

    out.mkdir(parents=True, exist_ok=True)
    for tar in sorted(Path(shard_dir).glob("*.tar")):
        with tarfile.open(tar) as tf:
            tf.extractall(out, members=[m for m in tf.getmembers() if m.name.endswith(".mp4")], filter="data")
    return out


def corpus_texts() -> list[str]:
    """Texts to train the tiny tokenizer on: the fixture's words and the prompt pieces."""
    return [" ".join(w["text"] for w in real_words()), QUERY, TITLE]
