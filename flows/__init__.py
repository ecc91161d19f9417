"""Prefect flows: corpus builds and single-stage re-runs (:mod:`flows.build`), build-then-train
(:mod:`flows.train`), and their deployments. What a build runs is a recipe (:mod:`recipes`)."""
