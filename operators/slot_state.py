"""Unpickling slotted dataclasses written by an older build (kept in Flink state: the trainers and their models).

Pickle gives a slotted object's state as ``(None, {slot: value})``; an object pickled before a field was
added lacks that slot, and reading it raises AttributeError at the first use (a restored savepoint then fails
every timer). ``restore_slots`` sets what the pickle has and gives every other field its default.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def restore_slots(obj: Any, state: Any) -> None:
    slots = state[1] if isinstance(state, tuple) and len(state) == 2 else state
    for f in fields(obj):
        if f.name in slots:
            value = slots[f.name]
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        elif f.default is not MISSING:
            value = f.default
        else:
            raise ValueError(f"{type(obj).__name__}: the pickled state has no {f.name!r} and it has no default")
        object.__setattr__(obj, f.name, value)
