"""Corpus recipes: the ordered stage list of each corpus a build config can name.

A recipe is a module ``recipes/<name>.py`` with a ``STAGES`` list of :class:`pipeline.stage.Stage`
classes; adding a stage to a corpus is one line there. A build config names its recipe with
the top-level key ``flow``. The Prefect code that runs a recipe is in ``flows/``.
"""
from __future__ import annotations

import importlib
import pkgutil

from pipeline.config import BuildConfig, ConfigError
from pipeline.stage import Stage


def names() -> list[str]:
    """The recipes there are, by module name."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def recipe_stages(cfg: BuildConfig) -> list[type[Stage]]:
    """The ordered stages of the recipe ``cfg.flow`` names.

    Raises:
        ConfigError: no such recipe (the message names the file and the ``flow`` key).
    """
    known = names()
    if cfg.flow not in known:
        raise ConfigError(f"{cfg.path or 'config'}: flow: no recipe {cfg.flow!r} "
                          f"(known: {', '.join(known)}; a recipe is a module recipes/<name>.py with a STAGES list)")
    return list(importlib.import_module(f"{__name__}.{cfg.flow}").STAGES)
