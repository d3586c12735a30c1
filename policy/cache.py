"""A bounded cache of classifications, so a repeated statement is parsed once.

Job: ``ClassificationCache.get(sql)`` / ``put(sql, classified)``.

Rules (DESIGN.md, "Scopes and statements"):

* Keys are never pglast's fingerprint: it maps ``SET ROLE admin`` and
  ``SET ROLE readonly`` to one value.
* Exact text always works.  The second key is the scanner's token sequence
  with literal values masked (``policy.sql.masked.masked_key``, ~3 µs):
  clients that interpolate literals send a new text every time, and this
  makes ``... WHERE id = 41`` hit the entry of ``... WHERE id = 42``.  It is
  stored only for a ``Classified`` whose ``literal_independent`` is True
  (the classifier saw that no literal's value can change any statement's
  class: see ``policy.sql.classify``), and a masked hit is returned only
  for such an entry.  Token kinds are kept, so a string literal never
  matches a number, a parameter or an identifier.
* Never cached: results that depend on session state (``cacheable`` False:
  EXECUTE), text longer than ``max_text_length``.  Text with a NUL, that
  cannot be encoded, or with ``UESCAPE`` never gets a masked key.
* Bounded twice: ``max_entries`` keys and ``max_chars`` characters of keys;
  the least recently used entries go first.
* Holds classifications (scope-independent), so one cache serves every
  session of a process; it assumes one catalog.  Not thread-safe: use it from
  the event loop only (a parse worker hands its result back to the loop).
"""

from __future__ import annotations

from collections import OrderedDict

from policy.sql.classify import Classified
from policy.sql.masked import masked_key

__all__ = ["ClassificationCache", "masked_key"]


def _size(key: tuple) -> int:
    return len(key[1])


class ClassificationCache:
    """LRU of ``Classified`` by exact text and by masked-literal key."""

    def __init__(self, max_entries: int = 4096, max_chars: int = 8 * 1024 * 1024,
                 max_text_length: int = 16384) -> None:
        if max_entries < 1 or max_chars < 1 or max_text_length < 1:
            raise ValueError("cache limits must be positive")
        self.max_entries = max_entries
        self.max_chars = max_chars
        self.max_text_length = max_text_length
        self._data: OrderedDict[tuple, Classified] = OrderedDict()
        self._chars = 0
        self.hits = 0
        self.masked_hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()
        self._chars = 0

    def _lookup(self, key: tuple) -> Classified | None:
        found = self._data.get(key)
        if found is not None:
            self._data.move_to_end(key)
        return found

    def get(self, sql: str) -> Classified | None:
        """The cached classification of ``sql``, or None (then classify and ``put``)."""
        return self.lookup(sql)[0]

    def lookup(self, sql: str) -> tuple[Classified | None, bytes | None]:
        """``(classified or None, masked key or None)``: the key when the hit was by masked key."""
        if not isinstance(sql, str) or len(sql) > self.max_text_length:
            self.misses += 1
            return None, None
        found = self._lookup(("t", sql))
        if found is not None:
            self.hits += 1
            return found, None
        mk = masked_key(sql)
        if mk is not None:
            found = self._lookup(("m", mk))
            if found is not None and found.literal_independent:
                self.masked_hits += 1
                return found, mk
        self.misses += 1
        return None, None

    def put(self, sql: str, classified: Classified) -> bytes | None:
        """Remember ``classified`` for ``sql`` (a no-op when it must not be cached).

        Returns the masked key it was also stored under, or None.
        """
        if not classified.cacheable or not isinstance(sql, str) or len(sql) > self.max_text_length:
            return None
        self._store(("t", sql), classified)
        if classified.literal_independent:
            mk = masked_key(sql)
            if mk is not None:
                self._store(("m", mk), classified)
                return mk
        return None

    def _store(self, key: tuple, classified: Classified) -> None:
        if key in self._data:
            self._data.move_to_end(key)
            self._data[key] = classified
            return
        self._data[key] = classified
        self._chars += _size(key)
        while len(self._data) > self.max_entries or (self._chars > self.max_chars and len(self._data) > 1):
            old, _ = self._data.popitem(last=False)
            self._chars -= _size(old)
