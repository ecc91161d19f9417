"""The engine of livecc-pipeline: stages, parts, storage, Ray execution, manifests, reports, CLI.

It knows stages, parts and resources, but nothing about videos (DESIGN.md section 2).
"""
__version__ = "0.1.0"
