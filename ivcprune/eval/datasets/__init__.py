"""Benchmarks: name registry, prompt building and scoring (docs/HARNESS.md §4-§6)."""

from ..tsv import BadImage, DataError
from .base import Dataset, ScoreReport
from .registry import UnknownDataset, check_name, dataset_type, list_datasets, load_dataset

__all__ = ["BadImage", "DataError", "Dataset", "ScoreReport", "UnknownDataset", "check_name", "dataset_type",
           "list_datasets", "load_dataset"]
