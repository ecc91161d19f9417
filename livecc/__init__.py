"""The ``livecc`` command (:mod:`livecc.cli`); ``python -m livecc`` runs it too."""
