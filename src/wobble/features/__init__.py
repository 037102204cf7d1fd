"""Features: point-in-time snapshots, declared once in YAML and compiled to DuckDB SQL.

Reads `persons`, `contacts` and `tags`; writes `feature_snapshots`, one row per (person_id, as_of).
The catalogue (`catalogue`, in the language of `language` and `aggregates`, plus the plain functions
of `derived`) compiles to one query (`compile`) that `build` runs in passes; `feeds` holds the one
rule for "a data feed went quiet" that every stage uses.
"""

from wobble.features.build import (
    FeaturesResult,
    build_features,
    compute_snapshots,
    dates_to_build,
    dates_without_rows,
    shared_tables,
)
from wobble.features.catalogue import Catalogue, Feature, catalogue_markdown, load_catalogue
from wobble.features.compile import cohort_sql
from wobble.features.feeds import data_start

__all__ = ["Catalogue", "Feature", "FeaturesResult", "build_features", "catalogue_markdown", "cohort_sql",
           "compute_snapshots", "data_start", "dates_to_build", "dates_without_rows", "load_catalogue", "shared_tables"]
