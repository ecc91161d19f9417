"""The Ray actor that runs parts. One instance per actor process; ``setup()`` runs once per
stage (and config) the actor is asked to run, then the stage is reused for later parts."""
from __future__ import annotations

import json
import logging
from typing import Any

from pipeline.stage import Stage
from pipeline.storage import Storage
from pipeline.worker import execute_part


class StageWorker:
    def __init__(self) -> None:
        self._stages: dict[tuple[str, ...], Stage] = {}
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def _stage(self, spec: dict[str, Any]) -> Stage:
        cls: type[Stage] = spec["stage_cls"]
        ctx = spec["context"]
        # the whole config, runtime fields (device, proxies, ...) included: a changed setting gets a
        # fresh stage even where the output hash stays the same; and several builds (roots) may
        # share one actor within a session
        key = (f"{cls.__module__}.{cls.__qualname__}", json.dumps(spec["config"], sort_keys=True, default=str),
               ctx.storage.url, ctx.corpus)
        stage = self._stages.get(key)
        if stage is None:
            stage = cls(cls.Config.model_validate(spec["config"]), spec["context"])
            stage.setup()
            self._stages[key] = stage
        return stage

    def run_part(self, spec: dict[str, Any]) -> dict[str, Any]:
        stage = self._stage(spec)
        storage: Storage = stage.context.storage
        if spec["source"]:
            rows = list(spec["input"])
        else:
            rows = storage.read_table(spec["input"]).to_pylist()
        return execute_part(stage, storage, spec["part"], rows)
