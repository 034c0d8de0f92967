"""YAML files read with their line numbers, so that every mistake is `FILE:LINE: message`.

rbee's YAML files (the inventory, playbooks) are small documents people write by hand. PyYAML's
`safe_load` forgets where each value came from and keeps the last of two equal keys without a
word; here the document is composed (PyYAML's node tree, which keeps marks), each value is taken
out through a `YNode` that knows its file and line, and a check that fails says where. Reads are
bounded (`MAX_BYTES`): a YAML file is never a reason to read a device or a FIFO without end.
"""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rbee.errors import ConfigError

__all__ = ["MAX_BYTES", "YNode", "load_yaml"]

MAX_BYTES = 1 << 20
"""The largest YAML file rbee reads (a playbook of a thousand hives is a few hundred KiB)."""


@dataclass(frozen=True)
class YNode:
    """One value of a YAML document, with where it is."""

    node: yaml.Node
    path: Path

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def error(self, message: str) -> ConfigError:
        """A ConfigError saying `FILE:LINE: message` for this value."""
        return ConfigError(f"{self.path}:{self.line}: {message}")

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        value = self.scalar()
        return "nothing" if value is None else f"{type(value).__name__} {_short(value)}"

    def scalar(self) -> Any:
        """The value of a scalar (str, int, float, bool or None), as YAML's safe schema reads it."""
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"expected a single value, got {self._kind()}")
        return yaml.constructor.SafeConstructor().construct_object(self.node)

    def is_mapping(self) -> bool:
        return isinstance(self.node, yaml.MappingNode)

    def is_sequence(self) -> bool:
        return isinstance(self.node, yaml.SequenceNode)

    def items(self, what: str, keys: Collection[str] | None = None) -> dict[str, YNode]:
        """A mapping's entries by key (strings), in the document's order.

        `keys`, when given, are the only keys allowed: another one is refused with the nearest
        allowed key as a suggestion. A key given twice is refused (YAML itself forbids it).
        """
        if not isinstance(self.node, yaml.MappingNode):
            raise self.error(f"{what} must be a mapping (key: value lines), got {self._kind()}")
        entries: dict[str, YNode] = {}
        for key_node, value_node in self.node.value:
            key = YNode(key_node, self.path)
            name = key.scalar()
            if not isinstance(name, str) or not name:
                raise key.error(f"a key in {what} must be a name, got {key._kind()}")
            if name in entries:
                raise key.error(f"{name!r} is given twice in {what} (first on line "
                                f"{entries[name].line})")  # fmt: skip
            if keys is not None and name not in keys:
                near = difflib.get_close_matches(name, list(keys), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise key.error(f"unknown key {name!r} in {what}{hint}; known: "
                                f"{', '.join(sorted(keys))}")  # fmt: skip
            entries[name] = YNode(value_node, self.path)
        return entries

    def each(self, what: str) -> Iterator[YNode]:
        """A list's items."""
        if not isinstance(self.node, yaml.SequenceNode):
            raise self.error(f"{what} must be a list, got {self._kind()}")
        for item in self.node.value:
            yield YNode(item, self.path)

    def _scalar_as(self, what: str, expected: str) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            raise self.error(f"{what} must be {expected}, got {self._kind()}")
        return self.scalar()

    def text(self, what: str) -> str:
        """A non-empty string."""
        value = self._scalar_as(what, "a text")
        if not isinstance(value, str) or not value:
            raise self.error(f"{what} must be a text, got {self._kind()}")
        return value

    def integer(self, what: str, lowest: int = 0, highest: int | None = None) -> int:
        """A whole number in [lowest, highest]."""
        value = self._scalar_as(what, "a whole number")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"{what} must be a whole number, got {self._kind()}")
        if value < lowest or (highest is not None and value > highest):
            bound = f"{lowest} to {highest}" if highest is not None else f"{lowest} or more"
            raise self.error(f"{what} must be {bound}, got {value}")
        return value

    def boolean(self, what: str) -> bool:
        value = self._scalar_as(what, "true or false")
        if not isinstance(value, bool):
            raise self.error(f"{what} must be true or false, got {self._kind()}")
        return value

    def names(self, what: str) -> list[YNode]:
        """One name or a list of names: `hives: gpu-box` and `hives: [gpu-box, mac]` alike."""
        items = list(self.each(what)) if self.is_sequence() else [self]
        for item in items:
            item.text(f"each of {what}")
        return items


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _read_bounded(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read it ({err.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ConfigError(f"{path}: not a regular file")
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES >> 10} KiB; is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text") from None


def load_yaml(path: Path) -> YNode | None:
    """The document in `path` (None when it holds none: an empty file or only comments)."""
    text = _read_bounded(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:  # e.g. more than one document
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return None if node is None else YNode(node, path)
