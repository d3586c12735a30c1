"""Walk a pglast tree without recursion.

Job: ``iter_nodes(root)`` yields every ``pglast.ast.Node`` under ``root``
(``root`` included), depth first, in no promised order.

Rules:

* Iterative (an explicit stack), never recursive: a hostile statement can be
  tens of thousands of levels deep, and Python's recursion limit (or the C
  stack) must not decide whether we classify it.
* Only fields that can hold nodes are followed.  They are found once per node
  class from pglast's own slot metadata (``SlotTypeInfo.c_type``): pointers
  other than ``char*``, ``ValUnion`` (``A_Const.val``) and embedded node
  structs (``CreateForeignTableStmt.base``).  ``Node.ancestors`` is never
  followed.  A hand-written walk costs about 12 µs on a pgbench statement,
  pglast's ``Visitor`` 39-44 µs (STYLE.md §5).
"""

from __future__ import annotations

from collections.abc import Iterator

from pglast import ast

__all__ = ["iter_nodes", "child_fields"]

_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}


def _is_child_type(c_type: str) -> bool:
    if c_type.endswith("*"):
        return c_type != "char*"
    if c_type == "ValUnion":
        return True
    cls = getattr(ast, c_type, None)
    return isinstance(cls, type) and issubclass(cls, ast.Node)


def child_fields(cls: type) -> tuple[str, ...]:
    """The names of ``cls``'s fields that may hold a node or a tuple of nodes."""
    fields = _CHILD_FIELDS.get(cls)
    if fields is None:
        slots = getattr(cls, "__slots__", ())
        if isinstance(slots, dict):
            fields = tuple(name for name, info in slots.items() if _is_child_type(info.c_type))
        else:  # a class without pglast metadata: follow every slot but ``ancestors``
            fields = tuple(name for name in slots if name != "ancestors")
        _CHILD_FIELDS[cls] = fields
    return fields


def iter_nodes(root: object) -> Iterator[ast.Node]:
    """Every node under ``root`` (a node, or a tuple/list of nodes), root included."""
    stack: list[object] = [root]
    pop, push, extend = stack.pop, stack.append, stack.extend
    Node = ast.Node
    while stack:
        item = pop()
        if isinstance(item, Node):
            yield item
            for name in child_fields(type(item)):
                value = getattr(item, name, None)
                if value is None:
                    continue
                if isinstance(value, tuple | list):
                    extend(value)
                elif isinstance(value, Node):
                    push(value)
        elif isinstance(item, tuple | list):
            extend(item)
