"""Scopes: which statement classes a grant's scope lets run.

Job: the ``Scope`` value, the three default scopes, building scopes from the
operator's configuration, and ``scope_allowing(cls)`` for denial messages.

Rules (DESIGN.md, "Scopes and statements" and "Decisions"):

* Defaults: read = {read, transaction}; write = read + {write, two-phase};
  ddl = write + {ddl}.  Two-phase commit is allowed under write and ddl,
  denied under read.
* ADMIN and UNKNOWN are never allowed: a configuration that lists them is
  refused with a ValueError naming the scope.
* ``Scope.read_only`` is derived, not configured: a scope that allows no
  write, two-phase or ddl statement is read-only, and the proxy starts its
  upstream session with ``default_transaction_read_only=on``.
* "Narrowest" scope = the one allowing the fewest classes; ties go to the
  scope defined first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from policy.sql.classes import NEVER_ALLOWED, StatementClass

__all__ = ["Scope", "DEFAULT_SCOPES", "build_scopes", "get_scope", "scope_allowing", "StatementClass"]

C = StatementClass
_WRITING = frozenset({C.WRITE, C.TWO_PHASE, C.DDL})


@dataclass(frozen=True, slots=True)
class Scope:
    """A named set of statement classes."""

    name: str
    classes: frozenset[StatementClass]

    def __post_init__(self) -> None:
        bad = self.classes & NEVER_ALLOWED
        if bad:
            names = ", ".join(sorted(c.value for c in bad))
            raise ValueError(f"scope {self.name!r}: class {names} can never be allowed")

    def allows(self, cls: StatementClass) -> bool:
        return cls in self.classes

    @property
    def read_only(self) -> bool:
        """True when nothing this scope allows can change data or schema."""
        return not (self.classes & _WRITING)

    def __str__(self) -> str:
        return self.name


_READ = frozenset({C.READ, C.TRANSACTION})
_WRITE = _READ | {C.WRITE, C.TWO_PHASE}
_DDL = _WRITE | {C.DDL}

DEFAULT_SCOPES: Mapping[str, Scope] = MappingProxyType({
    "read": Scope("read", _READ),
    "write": Scope("write", _WRITE),
    "ddl": Scope("ddl", _DDL),
})


def build_scopes(config: Mapping[str, Iterable[str | StatementClass]]) -> Mapping[str, Scope]:
    """Scopes from configuration: ``{"read": ["read", "transaction"], ...}``.

    Raises ValueError naming the scope and the class for an unknown class
    name, for ADMIN/UNKNOWN, or for an empty configuration.
    """
    if not config:
        raise ValueError("no scopes configured")
    scopes: dict[str, Scope] = {}
    valid = ", ".join(c.value for c in C if c not in NEVER_ALLOWED)
    for name, classes in config.items():
        if isinstance(classes, str):
            raise ValueError(f"scope {name!r}: classes must be a list, e.g. [\"read\", \"transaction\"]")
        parsed: set[StatementClass] = set()
        for item in classes:
            try:
                parsed.add(StatementClass(str(item).strip().lower()))
            except ValueError:
                raise ValueError(f"scope {name!r}: unknown statement class {item!r} (one of: {valid})") from None
        scopes[name] = Scope(name, frozenset(parsed))
    return MappingProxyType(scopes)


def get_scope(name: str, scopes: Mapping[str, Scope] = DEFAULT_SCOPES) -> Scope:
    """The scope called ``name``; KeyError with the known names otherwise."""
    try:
        return scopes[name]
    except KeyError:
        raise KeyError(f"unknown scope {name!r} (known: {', '.join(scopes)})") from None


def scope_allowing(cls: StatementClass, scopes: Mapping[str, Scope] = DEFAULT_SCOPES) -> str | None:
    """Name of the narrowest scope that allows ``cls``; None when no scope does."""
    best: Scope | None = None
    for scope in scopes.values():
        if cls in scope.classes and (best is None or len(scope.classes) < len(best.classes)):
            best = scope
    return best.name if best is not None else None
