"""The service's durable state in SQLite: a journal of index changes and the chat sessions.

Every add or delete made over HTTP is committed to the journal before it is acknowledged
(an uploaded image is stored as PNG bytes in its row), so a restart replays it; at start-up
the journal is folded into the saved index (one atomic save) and emptied. Chat sessions are
rows of JSON state, bounded in number (the least recently used are evicted).
"""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    op TEXT NOT NULL CHECK (op IN ('add', 'delete')),
    item_id TEXT NOT NULL,
    captions TEXT NOT NULL DEFAULT '[]',
    image BLOB
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_updated ON sessions (updated);
"""


@dataclass(frozen=True)
class JournalEntry:
    """One acknowledged change to the index."""

    seq: int
    op: str
    item_id: str
    captions: tuple[str, ...]
    image: bytes | None


def default_state_path(index_dir: str | os.PathLike[str]) -> Path:
    """The state file beside an index directory: ``<index>.service.sqlite`` (beside, not
    inside, because saving the index swaps the whole directory)."""
    root = Path(index_dir).resolve()
    return root.with_name(root.name + ".service.sqlite")


class ServiceStore:
    """The journal and the sessions, in one SQLite file (WAL, synchronous commits).

    Args:
        path: The SQLite file (created when missing).
        max_sessions: Sessions kept; beyond it the least recently updated are deleted.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_sessions: int = 1000) -> None:
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be positive, got {max_sessions}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_sessions = max_sessions
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged change survives a crash
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ journal
    def log_add(self, item_id: str, captions: tuple[str, ...], image: Any) -> None:
        """Commit an added item (its image as PNG bytes) before it is acknowledged."""
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        with self._lock:
            self._db.execute(
                "INSERT INTO journal (op, item_id, captions, image) VALUES ('add', ?, ?, ?)",
                (item_id, json.dumps(list(captions)), buf.getvalue()),
            )

    def log_delete(self, item_id: str) -> None:
        """Commit a deleted item before it is acknowledged."""
        with self._lock:
            self._db.execute("INSERT INTO journal (op, item_id) VALUES ('delete', ?)", (item_id,))

    def journal(self) -> Iterator[JournalEntry]:
        """The journal in commit order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, op, item_id, captions, image FROM journal ORDER BY seq"
            ).fetchall()
        for seq, op, item_id, captions, image in rows:
            yield JournalEntry(int(seq), str(op), str(item_id), tuple(json.loads(captions)), image)

    def clear_journal(self, up_to: int) -> None:
        """Drop the entries folded into the saved index (``seq <= up_to``)."""
        with self._lock:
            self._db.execute("DELETE FROM journal WHERE seq <= ?", (up_to,))

    # ------------------------------------------------------------------ sessions
    def save_session(self, session_id: str, state: dict[str, Any]) -> list[str]:
        """Store a session's state; returns the ids of sessions evicted to stay in bounds."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO sessions (id, state, updated) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET state = excluded.state, "
                    "updated = excluded.updated",
                    (session_id, json.dumps(state), now),
                )
                (count,) = self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()
                evicted: list[str] = []
                if count > self.max_sessions:
                    evicted = [
                        r[0]
                        for r in self._db.execute(
                            "SELECT id FROM sessions ORDER BY updated LIMIT ?",
                            (count - self.max_sessions,),
                        )
                    ]
                    self._db.executemany(
                        "DELETE FROM sessions WHERE id = ?", [(i,) for i in evicted]
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        if evicted:
            logger.info("evicted %d least recently used sessions", len(evicted))
        return evicted

    def load_session(self, session_id: str) -> dict[str, Any] | None:
        """A stored session's state, or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT state FROM sessions WHERE id = ?", (session_id,)
            ).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def delete_session(self, session_id: str) -> bool:
        """Delete a session; whether it existed."""
        with self._lock:
            cur = self._db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
        return cur.rowcount > 0

    def session_count(self) -> int:
        """Sessions stored."""
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM sessions").fetchone()
        return int(count)


__all__ = ["JournalEntry", "ServiceStore", "default_state_path"]
