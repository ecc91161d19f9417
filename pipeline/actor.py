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

    def run_chain(self, task: dict[str, Any]) -> list[dict[str, Any]]:
        return self.runner.run_chain(task)
