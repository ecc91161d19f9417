"""Finding a model checkpoint folder on this machine, never downloading one.

Shared by the stages that load Hugging Face style checkpoints (Whisper conversions for
CTranslate2, transformers models). Weights are never committed and never fetched at run time:
a stage calls :func:`resolve_checkpoint` in ``setup()``, and a miss raises
:class:`MissingWeightsError` with the exact download command and where to put the files.
"""
from __future__ import annotations

import hashlib
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


# -- what a stage's output depends on besides its input: the model files ------------------------

_HASHED: dict[tuple[str, int, int], str] = {}
_WHOLE_BYTES = 64 << 20     # files up to this size are hashed whole
_EDGE_BYTES = 1 << 20       # larger ones: size plus their first and last MiB


def files_fingerprint(paths: Iterable[str]) -> dict[str, str]:
    """``file name -> "<size>:<sha256 prefix>"`` for model files: a whole-file hash up to 64 MB,
    beyond that the size and the first and last MiB (a multi-GB checkpoint is not read whole on
    every ``livecc status``). Cached per path, size and mtime for the process."""
    out = {}
    for path in sorted(paths):
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _HASHED:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                if st.st_size <= _WHOLE_BYTES:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
                else:
                    h.update(f.read(_EDGE_BYTES))
                    f.seek(st.st_size - _EDGE_BYTES)
                    h.update(f.read(_EDGE_BYTES))
            _HASHED[key] = f"{st.st_size}:{h.hexdigest()[:16]}"
        out[os.path.basename(path)] = _HASHED[key]
    return out


def checkpoint_fingerprint(path: str) -> dict[str, str]:
    """:func:`files_fingerprint` of a checkpoint: the file itself, or every file of its folder
    (and one level of subfolders, as tokenizer files sometimes are), hidden files aside."""
    if os.path.isfile(path):
        return files_fingerprint([path])
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if root == path else []
        files += [os.path.join(root, n) for n in names if not n.startswith(".")]
    return files_fingerprint(files)


def model_fingerprint(find: Callable[[], str | list[str]], configured: object) -> dict[str, object]:
    """The fingerprint of the model files ``find()`` resolves (a path or paths), or, where they
    are not on this machine (a driver without the weights its workers have), of what the config
    names: a part's key then changes when the weights turn up here."""
    try:
        found = find()
    except (FileNotFoundError, ImportError):
        return {"configured": configured}
    merged: dict[str, str] = {}
    for p in [found] if isinstance(found, str) else found:
        merged.update(checkpoint_fingerprint(p))
    return {"files": merged}
