"""The entry points of fleetpki's plugin groups (``fleetpki.*``: command groups, hooks,
migrations, backends), read once per process.

They are read straight from the ``entry_points.txt`` of each distribution on ``sys.path``
(``*.dist-info`` and ``*.egg-info`` folders; the first distribution of a name wins, as
``importlib.metadata`` takes it), and only files that name a ``fleetpki.`` group are
parsed. ``importlib.metadata`` would find the same ones (a test compares them), but
importing it costs about 35 ms of CPU, a quarter of what ``fleetpki --help`` may cost
(bench row ``cli_help``). Tests that fake a plugin patch ``entry_points``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

PREFIX = "fleetpki."
_DIST = re.compile(r"^(?P<name>[^-]+)(?:-[^/]*)?\.(?P<kind>dist-info|egg-info|egg)$", re.IGNORECASE)


@dataclass(frozen=True)
class EntryPoint:
    name: str
    value: str  # module:attribute (an extras list in brackets is ignored)
    group: str

    def load(self) -> Any:
        import importlib

        target = self.value.split("[", 1)[0].strip()
        module, _, attribute = target.partition(":")
        loaded: Any = importlib.import_module(module.strip())
        for part in filter(None, attribute.strip().split(".")):
            loaded = getattr(loaded, part)
        return loaded


def entry_points(group: str) -> tuple[EntryPoint, ...]:
    """The entry points registered under ``group``."""
    return tuple(point for point in installed() if point.group == group)


@functools.cache
def installed() -> tuple[EntryPoint, ...]:
    """Every ``fleetpki.*`` entry point of the distributions on ``sys.path``, in the order
    ``importlib.metadata`` finds them (folder by folder, as listed)."""
    found: list[EntryPoint] = []
    seen: set[str] = set()
    for folder in sys.path:
        try:
            names = os.listdir(folder or ".")
        except OSError:  # a zip file, a folder that does not exist
            continue
        for name in names:
            match = _DIST.fullmatch(name)
            if match is None:
                continue
            dist = re.sub(r"[-_.]+", "_", match.group("name")).lower()
            if dist in seen:
                continue
            seen.add(dist)
            inner = "EGG-INFO" if match.group("kind").lower() == "egg" else ""
            path = os.path.join(folder or ".", name, inner, "entry_points.txt")
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except (FileNotFoundError, NotADirectoryError):  # none, or a zipped egg
                continue
            except (OSError, UnicodeDecodeError) as exc:  # a plugin lost: say so
                import logging

                logging.getLogger("fleetpki").warning(
                    "cannot read the entry points of %s: %s", name, exc
                )
                continue
            if "[" + PREFIX in text:
                found.extend(parse(text))
    return tuple(found)


def parse(text: str) -> list[EntryPoint]:
    """The ``fleetpki.*`` entries of an ``entry_points.txt`` (INI: ``[group]``, then
    ``name = module:attribute`` lines; comments start with ``#`` or ``;``)."""
    points: list[EntryPoint] = []
    group = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = line[1:-1].strip()
            continue
        name, equals, value = line.partition("=")
        if equals and group.startswith(PREFIX) and name.strip() and value.strip():
            points.append(EntryPoint(name.strip(), value.strip(), group))
    return points
