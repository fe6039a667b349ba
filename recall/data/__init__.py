"""Interaction data: file readers (Parquet, CSV, MovieLens), the built-in dataset and a synthetic generator."""

from recall.data.readers import (
    builtin_dataset_path,
    read_interactions,
    read_user_features,
    write_interactions,
)
from recall.data.synthetic import item_catalogue, synthesize

__all__ = [
    "builtin_dataset_path",
    "item_catalogue",
    "read_interactions",
    "read_user_features",
    "synthesize",
    "write_interactions",
]
