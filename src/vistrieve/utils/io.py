"""Atomic, pickle-free persistence helpers.

Every file vistrieve saves goes through these functions: data is written to a temporary
file in the destination directory, flushed to disk, then renamed over the destination, so
a crash never leaves a half-written file under the final name. Whole directories (indexes,
checkpoints) are assembled in a temporary sibling directory and swapped in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not supported on every platform/filesystem.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], writer: Callable[[Path], object]) -> None:
    """Call ``writer(tmp_path)`` to write a temporary file, then rename it to ``path``.

    Args:
        path: Final destination.
        writer: Writes the full content to the path it is given.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer(tmp)
        # mkstemp creates 0600 files (and some writers, safetensors among them, replace the
        # file they are given); give the result the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save ``array`` as ``.npy`` (never pickled) to ``path`` atomically."""

    def _write(p: Path) -> None:
        with open(p, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)

    atomic_write(path, _write)


def load_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Load a ``.npy`` file without pickle, with a clear error for missing or truncated files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"missing array file {p}")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read array file {p}: it is truncated or corrupt ({exc})") from exc


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed object)`` for every non-blank line of a JSONL file.

    Raises:
        ValueError: a line is not JSON (the file and line are named).
    """
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file with clear errors for missing and malformed files."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"missing file {p}")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON (truncated or corrupt?): {exc}") from exc


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it in on success.

    Yields the temporary directory to fill. On success the old directory (if any) is
    replaced; on failure the temporary directory is removed and the old one is untouched.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def file_record(path: Path) -> dict[str, Any]:
    """Name and byte size of a file, as stored in manifests to detect truncation."""
    return {"name": path.name, "bytes": path.stat().st_size}


def check_files(directory: Path, records: list[dict[str, Any]]) -> None:
    """Check that every file listed in a manifest exists with its recorded size.

    Raises:
        FileNotFoundError: a listed file is missing.
        ValueError: a listed file has another size (truncated or overwritten).
    """
    for rec in records:
        f = directory / rec["name"]
        if not f.is_file():
            raise FileNotFoundError(
                f"{directory}: file {rec['name']!r} listed in the manifest is missing"
            )
        size = f.stat().st_size
        if size != rec["bytes"]:
            raise ValueError(
                f"{f} has {size} bytes but the manifest records {rec['bytes']}: the file is "
                "truncated or was changed after saving; rebuild the index"
            )
