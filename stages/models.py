"""Finding a model checkpoint folder on this machine, never downloading one.

Shared by the stages that load Hugging Face style checkpoints (Whisper conversions for
CTranslate2, transformers models). Weights are never committed and never fetched at run time:
a stage calls :func:`resolve_checkpoint` in ``setup()``, and a miss raises
:class:`MissingWeightsError` with the exact download command and where to put the files.
"""
from __future__ import annotations

import os
from typing import Callable, Iterable


class MissingWeightsError(FileNotFoundError):
    """A checkpoint is not on this machine; the message says what to download and where."""


def has_files(*names: str) -> Callable[[str], bool]:
    """A checkpoint test: the folder holds all of ``names`` (e.g. ``config.json``)."""
    return lambda path: all(os.path.isfile(os.path.join(path, n)) for n in names)


def resolve_checkpoint(model: str, *, stage: str, repo_id: str | None, model_dir: str | None,
                       is_checkpoint: Callable[[str], bool], aliases: Iterable[str] = (),
                       what: str = "weights", model_key: str = "model") -> str:
    """The checkpoint folder for ``model``, found without any download.

    Search order: ``model`` itself as a folder; ``<dir>/<model>``, ``<dir>/<last part of model>``
    and ``<dir>/<alias>`` for ``dir`` in (``model_dir``, ``$LIVECC_MODEL_DIR``), and each of those
    dirs as a Hugging Face cache; then the default Hugging Face cache (``$HF_HOME``/
    ``$HF_HUB_CACHE``), by ``repo_id``.

    Args:
        model: a folder, a short name (``large-v3-turbo``) or a Hub id (``Qwen/Qwen2-1.5B-Instruct``).
        stage: the stage's config section, named in the error (``stages.<stage>.model_dir``).
        repo_id: the Hub repository the weights come from (for the cache and the error), if known.
        is_checkpoint: whether a folder holds a usable checkpoint (see :func:`has_files`).
        model_key: the stage's config key that names the model (``stages.<stage>.<model_key>``).

    Raises:
        MissingWeightsError: not found, or ``model`` is a folder without a checkpoint.
    """
    if os.path.isdir(model):
        if is_checkpoint(model):
            return model
        raise MissingWeightsError(f"{model} is a folder but not a usable {what} checkpoint")
    searched: list[str] = []
    tail = model.rsplit("/", 1)[-1]
    for root in dict.fromkeys(d for d in (model_dir, os.environ.get("LIVECC_MODEL_DIR")) if d):
        for name in dict.fromkeys((model, tail, *aliases)):
            cand = os.path.join(root, name)
            searched.append(cand)
            if is_checkpoint(cand):
                return cand
        searched.append(f"{root} (as a Hugging Face cache)")
        found = _from_hf_cache(repo_id, root, is_checkpoint)
        if found:
            return found
    try:
        from huggingface_hub import constants

        searched.append(f"{constants.HF_HUB_CACHE} (Hugging Face cache)")
    except ImportError:
        searched.append("the Hugging Face cache")
    found = _from_hf_cache(repo_id, None, is_checkpoint)
    if found:
        return found
    repo = repo_id or f"<the Hub repository of {model}>"
    dest = os.path.join(model_dir or os.environ.get("LIVECC_MODEL_DIR") or "/models", tail)
    raise MissingWeightsError(
        f"{what} {model!r} not found. Searched: {'; '.join(searched)}. "
        f"Download them once on a machine with internet access, e.g.\n"
        f"    huggingface-cli download {repo} --local-dir {dest}\n"
        f"and set stages.{stage}.model_dir (or $LIVECC_MODEL_DIR) to {os.path.dirname(dest)}, "
        f"or stages.{stage}.{model_key} to the folder itself. Without --local-dir the download goes "
        f"to the Hugging Face cache, which is searched too.")


def _from_hf_cache(repo_id: str | None, cache_dir: str | None, is_checkpoint: Callable[[str], bool]) -> str | None:
    if repo_id is None:
        return None
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, cache_dir=cache_dir, local_files_only=True)
    except Exception:  # noqa: BLE001 - any miss (not cached, offline, bad id) means "not here"
        return None
    return path if is_checkpoint(path) else None
