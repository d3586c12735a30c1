"""Enforce a grant's scope on the client->server stream, keeping both sides in step.

Sans-I/O: no asyncio, no sockets, no clock. The session asks, per client
message, what to send upstream; it never decides on its own (policy does).

How a denial keeps client and server agreeing on the session's state
(DESIGN.md): the denied message is replaced, in place, by one that fails at
parse time without side effects -- a Query or Parse whose text is a bare
identifier, `pgwarden_denied_<nonce>_<seq>`. The server answers it exactly as
it answers any failed statement: inside a transaction block the transaction
is aborted (a later COMMIT answers ROLLBACK), in an extended-protocol batch
the server skips to Sync, and responses stay in pipeline order because
nothing is answered out of band. The server's syntax error names the
identifier; rewrite_error() recognises it (the nonce is per session and
random, so no client-provoked error can imitate it) and turns it into
pgwarden's 42501 denial.

Message -> substitute:
  Query (denied text)               Query  'pgwarden_denied_..'   (ErrorResponse + ReadyForQuery, as a failed Query)
  Parse (denied text), name kept    Parse  name, 'pgwarden_denied_..'  (name kept: a failed Parse of the
                                           unnamed statement drops it on the server, as the real one would)
  Bind of a statement denied at Parse  Parse with a fresh name (never reaches a real statement)
  FunctionCall (fast path: admin)   Query  'pgwarden_denied_..'   (ErrorResponse + ReadyForQuery, as a failed call)
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ..wire import encode

MAX_PENDING = 4096      # denials awaiting the server's error; older ones were skipped by the server


@dataclass(frozen=True, slots=True)
class Verdict:
    """What policy said of one query string."""
    allowed: bool
    message: str = ""                      # the denial text (names class, scope, allowing scope, rule)
    rule: str = ""
    statement_class: str = ""
    prepares: tuple[tuple[str, str], ...] = ()   # SQL-level PREPARE name -> class, when allowed
    deallocates: tuple[str, ...] = ()            # SQL-level DEALLOCATE names ("*" for ALL)
    sqlstate: str = "42501"                      # 42601 when the text does not parse: a typo reads as one


Judge = Callable[[str], Verdict]


class Enforcer:
    __slots__ = ("nonce", "seq", "pending", "denied_statements", "denials", "last_denial")

    def __init__(self) -> None:
        self.nonce = secrets.token_hex(8)
        self.seq = 0
        self.pending: OrderedDict[int, tuple[str, str]] = OrderedDict()   # seq -> (sqlstate, message)
        self.denied_statements: dict[str, str] = {}             # protocol statement name -> message
        self.denials = 0
        self.last_denial: str | None = None

    def _marker(self, message: str, sqlstate: str = "42501") -> str:
        self.seq += 1
        self.denials += 1
        self.last_denial = message
        self.pending[self.seq] = (sqlstate, message)
        if len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)
        return f"pgwarden_denied_{self.nonce}_{self.seq}"

    # -- client messages ---------------------------------------------------------

    def deny_query(self, message: str, sqlstate: str = "42501") -> bytes:
        return encode.query(self._marker(message, sqlstate))

    def deny_parse(self, name: str, message: str, sqlstate: str = "42501") -> bytes:
        if name:
            self.denied_statements[name] = message
        return _parse(name, self._marker(message, sqlstate))

    def allowed_parse(self, name: str) -> None:
        if name:
            self.denied_statements.pop(name, None)

    def check_bind(self, statement: str) -> bytes | None:
        """A Bind of a statement whose Parse was denied never reaches a real statement."""
        message = self.denied_statements.get(statement) if statement else None
        if message is None:
            return None
        marker = self._marker(message)
        return _parse(f"{marker}_b", marker)

    def closed_statement(self, name: str) -> None:
        self.denied_statements.pop(name, None)

    def deny_function_call(self, message: str) -> bytes:
        return encode.query(self._marker(message))

    # -- server messages -----------------------------------------------------------

    def rewrite_error(self, body: bytes) -> bytes | None:
        """ServerStream hook: the server's error for a substitute becomes pgwarden's denial."""
        if not self.pending:
            return None
        tag = f"pgwarden_denied_{self.nonce}_".encode()
        at = body.find(tag)
        if at < 0:
            return None
        digits = bytearray()
        for b in body[at + len(tag):]:
            if 48 <= b <= 57:
                digits.append(b)
            else:
                break
        seq = int(digits) if digits else -1
        found = self.pending.pop(seq, None)
        if found is None:
            return None
        sqlstate, message = found
        # Everything queued before this one was skipped by the server (an earlier error in the
        # same extended-protocol batch): it will never come back.
        for old in [s for s in self.pending if s < seq]:
            del self.pending[old]
        return encode.error_response(sqlstate, message)


def _parse(name: str, text: str) -> bytes:
    return encode.message(b"P", encode.cstr(name) + encode.cstr(text) + b"\x00\x00")


__all__ = ["Enforcer", "Verdict", "Judge"]
