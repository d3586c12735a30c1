"""The proxy's door to policy: classify statements without stalling the event loop.

Short text is classified inline (tens of microseconds, and cached by exact
text). Long text goes to one worker thread created with a large stack:
pglast converts its tree recursively and a deep expression can exhaust the
8 MB main-thread stack and kill the whole process (STYLE.md §5, measured:
`SELECT 1+1+...` of 30,000 terms). Text over the configured cap is denied
without being parsed. While a statement is with the worker, its session
holds its later messages; other sessions go on. The worker takes the
shortest waiting text first (cost grows with length): a session sending
60 KB expressions over and over cannot make another session's 6 KB IN list
wait behind all of them.

Shadow mode (``[upstream] enforce = false``): a would-be denial is logged
(``statement_would_be_denied``, with the rule and class) and the statement
is let through, so a deployment can be rolled out without breaking clients.
"""

from __future__ import annotations

import itertools
import queue
import threading

import structlog

from policy import cache as _cache
from policy.sql import masked as _masked

from .. import metrics
from ..session.enforce import Verdict
from ..session.judge import Judge
from ..wire.framing import walk_client_c

log = structlog.get_logger("pgwarden.gate")

INLINE_LIMIT = 4096            # characters classified on the event loop
WORKER_STACK = 512 << 20       # bytes of stack for the classification thread


class PolicyGate:
    def __init__(self, loop, judge, *, max_length: int = 65536, enforce: bool = True) -> None:
        """judge(text, scope_name, sql_prepared) -> Verdict; pure, may be slow, may not raise."""
        self.loop = loop
        self.judge_fn = judge
        self.max_length = max_length
        self.enforce = enforce
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._seq = itertools.count()
        self._results: dict[tuple[str, str], Verdict] = {}
        self._worker: threading.Thread | None = None

    def judge(self, text: str, session) -> Verdict | None:
        """The verdict now, or None: the session must wait for session.on_verdict(text)."""
        verdict = self._judge(text, session)
        if verdict is None or verdict.allowed or self.enforce:
            return verdict
        return self.shadow(session, verdict.rule, verdict.statement_class, verdict.message)

    def deny_function_call(self, session) -> bool:
        """The fast-path FunctionCall message is admin class: denied, unless in shadow mode."""
        if self.enforce:
            return True
        self.shadow(session, "admin.function_call", "admin",
                    "pgwarden: the fast-path FunctionCall message is admin class and never allowed "
                    "[rule admin.function_call]")
        return False

    @staticmethod
    def shadow(session, rule: str, statement_class: str, message: str) -> Verdict:
        # The denial message names the command, its class and the rule; the statement text (which
        # may hold secrets, e.g. a PASSWORD literal) belongs in the audit recording, not here.
        session.log.warning("statement_would_be_denied", rule=rule, statement_class=statement_class,
                            reason=message, shadow=True)
        return Verdict(True, "", rule, statement_class)

    def _judge(self, text: str, session) -> Verdict | None:
        scope = session.claims.scope
        done = self._results.pop((scope, text), None)
        if done is not None:
            return done
        if len(text) <= INLINE_LIMIT or len(text) > self.max_length:
            return self._safe_judge(text, scope, session.sql_prepared)
        self._start_worker()
        self._jobs.put((len(text), next(self._seq), text, scope, dict(session.sql_prepared), session))
        return None

    def _safe_judge(self, text: str, scope: str, prepared) -> Verdict:
        try:
            return self.judge_fn(text, scope, prepared)
        except Exception as e:                      # fail closed
            log.exception("classifier_error")
            return Verdict(False, f"pgwarden: statement could not be classified ({type(e).__name__}); "
                                  "denied [rule unparseable.internal]", "unparseable.internal", "unknown")

    def _start_worker(self) -> None:
        if self._worker is not None:
            return
        old = threading.stack_size()
        threading.stack_size(WORKER_STACK)
        try:
            self._worker = threading.Thread(target=self._work, name="pgwarden-classify", daemon=True)
            self._worker.start()
        finally:
            threading.stack_size(old)

    def _work(self) -> None:
        while True:
            _, _, text, scope, prepared, session = self._jobs.get()
            verdict = self._safe_judge(text, scope, prepared)
            self.loop.call_soon_threadsafe(self._deliver, text, scope, verdict, session)

    def _deliver(self, text: str, scope: str, verdict: Verdict, session) -> None:
        self._results[(scope, text)] = verdict
        session.on_verdict(text)
        self._results.pop((scope, text), None)


def _statement_walk_built() -> bool:
    """The compiled client walk, and the compiled masked key the classification cache uses."""
    return (walk_client_c is not None and _masked.masked_key_c is not None
            and _cache.masked_key is _masked.masked_key_c)


def query_walk_context(gate, scope: str) -> tuple | None:
    """What the compiled client walk needs to let a Query, or a Parse of the unnamed statement,
    through on its own (``walk_client``'s ``query``), for a session in ``scope``: or None, and
    every one goes to ClientConn._relay's Python branch (the reference).

    The walk uses it only where that branch would find the verdict in the judge's caches,
    allowed and without effects (an exact repeat in ``Judge._verdicts``; or, the exact text not
    classified, its masked key in the classification cache, literal independent, with a verdict
    in ``Judge._masked_verdicts``), and then does what the branch does: the cache's LRU and
    ``masked_hits`` for a masked hit, ``metrics.statement``, then for a Query one sync point and
    ``tracker.query``, for a Parse ``tracker.parse`` (the unnamed statement has no books to keep).
    So it needs the very objects the branch reads, built for nothing but the shipped gate,
    judge, cache and compiled masked key: anything else (a subclass, a patched masked_key)
    gets None.  The dicts are cleared in place, never replaced, and the server's gate and judge
    are made once and never swapped, so the tuple stays true for the session's life.
    """
    judge = getattr(gate, "judge_fn", None)
    if (not _statement_walk_built() or type(gate) is not PolicyGate or type(judge) is not Judge
            or type(judge.cache) is not _cache.ClassificationCache or type(scope) is not str):
        return None
    from policy.sql import _maskkey
    return (scope, judge._verdicts, judge._masked_verdicts, judge.cache, judge.cache._data, _maskkey.key,
            metrics._statement_counts, min(INLINE_LIMIT, judge.cache.max_text_length))


#: Whether sessions get the compiled statement walk ("c") or every Query and Parse goes to the
#: relay's Python branch ("python").
STATEMENT_WALK_IMPL = "c" if _statement_walk_built() else "python"
