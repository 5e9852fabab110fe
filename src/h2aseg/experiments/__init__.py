"""Experiments: methods x seeds -> the paper's tables (``h2aseg experiment --config FILE --out DIR``).

``spec`` (the experiment file), ``plan`` (runs, shards, output layout), ``locks`` (one lock per run),
``steps`` (one run's stages), ``runner`` (the loop), ``tables`` (Table 1, Table 2, cost), ``cost`` (the
per-network cost probe).
"""

from h2aseg.experiments.spec import ExperimentSpec, SpecError, load_spec

__all__ = ["ExperimentSpec", "SpecError", "load_spec"]
