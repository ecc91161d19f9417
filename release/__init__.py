"""Releasing a finished corpus: the release folder, its dataset card, the upload to a Hugging
Face Hub dataset repo (or any fsspec folder) and the check after it (docs/recipes.md#release).

Where it sits, and why. The release knows videos, clips and the shard format (the card
describes the recipe, the conversation record and the seek index), so it cannot live in
``pipeline/``, which knows stages, parts and resources but no videos. It is not a stage either:
it produces no part files, it runs after a build on a corpus that is complete, and it talks to
a remote service. So it is a package of its own between ``flows/`` and the engine: it imports
only ``pipeline/`` (status, manifests, storage, reports) and ``schemas/`` (seek index, record),
never a stage, a recipe, a flow or the CLI; ``flows/release.py`` wraps it in a Prefect flow and
``livecc release`` runs that flow.

* :mod:`release.config` -- the ``release:`` section of the build config.
* :mod:`release.folder` -- refusing an incomplete corpus; staging ``<root>/<corpus>/release/``.
* :mod:`release.card` -- the dataset card (``README.md``) and the plots.
* :mod:`release.hub` -- the upload (``create_commit`` with pre-uploads in batches), our retry
  layer around every Hub request, the tag and the verification.
* :mod:`release.target` -- the same folder written to an fsspec URL.
"""
