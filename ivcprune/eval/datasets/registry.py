"""Dataset names (docs/HARNESS.md §4) -> dataset class; loading with `--limit` and `--image-mode`."""

from __future__ import annotations

import difflib
from pathlib import Path

from ..tsv import DataError, read_tsv
from .base import Dataset
from .grounding import GroundingDataset
from .mcq import CircularMCQDataset, MCQDataset
from .yorn import YesNoDataset


class UnknownDataset(ValueError):
    """A usage error: the name is not registered (names are case-sensitive)."""


def _grounding_names() -> list[str]:
    splits = {"RefCOCO": ("testA", "testB", "val"), "RefCOCO+": ("testA", "testB", "val"), "RefCOCOg": ("test", "val")}
    base = [f"{d}_{s}" for d, ss in splits.items() for s in ss]
    return base + [f"{n}_for_qwen25vl" for n in base]


def _vqa_class():
    from .vqa import VQADataset  # imported lazily: the open-VQA extension is optional
    return VQADataset


REGISTRY: dict[str, tuple[str, object]] = {
    **{n: ("VG", GroundingDataset) for n in _grounding_names()},
    **{n: ("MCQ", MCQDataset) for n in ("SEEDBench_IMG", "MMStar", "RealWorldQA", "AI2D_TEST", "ScienceQA_TEST")},
    **{n: ("MCQ", CircularMCQDataset) for n in ("MMBench_DEV_EN", "MMBench_DEV_EN_V11")},
    **{n: ("YN", YesNoDataset) for n in ("MME", "POPE", "HallusionBench")},
    **{n: ("VQA", _vqa_class) for n in ("TextVQA_VAL", "ChartQA_TEST", "DocVQA_VAL", "OCRBench")},
}


def list_datasets(type_: str | None = None) -> list[str]:
    """Registered names in table order, optionally of one type (VG, MCQ, YN, VQA)."""
    return [n for n, (t, _) in REGISTRY.items() if type_ is None or t == type_]


def check_name(name: str) -> str:
    """The dataset type; raises UnknownDataset listing the nearest registered names."""
    if name in REGISTRY:
        return REGISTRY[name][0]
    near = difflib.get_close_matches(name, list(REGISTRY), n=5, cutoff=0.4)
    near += [n for n in REGISTRY if n.lower() == name.lower() and n not in near]
    hint = f"; nearest: {', '.join(near)}" if near else f"; registered: {', '.join(REGISTRY)}"
    raise UnknownDataset(f"unknown dataset {name!r}{hint}")


def dataset_type(name: str) -> str:
    return check_name(name)


def load_dataset(name: str, *, root: Path | None = None, limit: int | None = None,
                 image_mode: str = "vlmeval", path: Path | None = None) -> Dataset:
    """Read and validate `$LMUData/NAME.tsv`; raises UnknownDataset (usage) or DataError (pair fails)."""
    type_ = check_name(name)
    cls = REGISTRY[name][1]
    if cls is _vqa_class:
        cls = _vqa_class()
    data = read_tsv(name, root=root, path=path, grounding=type_ == "VG", limit=limit)
    return cls(data, image_mode=image_mode)


__all__ = ["REGISTRY", "DataError", "UnknownDataset", "check_name", "dataset_type", "list_datasets", "load_dataset"]
