"""Grant stores: where grants, their history and their sessions are kept.

``open_store(url)`` picks the backend from the URL:

* ``sqlite:///abs/path/grants.db`` -- an absolute path (three slashes);
* ``sqlite://grants.db``, ``sqlite:grants.db`` or a bare path -- relative to
  ``base`` (the config file's directory) when given, else the working directory;
* ``postgresql://...`` or ``postgres://...`` -- a PostgreSQL database (libpq URL).

The interface is ``GrantStore`` in ``base.py``; both backends pass the same tests.
"""

from __future__ import annotations

from pathlib import Path

from .base import Conflict, GrantEvent, GrantStore, SessionRecord, StoreError, UnknownGrant

__all__ = ["open_store", "sqlite_path", "GrantStore", "GrantEvent", "SessionRecord",
           "StoreError", "UnknownGrant", "Conflict"]


def sqlite_path(url: str, base: Path | None = None) -> Path | None:
    """The file a SQLite store URL names (resolved against ``base``), or None
    for a URL that is not SQLite."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://"):]
    elif url.startswith("sqlite:"):
        rest = url[len("sqlite:"):]
    elif "://" in url:
        return None
    else:
        rest = url
    if not rest:
        raise StoreError(f"grant store URL {url!r} names no file")
    if rest.startswith("//"):          # sqlite:////abs/path (SQLAlchemy spelling)
        rest = rest[1:]
    path = Path(rest).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


def open_store(url: str, *, base: Path | None = None) -> GrantStore:
    """Open (creating and migrating if needed) the store ``url`` names."""
    if not isinstance(url, str) or not url:
        raise StoreError("grant store URL is empty")
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresGrantStore
        return PostgresGrantStore(url)
    path = sqlite_path(url, base)
    if path is None:
        raise StoreError(f"unsupported grant store URL {url.split('://')[0]}://...: "
                         "use sqlite:///path/grants.db or postgresql://...")
    from .sqlite import SQLiteGrantStore
    return SQLiteGrantStore(path)
