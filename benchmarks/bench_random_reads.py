"""Random row reads from a memory-mapped file outside the page cache: one thread against
:func:`vistrieve.indexes.sq.gather_rows` (the reader threads of ``ivf_disk``'s re-scoring).

It writes a file of ``--gib`` GiB of random bytes, maps it as rows of ``--row-bytes`` bytes
(256: the 8-bit re-scoring codes of d = 256) with ``madvise(MADV_RANDOM)`` as ``ivf_disk``
does, and for each reader reads ``--rows`` random rows after dropping the page cache
(``/proc/sys/vm/drop_caches``, so it needs root), printing rows/s.

Usage::

    sudo python benchmarks/bench_random_reads.py --gib 3
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def drop_page_cache() -> None:
    """Write dirty pages and drop the page cache (root only)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as exc:
        raise SystemExit(f"cannot drop the page cache ({exc}): run as root") from exc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--gib", type=float, default=3.0, help="file size (larger than the cache)")
    p.add_argument("--row-bytes", type=int, default=256)
    p.add_argument("--rows", type=int, default=20_000, help="random rows read per reader")
    p.add_argument("--dir", default=None, help="where the file is written (tmp)")
    args = p.parse_args(argv)

    from vistrieve.indexes import sq
    from vistrieve.utils.io import advise_random

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "rows.bin"
        chunk = 1 << 27
        with open(path, "wb") as fh:
            for _ in range(max(1, int(args.gib * 2**30) // chunk)):
                fh.write(os.urandom(chunk))
        n = path.stat().st_size // args.row_bytes
        table = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, args.row_bytes))
        advise_random(table)
        rng = np.random.default_rng(0)
        readers = {
            "one thread (table[rows])": lambda r: np.asarray(table[r]),
            f"gather_rows ({sq._READERS} threads)": lambda r: sq.gather_rows(table, r),
        }
        for name, read in readers.items():
            rows = rng.choice(n, args.rows, replace=False)
            drop_page_cache()
            t0 = time.perf_counter()
            read(rows)
            rate = args.rows / (time.perf_counter() - t0)
            print(f"{name:28s} {rate:10.0f} rows/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
