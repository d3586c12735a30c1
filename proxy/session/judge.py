"""Adapter from policy's classifier to the relay's Verdict. Sans-I/O.

One Judge per process: it owns the classification cache (exact text, and
masked literals where policy says the class cannot depend on them) and the
scopes. judge(text, scope, prepared) never raises: anything unexpected is a
denial (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping

from policy.cache import ClassificationCache
from policy.decision import decide
from policy.scopes import DEFAULT_SCOPES, Scope
from policy.sql.classes import StatementClass
from policy.sql.classify import classify

from .enforce import Verdict

DEFAULT_MAX_LENGTH = 65536


class Judge:
    def __init__(self, scopes: Mapping[str, Scope] = DEFAULT_SCOPES, *, max_length: int = DEFAULT_MAX_LENGTH,
                 cache_entries: int = 4096, catalog=None) -> None:
        self.scopes = scopes
        self.max_length = max_length
        self.catalog = catalog                  # the operator's [classifier] lists; None: built-in
        self.cache = ClassificationCache(max_entries=cache_entries)
        # (scope, text) -> Verdict for the hot path: an exact repeat skips classify and decide.
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        # (scope, masked key) -> Verdict: the same statement with other literals (-M simple, psycopg2
        # interpolation) skips decide too. Filled only from literal-independent classifications.
        self._masked_verdicts: dict[tuple[str, bytes], Verdict] = {}
        self._verdict_limit = cache_entries

    def __call__(self, text: str, scope_name: str, prepared: Mapping[str, str]) -> Verdict:
        scope = self.scopes.get(scope_name)
        if scope is None:
            return Verdict(False, f"pgwarden: scope {scope_name!r} is not defined; denied [rule scope.unknown]",
                           "scope.unknown", "unknown")
        key = (scope_name, text)
        hit = self._verdicts.get(key)
        if hit is not None:
            return hit
        classified, masked = self.cache.lookup(text)
        if masked is not None:
            hit = self._masked_verdicts.get((scope_name, masked))
            if hit is not None:
                return hit
        if classified is None:
            prep = {k: StatementClass(v) for k, v in prepared.items()} if prepared else None
            classified = classify(text, max_length=self.max_length, prepared=prep, catalog=self.catalog)
            masked = self.cache.put(text, classified)
        decision = decide(scope, classified, scopes=self.scopes)
        cls = decision.statement_class.value if decision.statement_class is not None else ""
        if not decision.allowed:
            # A statement that does not parse would fail on the server too: answer as the server
            # would (42601), so a typo reads as a typo. It still never reaches the server.
            sqlstate = "42601" if decision.rule_id == "parse.syntax" else decision.sqlstate
            return Verdict(False, decision.message, decision.rule_id, cls, sqlstate=sqlstate)
        prepares = tuple((s.prepares, s.statement_class.value) for s in classified.statements if s.prepares)
        deallocates = tuple("*" if s.deallocates_all else s.deallocates
                            for s in classified.statements if s.deallocates or s.deallocates_all)
        verdict = Verdict(True, "", decision.rule_id, cls, prepares, deallocates)
        if masked is not None:              # literal independent: one entry for every literal value
            if len(self._masked_verdicts) >= self._verdict_limit:
                self._masked_verdicts.clear()
            self._masked_verdicts[(scope_name, masked)] = verdict
        elif classified.cacheable and len(text) <= self.cache.max_text_length:
            if len(self._verdicts) >= self._verdict_limit:
                self._verdicts.clear()          # crude but bounded; refilled from the class cache
            self._verdicts[key] = verdict
        return verdict
