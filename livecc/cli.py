"""The ``livecc`` command line: the top of the tree, above the engine (``pipeline/``), the
recipes (``recipes/``), the Prefect flows (``flows/``) and ``train/``.

Every command takes the build config file (YAML) that names the corpus, its root and its
recipe; ``--set KEY=VALUE`` overrides a key for one run (``--set stages.ingest.path=/data``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

#: set (unless already set) when a command starts, before anything reads them
COMMAND_ENV = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "PREFECT_LOGGING_EXTRA_LOGGERS": "livecc",
               # engine logs outside a flow run (status, tests) stay local instead of warning
               "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore"}

app = typer.Typer(help="livecc-pipeline: build streaming video-LLM corpora from YouTube videos and captions "
                       "(Prefect flows, Ray workers), inspect them and train on them.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _command_env() -> None:
    for k, v in COMMAND_ENV.items():
        os.environ.setdefault(k, v)


stage_app = typer.Typer(help="Run or list single stages of a build.", no_args_is_help=True)
inspect_app = typer.Typer(help="Look inside outputs: shard samples, talking-head decisions.", no_args_is_help=True)
config_app = typer.Typer(help="Show the resolved config (every default filled in) to diff builds.", no_args_is_help=True)
app.add_typer(stage_app, name="stage")
app.add_typer(inspect_app, name="inspect")
app.add_typer(config_app, name="config")
console = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep and logs
# piped output (logs, CI, scripts) gets full-width tables instead of rich's 80-column default
out = Console(width=None if sys.stdout.isatty() else 160)

ConfigArg = typer.Argument(..., help="Build config YAML (see configs/ and the README's 'Config file').",
                           exists=True, dir_okay=False)
SetOpt = typer.Option(None, "--set", help="Override a config key for this run: KEY=VALUE (dotted keys, YAML values). Repeatable.")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "httpx2", "openai", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _pipeline(config: Path, overrides: list[str] | None):
    """The config bound to its recipe; a bad config or an unknown recipe exits 2 with the
    file and key named (before Prefect or Ray is imported)."""
    from pipeline.config import ConfigError, load_config
    from pipeline.pipeline import Pipeline
    from recipes import recipe_stages

    try:
        cfg = load_config(config, overrides)
        return Pipeline(cfg, recipe_stages(cfg))
    except (ConfigError, KeyError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc.args[0] if exc.args else exc}")
        raise typer.Exit(2)


@contextlib.contextmanager
def _services(pipe):
    """The Prefect API for the flow run (a temporary local server unless ``PREFECT_API_URL``
    names one), and Ray started while the server boots.

    Raises:
        RuntimeError: the Prefect server did not start.
    """
    from pipeline.executor import ensure_ray
    from pipeline.prefect_server import PrefectServer

    with PrefectServer(wait=False) as server:
        if server.api_url:  # a local Ray started now passes it on: workers can read Prefect Secret blocks
            os.environ["PREFECT_API_URL"] = server.api_url
        if pipe.cfg.ray.executor == "ray":
            ensure_ray(pipe.cfg)
        server.wait_ready()
        yield server


def _parse_parts(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    parts: set[int] = set()
    for chunk in spec.split(","):
        chunk = chunk.strip()
        if "-" in chunk:
            a, b = chunk.split("-", 1)
            parts.update(range(int(a), int(b) + 1))
        elif chunk:
            parts.add(int(chunk))
    return sorted(parts)


def _ranges(ids: list[int]) -> str:
    if not ids:
        return ""
    out_, start, prev = [], ids[0], ids[0]
    for k in ids[1:] + [None]:
        if k is not None and k == prev + 1:
            prev = k
            continue
        out_.append(f"{start}" if start == prev else f"{start}-{prev}")
        if k is not None:
            start = prev = k
    return ",".join(out_)


def _print_outputs(pipe) -> None:
    for o in pipe.outputs():
        c = o.counts
        what = f" ({c['samples']} samples in {c['shards']} shards)" if {"samples", "shards"} <= set(c) else ""
        out.print(f"{o.kind + ':':<8} {pipe.storage.url_of(o.path)}{what}")
    out.print(f"reports: {pipe.storage.url_of(pipe.cfg.corpus)}/<stage>/_report.md and "
              f"{pipe.storage.url_of(pipe.cfg.corpus)}/_build/report.md (timeline)")


@app.command()
def build(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
          force: bool = typer.Option(False, "--force", help="Redo every part of every stage."),
          progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bars (default: when on a terminal)."),
          verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Build a corpus: run every stage of the config's recipe as a Prefect flow on Ray, parts
    streaming from stage to stage.

    Resumable: parts already done are skipped, so a killed build picks up where it stopped. A
    changed stage config marks that stage's parts stale, and a part downstream is redone only
    if its input changed. Bad items are recorded in each stage's _errors/_rejected part files;
    the build goes on. A failed part stops only its own chain; the build exits 1 naming it.
    """
    _setup_logging(verbose)
    pipe = _pipeline(config, set_)
    try:
        pipe.plan_source()  # new videos become new parts; a discovery that costs requests runs once
    except Exception as exc:  # noqa: BLE001 - a source that cannot list is the user's to fix
        console.print(f"[red]error:[/red] {pipe.stages[0].name}: cannot list the items: {exc}")
        raise typer.Exit(2)
    if not force and pipe.up_to_date():
        out.print(f"Nothing to do: all {len(pipe.stages)} stages of {pipe.cfg.corpus!r} are up to date.")
        _print_outputs(pipe)
        return
    with _services(pipe):
        from flows.build import build_corpus

        results = build_corpus(str(config), set_ or [], force=force, progress=progress)
    t = Table(title=f"corpus {pipe.cfg.corpus!r} (kept, rejected, errors: items in the parts run)")
    for col in ("stage", "parts run", "skipped", "failed", "blocked", "kept", "rejected", "errors"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    for r in results:
        c = r["counts"]
        t.add_row(r["stage"], str(len(r["ran"])), str(r["skipped"]), str(len(r["failed"])), str(len(r["blocked"])),
                  str(c.get("kept", 0)), str(c.get("rejected", 0)), str(c.get("errors", 0)))
    out.print(t)
    _print_outputs(pipe)
    _exit_on_failures(results)


def _exit_on_failures(results: list[dict]) -> None:
    failed = {r["stage"]: r["failed"] for r in results if r["failed"]}
    if failed:
        named = "; ".join(f"{stage} part(s) {_ranges(sorted(int(k) for k in parts))}" for stage, parts in failed.items())
        console.print(f"[red]failed:[/red] {named} (errors: `livecc status CONFIG --json`, the stage's _manifest.json)")
        raise typer.Exit(1)


@stage_app.command("run")
def stage_run(stage: str = typer.Argument(..., help="Stage name (see `livecc stage list CONFIG`)."),
              config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
              parts: Optional[str] = typer.Option(None, "--parts", help="Parts to redo, e.g. 0,3-5 (implies redo of exactly these)."),
              force: bool = typer.Option(False, "--force", help="Redo all parts of the stage, not only pending/stale/failed ones."),
              progress: Optional[bool] = typer.Option(None, "--progress/--no-progress"),
              dry_run: bool = typer.Option(False, "--dry-run", help="Print what the run would do (for `query`: the "
                                           "requests and their estimated cost) and send nothing; no Ray, no Prefect."),
              verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Run one stage again, as a Prefect flow on Ray. Downstream stages become stale where
    this stage's output changed; `livecc build` then redoes just those parts."""
    _setup_logging(verbose)
    pipe = _pipeline(config, set_)
    try:
        pipe.stage(stage)
    except KeyError as exc:
        console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2)
    if dry_run:
        _dry_run(pipe, stage, _parse_parts(parts), force)
        return
    with _services(pipe):
        from flows.build import rerun_stage

        r = rerun_stage(str(config), stage, set_ or [], parts=_parse_parts(parts), force=force, progress=progress)
    c = r["counts"]
    out.print(f"{stage}: ran parts [{_ranges(sorted(r['ran']))}], skipped {r['skipped']}, failed {len(r['failed'])}; "
              f"kept {c.get('kept', 0)}, rejected {c.get('rejected', 0)}, errors {c.get('errors', 0)}")
    out.print(f"report: {r['report']}")
    _exit_on_failures([r])


def _dry_run(pipe, name: str, parts: list[int] | None, force: bool) -> None:
    """The parts a `stage run` would process and the stage's own estimate for their rows."""
    cls = pipe.stage(name)
    index = pipe.index(name)
    states = pipe.states()[name]
    ready = {k for k, (_, fp) in states.items() if fp is not None}  # parts whose input exists
    todo = sorted(k for k in (parts if parts is not None else ready) if k in ready
                  and (parts is not None or force or states[k][0] != "done"))
    plan = pipe.saved_plan(cls) if cls.input_schema is None else None
    rows: list[dict] = []
    for k in todo:
        if plan is not None:
            rows += plan[k]
        else:
            up = pipe.stage_dir(pipe.stages[index - 1].name)
            rows += pipe.storage.read_table(f"{up}/part-{k:05d}.parquet").to_pylist()
    out.print(f"{name}: dry run: {len(todo)} part(s) [{_ranges(todo)}] with {len(rows)} input row(s) would run "
              f"({len(ready) - len(todo)} other part(s) already done)")
    text = pipe.instantiate(cls).dry_run(rows)
    if text:
        out.print(text, markup=False, highlight=False)


@stage_app.command("list")
def stage_list(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt) -> None:
    """List the flow's stages in order, with their resources."""
    pipe = _pipeline(config, set_)
    for i, s in enumerate(pipe.all_stages):
        res = pipe.configs[s.name].resources or s.resources
        doc = (s.__doc__ or "").strip().splitlines()[0] if s.__doc__ else ""
        state = "" if s in pipe.stages else "  (switched off: enabled: false)"
        out.print(f"{i}. {s.name:<16} cpus={res.num_cpus:g} gpus={res.num_gpus:g} "
                  f"batch={res.batch_size or 'part'}  {doc}{state}")


@app.command()
def status(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
           as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show each stage's parts as done, pending, stale, failed or blocked (an upstream part
    failed), with item counts, and the parts in flight while a build runs. Reads manifests and
    the saved plan only: it never lists a source or touches the network."""
    pipe = _pipeline(config, set_)
    rows = pipe.status()
    if as_json:
        out.print_json(json.dumps(rows))
        return
    t = Table(title=f"{pipe.cfg.corpus} @ {pipe.cfg.root}")
    for col in ("stage", "done", "in flight", "pending", "stale", "failed", "blocked", "kept", "rejected", "errors",
                "finalize"):
        t.add_column(col, justify="left" if col in ("stage", "finalize") else "right")
    for r in rows:
        p, c = r["parts"], r["counts"]

        def cell(ids: list[int], full: bool = True) -> str:
            return f"{len(ids)}" + (f" [{_ranges(ids)}]" if ids and full and len(ids) <= 50 else "")
        t.add_row(r["stage"] + ("" if r["planned"] else " (not planned yet)"), cell(p["done"], False),
                  cell(r["in_flight"]), cell(p["pending"]), cell(p["stale"]), cell(p["failed"]), cell(p["blocked"]),
                  str(c.get("kept", 0)), str(c.get("rejected", 0)), str(c.get("errors", 0)), r["finalize"] or "-")
    out.print(t)


@config_app.command("show")
def config_show(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt) -> None:
    """Print the config with every default filled in (what the build really uses)."""
    from pipeline.config import resolved_yaml

    pipe = _pipeline(config, set_)
    out.print(resolved_yaml(pipe.cfg, pipe.all_stages), end="", markup=False, highlight=False)


@inspect_app.command("shards")
def inspect_shards(shard_dir: str = typer.Argument(..., help="Shard folder (path or fsspec URL) holding seek_index.parquet."),
                   index: Optional[int] = typer.Option(None, "--index", "-i", help="Sample position in the seek index."),
                   key: Optional[str] = typer.Option(None, "--key", "-k", help="Sample key (clip_id)."),
                   member: str = typer.Option("json", "--member", "-m", help="Member to print (json) or save (mp4 with --out)."),
                   out_path: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the member's bytes to this file.")) -> None:
    """Print one sample of a shard set, read with one ranged read per member through the seek index."""
    from schemas.seek_index import SeekIndex

    idx = SeekIndex.open(shard_dir)
    which = key if key is not None else (index if index is not None else 0)
    try:
        data = idx.read_member(which, member)
    except (KeyError, IndexError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    if out_path:
        out_path.write_bytes(data)
        out.print(f"wrote {len(data)} bytes of {member} to {out_path}")
    elif member == "json":
        out.print_json(data.decode("utf-8"))
    else:
        out.print(f"{member}: {len(data)} bytes (use --out to save)")


@inspect_app.command("talking-head")
def inspect_talking_head(media: Path = typer.Argument(..., exists=True, dir_okay=False, help="Video file."),
                         start: float = typer.Option(0.0, help="Clip start (s)."),
                         end: Optional[float] = typer.Option(None, help="Clip end (s); default: end of media."),
                         out_path: Path = typer.Option(Path("talking_head.mp4"), "--out", "-o", help="Output mp4."),
                         model_dir: Optional[Path] = typer.Option(None, help="Folder with the Light-ASD and SCRFD weights.")) -> None:
    """Render a clip with face boxes, tracks and per-frame speaking scores, to check a decision by eye."""
    from stages.talking_head.visualize import render
    from stages.talking_head import TalkingHead

    cfg = TalkingHead.Config(**({"model_dir": str(model_dir)} if model_dir else {}))
    if end is None:
        from stages.videos import probe_media
        end = probe_media(str(media))["duration"]
    stats = render(str(media), start, end, str(out_path), cfg)
    out.print(f"wrote {out_path}; talking_head_ratio={stats.get('talking_head_ratio')}")


@app.command()
def serve(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
          cron: str = typer.Option(..., help="Cron schedule, e.g. '0 3 * * *' (daily at 03:00)."),
          name: Optional[str] = typer.Option(None, help="Deployment name (default: <corpus>-build).")) -> None:
    """Serve a scheduled corpus build: a Prefect deployment whose runs resume the corpus.

    Runs until stopped (Ctrl-C). Point PREFECT_API_URL at a Prefect server to see and trigger
    runs in its UI; for work pools and containers see infra/prefect/prefect.yaml.
    """
    _setup_logging()
    _pipeline(config, set_)
    from pipeline.prefect_server import PrefectServer

    with PrefectServer():
        from prefect import serve as prefect_serve

        from flows.build import deployment

        prefect_serve(deployment(str(config), cron, name, set_ or []))


_REPO_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"


@app.command()
def release(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
            repo: Optional[str] = typer.Option(None, "--repo", help="Hub dataset repo OWNER/NAME (created if missing). "
                                               "HF_ENDPOINT and HF_TOKEN are honoured as huggingface_hub honours them."),
            private: bool = typer.Option(False, "--private", help="Create the repo private (an existing repo keeps its visibility)."),
            revision: Optional[str] = typer.Option(None, "--revision", help="Branch to commit to (created from main when missing; default main)."),
            tag: Optional[str] = typer.Option(None, "--tag", help="Tag the release commit, e.g. v1."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Stage the folder, print the files, bytes and card; send nothing."),
            allow_partial: bool = typer.Option(False, "--allow-partial", help="Release although parts are pending, stale or failed; the card says which."),
            target: Optional[str] = typer.Option(None, "--target", help="Write the release folder to this fsspec URL too "
                                                 "(s3://bucket/prefix, gs://..., a local folder)."),
            token_secret: Optional[str] = typer.Option(None, "--token-secret", help="Prefect Secret block holding the Hub token "
                                                       "(default: HF_TOKEN, else the `huggingface-cli login` token)."),
            progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar (default: when on a terminal)."),
            verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Release a finished corpus as a Hugging Face Hub dataset repo (and/or to an fsspec folder).

    Stages <root>/<corpus>/release/ (shards linked, never rewritten; seek index, shard list and
    JSONL with repo paths; the dataset card README.md; plots), uploads it resumably (a killed
    release, run again, sends nothing twice), tags it, verifies sizes and shard sha256 in the
    repo, and prints the repo URL. Refuses a corpus with pending, stale or failed parts unless
    --allow-partial. Runs as a Prefect flow (docs/recipes.md#release).
    """
    import re

    _setup_logging(verbose)
    if not (repo or target or dry_run):
        console.print("[red]error:[/red] nothing to release to: give --repo OWNER/NAME and/or --target URL (or --dry-run)")
        raise typer.Exit(2)
    if repo and not re.match(_REPO_RE, repo):
        console.print(f"[red]error:[/red] --repo {repo!r}: expected OWNER/NAME")
        raise typer.Exit(2)
    pipe = _pipeline(config, set_)
    from pipeline.config import ConfigError
    from release.config import release_config
    from release.folder import ReleaseError, check_releasable, human_bytes

    try:
        release_config(pipe.cfg)
        missing = check_releasable(pipe, allow_partial)   # before Prefect starts: a quick, clear refusal
        if repo and not dry_run:
            from huggingface_hub import constants

            if constants.HF_HUB_OFFLINE:
                raise ReleaseError("HF_HUB_OFFLINE is set: unset it (or set HF_HUB_OFFLINE=0) to upload to the Hub")
            if not token_secret:
                from release.hub import resolve_token
                resolve_token(None)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2)
    except ReleaseError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    if missing:
        console.print("[yellow]partial release[/yellow] (--allow-partial); missing: " + "; ".join(missing))
    from pipeline.prefect_server import PrefectServer

    try:
        with PrefectServer():
            from flows.release import release_corpus

            r = release_corpus(str(config), set_ or [], repo=repo, private=private, revision=revision, tag=tag,
                               dry_run=dry_run, allow_partial=allow_partial, target=target,
                               token_secret=token_secret, progress=progress)
    except ReleaseError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1)
    except Exception as exc:  # noqa: BLE001 - a Hub error after every retry: say what failed, no traceback
        import requests
        from huggingface_hub.errors import HfHubHTTPError
        if isinstance(exc, HfHubHTTPError):
            console.print(f"[red]error:[/red] the Hub refused the release: {str(exc).splitlines()[0]}")
        elif isinstance(exc, requests.RequestException):
            from huggingface_hub import constants
            console.print(f"[red]error:[/red] the Hub at {constants.ENDPOINT} could not be reached after every retry "
                          f"({type(exc).__name__}); run the same command again to resume")
        else:
            raise
        raise typer.Exit(1)
    s = r["staged"]
    if dry_run:
        t = Table(title=f"would release {s['corpus']!r}" + (f" to {repo}" if repo else "") + (f" and {target}" if target else ""))
        t.add_column("file")
        t.add_column("bytes", justify="right")
        shown = s["files"] if len(s["files"]) <= 200 else s["files"][:100]
        for path, size in shown:
            t.add_row(path, f"{size:,}")
        out.print(t)
        if len(shown) < len(s["files"]):
            out.print(f"... and {len(s['files']) - len(shown)} more files")
        out.print(f"total: {len(s['files'])} files, {s['bytes']:,} bytes ({human_bytes(s['bytes'])}); nothing was sent")
        out.print(f"staged in {s['folder']}")
        out.print("--- README.md (dataset card) ---")
        out.print(s["card"], markup=False, highlight=False)
        return
    out.print(f"staged:   {s['folder']} ({len(s['files'])} files, {human_bytes(s['bytes'])}; {s['samples']} clips in "
              f"{s['shards']} shard{'' if s['shards'] == 1 else 's'})")
    if "target" in r:
        t_ = r["target"]
        out.print(f"target:   {t_['url']} (sent {t_['sent_files']} files, {human_bytes(t_['sent_bytes'])}; sizes verified)")
    if "hub" in r:
        h = r["hub"]
        v = h["verified"]
        out.print(f"commit:   {h['commit']}" + (f" (tag {h['tag']})" if h["tag"] else "")
                  + ("" if h["commits"] else " (no change: the repo already held this release)"))
        out.print(f"sent:     {human_bytes(h['sent_bytes'])} as LFS uploads of {human_bytes(h['bytes'])} released "
                  f"(small files travel in the commit; objects the Hub already held are not sent again)"
                  + (f"; retried {sum(h['retries'].values())} request(s): {h['retries']}" if h["retries"] else ""))
        out.print(f"verified: {v['files']} files and their sizes, sha256 of {v['shards_sha256']} "
                  f"shard{'' if v['shards_sha256'] == 1 else 's'}")
        out.print(f"repo:     {h['url']}")


@app.command("build-and-train")
def build_and_train_cmd(config: Path = ConfigArg, set_: Optional[list[str]] = SetOpt,
                        stage: str = typer.Option("pretrain", help="Training stage: pretrain | sft."),
                        output_dir: Optional[str] = typer.Option(None, help="Checkpoint folder, resumed from "
                                                                 "(default: checkpoints/livecc; checkpoints/tiny_smoke with --model tiny)."),
                        model: Optional[str] = typer.Option(None, "--model", help="Initial model (Hub id or folder), or "
                                                            "'tiny': a tiny RANDOM Qwen2-VL built offline, a few CPU steps "
                                                            "that show the training path works."),
                        train_config: Optional[str] = typer.Option(None, help="Training config YAML (default: train/configs/<stage>.yaml)."),
                        train_set: Optional[list[str]] = typer.Option(None, "--train-set", help="Override a training config key: "
                                                                      "KEY=VALUE, e.g. --train-set max_steps=5 (--set is for the build config)."),
                        dry_run: bool = typer.Option(False, "--dry-run", help="Build, then print the torchrun command without training."),
                        verbose: bool = typer.Option(False, "-v", "--verbose")) -> None:
    """Bring a corpus up to date, then train on its shards (one Prefect flow).

    Without a GPU or a checkpoint, `--model tiny` shows the whole path run: e.g.
    `livecc build-and-train configs/pretrain.yaml --model tiny --train-set max_steps=5`.
    """
    _setup_logging(verbose)
    _hint_train_keys(set_ or [])
    pipe = _pipeline(config, set_)
    if output_dir is None and model != "tiny":
        output_dir = "checkpoints/livecc"
    with _services(pipe):
        from flows.train import build_and_train

        r = build_and_train(str(config), stage=stage, output_dir=output_dir, train_config=train_config,
                            train_overrides=train_set or [], overrides=set_ or [], dry_run=dry_run, model=model)
    out.print(f"trained on {r['shards']} -> {r['output_dir']}")


def _hint_train_keys(overrides: list[str]) -> None:
    """``--set`` names a training config key: say to use ``--train-set`` (exit 2)."""
    try:
        from train.trainer import TrainConfig
    except Exception:  # noqa: BLE001 - training extras not installed: the build config error says enough
        return
    for item in overrides:
        key = item.split("=", 1)[0].strip().split(".", 1)[0]
        if key in TrainConfig.model_fields and key not in {"stage"}:
            console.print(f"[red]error:[/red] --set {item}: {key!r} is a training config key; "
                          f"use --train-set {item} (--set overrides the build config)")
            raise typer.Exit(2)


@app.command("sample-archive")
def sample_archive(out_dir: Path = typer.Argument(..., help="Folder to create (yt-dlp naming)."),
                   videos: int = typer.Option(3, min=1, help="How many sample videos."),
                   seconds: float = typer.Option(80.0, min=35.0, help="Length of each video (s).")) -> None:
    """Generate a small offline sample archive with ffmpeg: videos plus VTT and json3 captions."""
    from stages.sample_archive import make_sample_archive

    paths = make_sample_archive(out_dir, n_videos=videos, duration_s=seconds)
    out.print(f"wrote {len(paths)} files to {out_dir}")


def _mount_train() -> None:
    try:
        from train.cli import app as train_app
    except Exception as exc:  # noqa: BLE001 - training extras are optional on corpus-only installs
        reason = str(exc)  # `exc` is unbound once the except block ends

        @app.command("train", help="Train Qwen2-VL on produced shards (needs the 'train' extra).")
        def _train_missing() -> None:
            console.print(f"[red]error:[/red] training is unavailable: {reason}. Install with: pip install -e '.[train]'")
            raise typer.Exit(2)
        return
    app.add_typer(train_app, name="train")


_mount_train()

