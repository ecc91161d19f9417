"""Prefect flows: corpus builds, single-stage re-runs, deployments.

A flow module lists its stages in order (``STAGES``); adding a stage to a corpus is one
line there. ``config.flow`` names the module (``pretrain`` -> :mod:`flows.pretrain`).
"""
from __future__ import annotations

import importlib

from pipeline.stage import Stage


def flow_stages(flow: str) -> list[type[Stage]]:
    """The ordered stages of ``flows/<flow>.py``.

    Raises:
        KeyError: no such flow module.
    """
    try:
        module = importlib.import_module(f"flows.{flow}")
    except ModuleNotFoundError as exc:
        if exc.name == f"flows.{flow}":
            raise KeyError(f"no flow {flow!r} (expected a module flows/{flow}.py with a STAGES list)") from None
        raise
    return list(module.STAGES)
