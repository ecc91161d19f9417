"""The Ray actor that runs parts: a :class:`pipeline.worker.StageRunner` in a Ray worker
process; ``setup()`` runs once per stage and config, then the stage is reused for later parts."""
from __future__ import annotations

import logging
from typing import Any

from pipeline.worker import StageRunner


class StageWorker:
    def __init__(self) -> None:
        self.runner = StageRunner()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def ready(self) -> bool:
        """Answers once the actor process is up (placed by Ray and started)."""
        return True

    def warm(self, specs: list[dict[str, Any]]) -> dict[str, float]:
        """Set these stages up now (models loaded) for the parts that follow; returns each
        stage's setup seconds. A stage that cannot be set up is left for its first part to report."""
        for spec in specs:
            try:
                self.runner.stage(spec)
            except Exception:  # noqa: BLE001 - the part that needs it raises the same error, per part
                pass
        return {spec["cls"].name: self.runner.setup_s[spec["cls"].name] for spec in specs
                if spec["cls"].name in self.runner.setup_s}

    def run_chain(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        return self.runner.run_chain(task)
