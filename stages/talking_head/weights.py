"""Finding the model weights: a configured directory, ``LIVECC_MODEL_DIR``, or the usual caches.

Weights are never committed. When one is missing, :func:`find_weights` raises
``FileNotFoundError`` with what to download and where to put it.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path

#: where each kind of weight comes from (for the error message)
DOWNLOADS = {
    "asd": ("Light-ASD weights (MIT, 4.2 MB)",
            "https://github.com/Junhua-Liao/Light-ASD/raw/main/weight/finetuning_TalkSet.model "
            "(also in showlab/livecc: data/production/distributed_lighter_asd/finetuning_TalkSet.model)"),
    "detector": ("SCRFD-500M face detector (insightface buffalo_sc, non-commercial research licence)",
                 "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_sc.zip "
                 "(unzip; the detector is det_500m.onnx)"),
}


def search_dirs(model_dir: str | None) -> list[Path]:
    """Directories searched, in order: ``model_dir``, ``$LIVECC_MODEL_DIR``, ``~/.cache/livecc/models``,
    insightface's model folders (``~/.insightface/models/*``), Hugging Face hub snapshots."""
    dirs: list[Path] = []
    for d in (model_dir, os.environ.get("LIVECC_MODEL_DIR")):
        if d:
            dirs.append(Path(d).expanduser())
    dirs.append(Path("~/.cache/livecc/models").expanduser())
    insightface_root = Path(os.environ.get("INSIGHTFACE_HOME", "~/.insightface")).expanduser() / "models"
    dirs += sorted(Path(p) for p in glob.glob(str(insightface_root / "*")))
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
    dirs += sorted(Path(p) for p in glob.glob(os.path.join(os.path.expanduser(hub), "models--*", "snapshots", "*")))
    return dirs


def find_weights(kind: str, names: list[str], model_dir: str | None) -> str:
    """The first existing file among ``names`` (file names, or paths) in :func:`search_dirs`.

    ``kind`` is ``"asd"`` or ``"detector"`` (it picks the download hint). Raises
    ``FileNotFoundError`` saying what to download and where to put it.
    """
    dirs = search_dirs(model_dir)
    for name in names:
        p = Path(name).expanduser()
        if p.is_absolute() or os.sep in name:
            if p.is_file():
                return str(p)
            continue
        for d in dirs:
            for candidate in (d / name, *sorted(d.glob(f"**/{name}"))[:1]) if d.is_dir() else ():
                if candidate.is_file():
                    return str(candidate)
    what, url = DOWNLOADS[kind]
    target = dirs[0] if (model_dir or os.environ.get("LIVECC_MODEL_DIR")) else Path("~/.cache/livecc/models").expanduser()
    raise FileNotFoundError(
        f"talking_head: {what} not found (looked for {', '.join(names)} in: "
        f"{', '.join(str(d) for d in dirs) or 'no directories'}). Download {url} and save it as "
        f"{target / names[0]}, or set the stage's model_dir (or the LIVECC_MODEL_DIR environment "
        f"variable) to the folder that holds it.")
