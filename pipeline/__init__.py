"""The engine of livecc-pipeline: the stage contract, config, storage, parts and manifests,
Ray execution, reports and the Prefect bring-up. It imports no stage, recipe, flow or CLI.
It knows stages, parts and resources, but nothing about videos (docs/architecture.md).
"""
__version__ = "0.1.0"
