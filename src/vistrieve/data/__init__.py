"""Corpora from folders and manifests, task datasets, and the built-in shapes world."""

from __future__ import annotations

from vistrieve.data.manifest import (
    ManifestError,
    ManifestResult,
    corpus_from_folder,
    corpus_from_manifest,
    write_manifest,
)
from vistrieve.data.tasks import DialogDataset, HashingDataset, PairedEmbeddings

__all__ = [
    "DialogDataset",
    "HashingDataset",
    "ManifestError",
    "ManifestResult",
    "PairedEmbeddings",
    "corpus_from_folder",
    "corpus_from_manifest",
    "write_manifest",
]
