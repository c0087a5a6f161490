"""What every sparkdl Spark ML stage shares about its Params: converters that validate a value when it is set (so
``setOptimizer("adagrad")`` fails at once, naming the allowed values), and ``setX``/``getX`` for every Param plus a
checked ``setParams`` (:func:`with_accessors`), the way Spark's own stages have them.

Imports only ``pyspark.ml.param`` and ``sparkdl.errors``: the featurizer (``featurize/``) and the ``ml`` stages use
it alike.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

from pyspark.ml.param import Param, Params, TypeConverters

from sparkdl.errors import ConfigError

Converter = Callable[[Any], Any]


def _bad(name: str, want: str, value: Any) -> ConfigError:
    return ConfigError(f"Param {name} must be {want}, got {value!r}")


def one_of(name: str, allowed: Iterable[str] | Callable[[], Iterable[str]]) -> Converter:
    """A string among ``allowed`` (a collection, or a function returning one, read when the value is set)."""

    def convert(value: Any) -> str:
        choices = tuple(allowed() if callable(allowed) else allowed)
        if not isinstance(value, str) or value not in choices:
            raise _bad(name, f"one of {', '.join(choices)}", value)
        return value

    return convert


def int_at_least(name: str, low: int) -> Converter:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < low:
            raise _bad(name, f"an integer >= {low}", value)
        return int(value)

    return convert


def float_in(name: str, low: float, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Converter:
    """A finite float in [low, high] (``low_open`` / ``high_open`` exclude the bound; ``high=None``: no upper one)."""
    left, right = "(" if low_open else "[", ")" if high_open or high is None else "]"
    want = f"a number in {left}{low}, {'inf' if high is None else high}{right}"

    def convert(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _bad(name, want, value)
        v = float(value)
        if v < low or (low_open and v == low) or (high is not None and (v > high or (high_open and v == high))):
            raise _bad(name, want, value)
        return v

    return convert


def checked_string(name: str, check: Callable[[str], Any], want: str) -> Converter:
    """A string ``check`` accepts (it raises ConfigError / ValueError otherwise); kept as given."""

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise _bad(name, want, value)
        try:
            check(value)
        except (ConfigError, ValueError) as exc:
            raise ConfigError(f"Param {name}: {exc}") from None
        return value

    return convert


def column_name(name: str) -> Converter:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _bad(name, "a non-empty column name", value)
        return value

    return convert


def boolean(name: str) -> Converter:
    def convert(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _bad(name, "True or False", value)
        return value

    return convert


def param(name: str, doc: str, converter: Converter | None = None) -> Param:
    """A Param declared on a class body (``Params._dummy()`` parent, as Spark's own shared params do)."""
    return Param(Params._dummy(), name, doc, converter or TypeConverters.identity)


def _cap(name: str) -> str:
    return name[:1].upper() + name[1:]


def with_accessors(cls: type) -> type:
    """Add ``setX(value)`` and ``getX()`` for every Param of ``cls`` that lacks them, and a ``setParams(**kwargs)``
    that refuses unknown names (listing the known ones)."""
    names = sorted({p.name for p in (getattr(cls, a) for a in dir(cls)) if isinstance(p, Param)})
    for name in names:
        if not hasattr(cls, "set" + _cap(name)):
            setattr(cls, "set" + _cap(name), _setter(name))
        if not hasattr(cls, "get" + _cap(name)):
            setattr(cls, "get" + _cap(name), _getter(name))

    def setParams(self, **kwargs):
        """Set several Params at once (each validated as ``setX`` would)."""
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise ConfigError(f"{type(self).__name__} has no Param {', '.join(unknown)} (known: {', '.join(names)})")
        return self._set(**kwargs)

    cls.setParams = setParams
    return cls


def _setter(name: str):
    def setter(self, value):
        return self._set(**{name: value})

    setter.__name__ = "set" + _cap(name)
    setter.__doc__ = f"Set the {name} Param (validated now)."
    return setter


def _getter(name: str):
    def getter(self):
        return self.getOrDefault(getattr(self, name))

    getter.__name__ = "get" + _cap(name)
    getter.__doc__ = f"The {name} Param's value (or its default)."
    return getter
