"""Which values of a config a piece of code reads.

The planner plans a grid point once and gives its outcome to every grid point that differs from it
only in values no step of the plan read (100 seeds of one learning rate validate alike). A value is
read when anything asks its node for it: an attribute, ``in``, ``str``, a copy, ``to_container``, an
interpolation or resolver that reaches it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from omegaconf.nodes import ValueNode

_READ: set[str] | None = None  # the keys read inside the open watch
_WATCHING: dict[type, type] = {}  # a value node's class -> the same class, telling when it is read


def _watching(cls: type) -> type:
    """``cls`` telling :data:`_READ` when a node's value is read."""
    sub = _WATCHING.get(cls)
    if sub is None:
        def __getattribute__(self: Any, name: str, _get: Any = object.__getattribute__) -> Any:
            if name == "_val" and _READ is not None:
                key = _get(self, "__dict__").get("_cruijff_key")
                if key is not None:
                    _READ.add(key)
            return _get(self, name)

        sub = _WATCHING[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__,
                                                          "__module__": cls.__module__})
    return sub


def value_node(cfg: DictConfig, key: str) -> ValueNode | None:
    """The node holding the plain value at dotted ``key``; None where there is none (a section)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig):
            return None
        node = node._get_node(part)
        if node is None:
            return None
    return node if isinstance(node, ValueNode) else None


class Watch:
    """``with watch:`` records in ``watch.read`` which of ``nodes`` (key -> value node) the code
    inside reads; outside, the nodes are as they were."""

    def __init__(self, nodes: dict[str, ValueNode]):
        self.nodes = {key: (node, type(node)) for key, node in nodes.items()}
        self.read: set[str] = set()

    def __enter__(self) -> "Watch":
        global _READ
        for key, (node, cls) in self.nodes.items():
            node.__dict__["_cruijff_key"] = key
            node.__class__ = _watching(cls)
        _READ = self.read
        return self

    def __exit__(self, *exc: Any) -> None:
        global _READ
        _READ = None
        for node, cls in self.nodes.values():
            node.__class__ = cls
            node.__dict__.pop("_cruijff_key", None)
