"""The Prefect flow that releases a finished corpus (docs/recipes.md#release): stage the release
folder with its card, then upload it to a Hugging Face Hub dataset repo and/or write it to an
fsspec URL, then verify.

The work is in the ``release`` package (why it is a package of its own: ``release/__init__.py``);
this module only makes each step a Prefect task, publishes a Markdown artifact and composes the
commit message. Tasks take the config path, never a token: Prefect records task parameters,
so the upload task resolves the token itself (``HF_TOKEN``, the saved login, or the Prefect
Secret block named by ``token_secret``). Retries: none at the Prefect level; the Hub requests
have their own retry layer (:mod:`release.hub`) and a re-run resumes (docs/architecture.md,
"Retries").
"""
from __future__ import annotations

import re
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from flows.build import open_pipeline
from release.config import release_config
from release.folder import human_bytes, load_staged, stage_release


@task(name="stage-release", retries=0)
def stage_task(config_path: str, overrides: list[str], allow_partial: bool, repo: str | None,
               revision: str | None) -> dict[str, Any]:
    """Check the corpus and stage ``<root>/<corpus>/release/`` with its card (release.folder)."""
    from huggingface_hub import constants

    pipe = open_pipeline(config_path, overrides)
    staged = stage_release(pipe, release_config(pipe.cfg), allow_partial=allow_partial, repo_id=repo,
                           endpoint=constants.ENDPOINT, revision=revision)
    f = staged.facts
    get_run_logger().info("staged %d files (%s) in %s", len(staged.files), human_bytes(staged.size_bytes), staged.folder)
    return {"folder": staged.folder, "files": [[x.path, x.size_bytes] for x in staged.files],
            "bytes": staged.size_bytes, "card": staged.card, "corpus": f["corpus"], "samples": f["totals"]["samples"],
            "shards": f["files"]["shards"], "missing": f["missing"], "config_hash": f["provenance"]["config_hash"],
            "code_versions": f["provenance"]["code_versions"],
            "release_code_version": f["provenance"]["release_code_version"]}


@task(name="upload-release", retries=0)
def upload_task(config_path: str, overrides: list[str], folder: str, repo: str, message: str, description: str,
                private: bool, revision: str | None, tag: str | None, token_secret: str | None,
                progress: bool | None) -> dict[str, Any]:
    """Upload the staged folder to the Hub, tag and verify it (release.hub)."""
    from release.hub import resolve_token, upload_release

    pipe = open_pipeline(config_path, overrides)
    result = upload_release(load_staged(folder), repo, token=resolve_token(token_secret),
                            rcfg=release_config(pipe.cfg), message=message, description=description,
                            private=private, revision=revision, tag=tag, progress=progress)
    get_run_logger().info("released to %s (commit %s); verified %s", result["url"], result["commit"][:12],
                          result["verified"])
    return result


@task(name="publish-release", retries=0)
def target_task(folder: str, target: str) -> dict[str, Any]:
    """Write the staged folder to an fsspec URL and check the sizes there (release.target)."""
    from release.target import publish_to_target

    result = publish_to_target(load_staged(folder), target)
    get_run_logger().info("wrote %d files (%s) to %s", result["sent_files"], human_bytes(result["sent_bytes"]), target)
    return result


def commit_message(staged: dict[str, Any]) -> tuple[str, str]:
    """The commit summary (corpus, config hash, code version) and description of a release."""
    code = ", ".join(staged["code_versions"]) or staged["release_code_version"]
    summary = (f"Release {staged['corpus']}: {staged['samples']} clips in {staged['shards']} shards "
               f"(config {staged['config_hash']}, code {code})")
    lines = [f"corpus: {staged['corpus']}", f"config hash: {staged['config_hash']}",
             f"build code version: {code}", f"release code version: {staged['release_code_version']}",
             f"files: {len(staged['files'])} ({human_bytes(staged['bytes'])})"]
    if staged["missing"]:
        lines.append("partial release, missing: " + "; ".join(staged["missing"]))
    return summary, "\n".join(lines)


@flow(name="livecc-release", log_prints=True)
def release_corpus(config_path: str, overrides: list[str] | None = None, repo: str | None = None,
                   private: bool = False, revision: str | None = None, tag: str | None = None,
                   dry_run: bool = False, allow_partial: bool = False, target: str | None = None,
                   token_secret: str | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Release the corpus of ``config_path``: stage the folder, then (unless ``dry_run``) upload
    it to the Hub dataset repo ``repo`` and/or write it to the fsspec URL ``target``.

    Raises:
        ValueError: neither ``repo`` nor ``target`` (nor ``dry_run``).
        release.folder.IncompleteCorpus / ReleaseError: see ``release.folder`` and ``release.hub``.
    """
    if not (repo or target or dry_run):
        raise ValueError("nothing to release to: give repo (OWNER/NAME) and/or target (an fsspec URL)")
    overrides = overrides or []
    staged = stage_task(config_path, overrides, allow_partial, repo, revision)
    result: dict[str, Any] = {"staged": staged}
    if not dry_run:
        if target:
            result["target"] = target_task(staged["folder"], target)
        if repo:
            message, description = commit_message(staged)
            result["hub"] = upload_task(config_path, overrides, staged["folder"], repo, message, description, private,
                                        revision, tag, token_secret, progress)
    key = re.sub(r"[^a-z0-9-]+", "-", f"{staged['corpus']}-release".lower()).strip("-")
    create_markdown_artifact(key=key, markdown=_summary_markdown(result, dry_run),
                             description=f"release of corpus {staged['corpus']}")
    return result


def _summary_markdown(result: dict[str, Any], dry_run: bool) -> str:
    s = result["staged"]
    lines = [f"# Release of `{s['corpus']}`" + (" (dry run: nothing sent)" if dry_run else ""), "",
             f"{s['samples']} clips in {s['shards']} shards; {len(s['files'])} files, {human_bytes(s['bytes'])}; "
             f"config `{s['config_hash']}`.", ""]
    if s["missing"]:
        lines += ["**Partial:** " + "; ".join(s["missing"]), ""]
    if "hub" in result:
        h = result["hub"]
        lines += [f"Hub: {h['url']} at `{h['commit']}`" + (f", tag `{h['tag']}`" if h["tag"] else ""),
                  f"sent {human_bytes(h['sent_bytes'])}; verified {h['verified']}", ""]
    if "target" in result:
        t = result["target"]
        lines += [f"Target: {t['url']}: sent {t['sent_files']} files ({human_bytes(t['sent_bytes'])})", ""]
    lines += ["| file | bytes |", "|---|---:|"] + [f"| `{p}` | {n:,} |" for p, n in s["files"][:200]]
    return "\n".join(lines)
