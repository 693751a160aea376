"""Named plug-in registries: readers, writers and trainers all register the same way.

Built-ins register with the decorator when their module is imported; third-party packages expose an entry point
in the registry's group (``distill.readers``, ``distill.writers``, ``distill.trainers``) that points at the class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import import_module
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from .errors import UsageError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, builtin_modules: Iterable[str] = (), flag: str = "") -> None:
        self.kind = kind
        self.group = group
        self.flag = flag
        self._builtin_modules = tuple(builtin_modules)
        self._items: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            self._items[name] = item
            return item

        return add

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            import_module(module)
        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep.load())

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            where = f" for {self.flag}" if self.flag else ""
            raise UsageError(
                f"unknown {self.kind} {name!r}{where}; choose one of: {', '.join(self.names())}"
            ) from None
