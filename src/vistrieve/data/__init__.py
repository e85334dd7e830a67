"""Corpora from folders and manifests, task datasets, and the built-in shapes world."""

from __future__ import annotations

from vistrieve.data.manifest import (
    FolderResult,
    ManifestError,
    ManifestResult,
    SkippedFile,
    corpus_from_folder,
    corpus_from_manifest,
    scan_folder,
    write_manifest,
)
from vistrieve.data.tasks import DialogDataset, HashingDataset, PairedEmbeddings

__all__ = [
    "DialogDataset",
    "FolderResult",
    "HashingDataset",
    "ManifestError",
    "ManifestResult",
    "PairedEmbeddings",
    "SkippedFile",
    "corpus_from_folder",
    "corpus_from_manifest",
    "scan_folder",
    "write_manifest",
]
