"""The ``--compute`` choices: a constants-only module (no torch import), for the CLI and the pipeline schema.

``auto`` applies the CPU inference levers chosen by rule (featcache.extraction.levers);
``plain`` runs the plain eager forward. Neither is part of the feature key: the levers
change float rounding only, and a feature set records the levers its rows were computed with.
"""

COMPUTE_MODES = ("auto", "plain")
