"""The dataset card: ``README.md`` of the release, read by the Hub and by ``datasets``
(docs/recipes.md#release).

The YAML header is built with ``huggingface_hub``'s :class:`DatasetCardData` and the card with
:class:`DatasetCard` (written to the folder; never ``DatasetCard.push_to_hub``, which validates
against a fixed public host -- the commit's own ``validate-yaml`` call goes to ``HF_ENDPOINT``):

* ``license`` from ``release.license`` (default ``unknown``: nothing is claimed);
* ``task_categories: [video-text-to-text]``, ``size_categories`` from the sample count, ``tags``;
* ``configs``: one ``default`` config whose ``train`` split is ``data/train/*.tar``, so the Hub
  viewer and ``load_dataset`` use the webdataset builder instead of picking up the parquet seek
  index;
* ``dataset_info.features`` (:func:`features`): ``__key__``/``__url__`` strings; ``json`` a
  struct whose ``conversation`` is ``json`` (its ``[start, end, word]`` lists mix types, which no
  Arrow type holds) and whose ``metadata`` is typed field by field from the clip schema;
  ``mp4`` ``binary``. Declared, because the builder otherwise infers features from the first
  samples and a caption-only sample (no ``mp4`` member) breaks that inference; declared, a
  missing member loads as ``None``. ``binary``, not ``Video``: decoding stays with the reader
  (PyAV, ``train/``) instead of ``datasets``' torchcodec dependency. ``datasets`` stores a
  ``json`` value as text written by pandas' ujson (10 decimals) and parsed by its fast float
  parser, so a conversation time can come back off in its last digit (0.832 ->
  0.8320000000000001); metadata floats, typed, load exactly.

The body states the recipe, every stage with its settings and kept/rejected/error counts and
rejection reasons, the totals, the plots, the sample format, three ways to load the release,
and its provenance (config hash, code version, build dates) with a note on the videos' rights.
"""
from __future__ import annotations

import io
import math
from typing import Any

import yaml

from release.config import ReleaseConfig

#: Hub ``size_categories`` values, by upper bound of the sample count.
SIZE_CATEGORIES = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                   (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                   (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
                   (1_000_000_000_000, "100B<n<1T")]
TAGS = ["webdataset", "video", "streaming", "livecc"]
#: Arrow type -> ``datasets`` dtype name, for the metadata struct
_DTYPES = {"string": "string", "large_string": "string", "double": "float64", "float": "float32", "bool": "bool",
           "int64": "int64", "int32": "int32", "int16": "int16", "int8": "int8"}
#: flow name -> what the corpus is (recipes/ and docs/recipes.md#recipes)
RECIPES = {
    "pretrain": ("Live-CC-5M-style pre-training corpus", "YouTube closed captions used as ASR, cut into 30-240 s clips "
                 "with word timestamps and the preceding transcript as context (LiveCC, CVPR 2025)"),
    "youtube_pretrain": ("Live-CC-5M-style pre-training corpus", "crawled from YouTube: closed captions used as ASR, "
                         "cut into 30-240 s clips with word timestamps; media downloaded only where clips survive"),
    "sft": ("Live-WhisperX-style SFT corpus", "selected categories re-transcribed with Whisper (word timestamps), "
            "clips starting at sentence boundaries, talking heads removed (LiveCC, CVPR 2025)"),
    "youtube_sft": ("Live-WhisperX-style SFT corpus", "crawled from YouTube, re-transcribed with Whisper (word "
                    "timestamps), clips starting at sentence boundaries, talking heads removed"),
}
HUB_ENDPOINT = "https://huggingface.co"


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` samples."""
    for bound, name in SIZE_CATEGORIES:
        if n < bound:
            return name
    return "n>1T"


def features(clip_schema) -> list[dict[str, Any]]:
    """``dataset_info.features`` (``datasets`` YAML form) for samples of clips with ``clip_schema``
    (a ``pyarrow.Schema``, the shard stage's input): ``__key__``, ``__url__``, ``json`` (a struct:
    ``clip_id``; ``conversation`` as ``json``, since its ``[start, end, word]`` lists mix types;
    ``metadata`` typed field by field from the clip schema, so scores load exactly; ``media``) and
    ``mp4`` (``binary``)."""
    from schemas.record import metadata_fields

    meta = [{"name": n, "dtype": _DTYPES.get(str(clip_schema.field(n).type), "json")}
            for n in metadata_fields(clip_schema.names)]
    return [{"name": "__key__", "dtype": "string"}, {"name": "__url__", "dtype": "string"},
            {"name": "json", "struct": [
                {"name": "clip_id", "dtype": "string"}, {"name": "conversation", "dtype": "json"},
                {"name": "metadata", "struct": meta},
                {"name": "media", "struct": [{"name": "member", "dtype": "string"}, {"name": "start", "dtype": "float64"}]}]},
            {"name": "mp4", "dtype": "binary"}]


def card_data(facts: dict[str, Any], rcfg: ReleaseConfig):
    """The card's YAML header (:class:`huggingface_hub.DatasetCardData`)."""
    from huggingface_hub import DatasetCardData

    extra = {}
    if rcfg.license_name:
        extra["license_name"] = rcfg.license_name
    if rcfg.license_link:
        extra["license_link"] = rcfg.license_link
    return DatasetCardData(
        license=rcfg.license, language=list(rcfg.language), pretty_name=rcfg.pretty_name or facts["corpus"],
        task_categories=["video-text-to-text"], size_categories=[size_category(facts["totals"]["samples"])],
        tags=TAGS + [t for t in rcfg.tags if t not in TAGS],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "data/train/*.tar"}]}],
        dataset_info={"features": features(facts["clip_schema"]),
                      "splits": [{"name": "train", "num_examples": facts["totals"]["samples"]}]},
        **extra)


def render_card(facts: dict[str, Any], rcfg: ReleaseConfig, *, repo_id: str | None = None,
                endpoint: str | None = None, revision: str | None = None) -> str:
    """The whole ``README.md``: YAML header and body (layout in the module docstring).
    ``repo_id``/``endpoint``/``revision`` fill the loading examples (placeholders without a repo)."""
    from huggingface_hub import DatasetCard

    data = card_data(facts, rcfg)
    card = DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{card_body(facts, rcfg, repo_id, endpoint, revision)}")
    return str(card)


def card_body(facts: dict[str, Any], rcfg: ReleaseConfig, repo_id: str | None, endpoint: str | None,
              revision: str | None) -> str:
    t, prov = facts["totals"], facts["provenance"]
    title, what = RECIPES.get(facts["flow"], ("corpus", f"built with the `{facts['flow']}` recipe"))
    repo = repo_id or "OWNER/NAME"
    host = (endpoint or HUB_ENDPOINT).rstrip("/")
    rev = revision or "main"
    name = rcfg.pretty_name or facts["corpus"]
    out = [f"# {name}", ""]
    if rcfg.description:
        out += [rcfg.description.strip(), ""]
    out += [f"A {title} for streaming video LLMs: {what}. Built with livecc-pipeline (flow `{facts['flow']}`).", "",
            f"**{t['samples']:,} clips** ({t['hours']:.2f} hours, {t['words']:,} words) from **{t['videos']:,} videos**, "
            f"in {_n(facts['files']['shards'], 'WebDataset shard')} ({_bytes(facts['files']['shard_bytes'])}); "
            + _media_sentence(t), ""]
    if facts["missing"]:
        out += ["> **Partial release.** These parts were not done when it was made, so their clips are missing:",
                ">"] + [f"> * {m}" for m in facts["missing"]] + [""]

    out += ["## Contents", "", "| path | what |", "|---|---|",
            "| `data/train/*.tar` | WebDataset shards: one sample per clip, members `<clip_id>.json` and, when the clip "
            "has media, `<clip_id>.mp4` |",
            "| `seek_index.parquet` | byte offset and size of every member of every shard (one ranged read per sample) |",
            "| `shardlist.json` | wids-style shard list: `url` (repo path), `nsamples`, `filesize`, `sha256` |",
            f"| `{facts['jsonl']}` | the reference's JSONL with byte seeks, for its `train.py` |",
            "| `plots/*.png` | the distributions below |", ""]

    out += ["## How it was built", "", "Stages, in order (settings that change the output; paths of the build "
            "machine are shown as `<local path>`):", "",
            "| stage | what it does | input | kept | rejected | errors | rejection reasons |",
            "|---|---|---:|---:|---:|---:|---|"]
    for s in facts["stages"]:
        c = s["counts"]
        reasons = ", ".join(f"`{k}` {v:,}" for k, v in list(s["reasons"].items())[:6]) or "-"
        out.append(f"| `{s['name']}` | {_cell(s['doc'])} | {c.get('input', 0):,} | {c.get('kept', 0):,} | "
                   f"{c.get('rejected', 0):,} | {c.get('errors', 0):,} | {reasons} |")
    out += [""]
    errors = [(s["name"], k, v) for s in facts["stages"] for k, v in s["errors"].items()]
    if errors:
        out += ["Items that raised (error rows, by type): "
                + "; ".join(f"`{st}` {k} {v:,}" for st, k, v in errors) + ".", ""]
    out += ["<details><summary>Stage settings</summary>", "", "```yaml",
            yaml.safe_dump({s["name"]: s["config"] for s in facts["stages"]}, sort_keys=False).rstrip(), "```", "",
            "</details>", ""]

    out += ["## Statistics", "", "| videos | clips | hours | words | samples with mp4 |", "|---:|---:|---:|---:|---:|",
            f"| {t['videos']:,} | {t['clips']:,} | {t['hours']:.2f} | {t['words']:,} | {t['samples_with_mp4']:,} |", ""]
    for p in facts.get("plots", []):
        label = f"{p['stage']}: {p['column']}" if p["stage"] else "clips per category"
        out += [f"![{label}]({p['path']})", ""]
    if facts["categories"]:
        out += ["Categories: " + ", ".join(f"{k} {v:,}" for k, v in list(facts["categories"].items())[:20]) + ".", ""]

    out += ["## Sample format", "",
            "Each sample's `json` member:", "",
            "```", '{"clip_id": "<video_id>_<start_ms>_<end_ms>",',
            ' "conversation": [',
            '   {"role": "user", "content": [',
            '      {"type": "video", "video": "<clip_id>.mp4" | <video URL> | <video id>, "video_start": s, "video_end": s},',
            '      {"type": "text", "text": <query>, "previous": <transcript before the clip>, "title": ..., "category": ...}]},',
            '   {"role": "assistant", "content": [{"type": "text_stream", "text_stream": [[start_s, end_s, word], ...]}]}],',
            ' "metadata": {"video_id", "start", "end", "wps", "lm_loss", "talking_head_ratio", "url", ...},',
            ' "media": {"member": "mp4" | null, "start": s}}', "```", "",
            "* Times are seconds on the source video's clock. Member time 0 of `mp4` is source time `media.start`, "
            "so a time `t` is at `t - media.start` in the member. The member is a stream copy of the source "
            "(no re-encode); an MP4 edit list hides the keyframe pre-roll.",
            "* `video` is never a path of the build machine: the sample's own member file `<clip_id>.mp4` "
            "(what `tar -xf` writes), else the video's URL, else its id (caption-only samples).",
            f"* `{facts['jsonl']}`: one conversation per line, in seek-index order; the last line is the JSON list of "
            "the **byte** offset of each line. Lines of samples with an `mp4` member name the member file and are on "
            "its clock (every time minus `media.start`).",
            "* `seek_index.parquet`: one row per member: `key` (clip_id), `shard` (repo path), `member` (`json`/`mp4`), "
            "`offset` (int64, first byte of the member's data in the shard), `size` (int64 bytes). Bytes "
            "`[offset, offset + size)` of the shard are the member, so one HTTP range request reads it.", ""]

    tar_url = f"{host}/datasets/{repo}/resolve/{rev}/data/train/{{name}}"
    out += ["## Loading", "", "**🤗 datasets** (streaming; caption-only samples have `mp4 = None`):", "", "```python",
            "from datasets import load_dataset", "",
            f'ds = load_dataset("{repo}", split="train", streaming=True' + (f', revision="{rev}"' if rev != "main" else "") + ")",
            "for sample in ds:",
            '    record = sample["json"]      # clip_id, conversation, metadata, media',
            '    mp4 = sample["mp4"]          # bytes of the clip, or None', "```", "",
            "**webdataset** (reads the shards over HTTP; private repos: add an `Authorization: Bearer` header):", "",
            "```python", "import json, urllib.request", "import webdataset as wds", "",
            f'listing = json.load(urllib.request.urlopen("{host}/datasets/{repo}/resolve/{rev}/shardlist.json"))',
            f'urls = ["{host}/datasets/{repo}/resolve/{rev}/" + s["url"] for s in listing["shardlist"]]',
            "for sample in wds.WebDataset(urls, shardshuffle=False):",
            '    record = json.loads(sample["json"]); mp4 = sample.get("mp4")', "```", "",
            "One sample without reading a shard: look its key up in `seek_index.parquet` and send one range request "
            f"(`Range: bytes=offset-(offset+size-1)`) to `{tar_url}`.", "",
            "**The reference `train.py`** (showlab/livecc) through the JSONL: extract the `mp4` members, then run it "
            "from that folder, where each line's `video` resolves:", "", "```bash",
            f"huggingface-cli download {repo} --repo-type dataset --local-dir release" + (f" --revision {rev}" if rev != "main" else ""),
            "mkdir -p release/clips && for t in release/data/train/*.tar; do tar -xf \"$t\" -C release/clips --wildcards '*.mp4'; done",
            f"cd release/clips && torchrun --nproc_per_node 8 /path/to/livecc/train.py --annotation_paths ../{facts['jsonl']} ...",
            "```", "",
            "livecc-pipeline's own trainer reads the shards directly: `livecc train pretrain --shards release` "
            "(or the JSONL with `media_root` set to the extracted folder).", ""]

    out += ["## Provenance and rights", "",
            f"* config hash `{prov['config_hash']}` (every stage's settings, chained)",
            f"* code version {', '.join(f'`{v}`' for v in prov['code_versions']) or '-'} (build), "
            f"`{prov['release_code_version']}` (release)",
            f"* built {prov['built_from'] or '-'} to {prov['built_to'] or '-'}",
            f"* licence of this release: `{rcfg.license}`" + (f" ({rcfg.license_name})" if rcfg.license_name else ""), "",
            "The videos, their captions and titles belong to their creators and platforms; this release claims no "
            "rights in them. It is shared for research on streaming video-language models; check the terms of the "
            "sources before any other use, and honour takedown requests.", ""]
    return "\n".join(out)


def public_config(payload: Any, forbidden: set[str]) -> Any:
    """A stage config for the card: string values that are local paths (absolute, ``~``,
    ``file:``) or contain one of ``forbidden`` become ``"<local path>"``; non-finite floats
    become None."""
    if isinstance(payload, dict):
        return {k: public_config(v, forbidden) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [public_config(v, forbidden) for v in payload]
    if isinstance(payload, str):
        if payload.startswith(("/", "~", "file:", "./", "../")) or any(f and f in payload for f in forbidden):
            return "<local path>"
        return payload
    if isinstance(payload, float) and not math.isfinite(payload):
        return None
    return payload


def category_plot(categories: dict[str, int]) -> bytes:
    """A horizontal bar chart (PNG) of clips per category, the 20 largest."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    items = list(categories.items())[:20][::-1]
    fig = Figure(figsize=(6, max(2.0, 0.3 * len(items) + 1)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh([k for k, _ in items], [v for _, v in items], color="#3b6ea8")
    ax.set_xlabel("clips")
    ax.set_title(f"clips per category (n={sum(categories.values())})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _n(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _media_sentence(t: dict[str, Any]) -> str:
    if t["samples_with_mp4"] == t["samples"]:
        return "every sample carries its clip as an `mp4` member."
    if not t["samples_with_mp4"]:
        return "the samples are caption-only (no `mp4` member): `video` names the source video."
    return (f"{t['samples_with_mp4']:,} samples carry their clip as an `mp4` member, "
            f"{t['samples'] - t['samples_with_mp4']:,} are caption-only.")


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = ["card_data", "render_card", "size_category", "public_config", "category_plot", "features"]

