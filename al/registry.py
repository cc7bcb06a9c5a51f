"""One registry type for every plug-in family: names written once, looked up once.

A :class:`Registry` maps a family's names (``"ensemble"``, ``"xtb"``, ...) to their objects
(a class, a function, a preset). Each family has one, filled where its objects are defined
(the ``register`` decorator beside the class or function), and read by the config's
choices, the command line, the factories and the tests. An unknown name is the one line::

    unknown oracle 'dtf'; expected one of: dft, xtb, model:<MLflow model URI>

Names are listed in the order they were registered. A name may take an argument after a
colon (``model:<MLflow model URI>``), required or optional (``pyscf`` or
``pyscf:<functional>/<basis>``), and a check of its own for the argument: :meth:`Registry.parse`
splits and checks such a spec.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar, overload

T = TypeVar("T")
O = TypeVar("O")  # noqa: E741 - the decorated object, returned as it is

#: ``register`` without an object: a decorator (None itself may be registered).
_DECORATE = object()
#: What is wrong with a spec's argument (one line), None when it is fine.
ArgumentCheck = Callable[[str], "str | None"]


class UnknownNameError(ValueError, LookupError):
    """A name that is not in a registry; the message is the one line that lists the valid
    ones. A ``ValueError`` (a bad setting) and a ``LookupError`` (a missing key)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Spec(Generic[T]):
    """A parsed ``name[:argument]`` spec: the registered name, its object and the argument
    (``""`` when the name takes none)."""

    name: str
    obj: T
    argument: str = ""


@dataclass(frozen=True)
class _Argument:
    """The argument a name takes: its placeholder, whether it may be left out, its check."""

    placeholder: str
    optional: bool = False
    check: ArgumentCheck | None = None


class Registry(Generic[T]):
    """The names of one plug-in family and their objects, in registration order.

    Args:
        family: what a name names, as the error line says it (``"oracle"``, ``"acquisition"``).
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._objects: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._arguments: dict[str, _Argument] = {}

    # --- filling ------------------------------------------------------------------------
    @overload
    def register(
        self,
        name: str,
        *,
        description: str = "",
        argument: str | None = None,
        optional: bool = False,
        check: ArgumentCheck | None = None,
    ) -> Callable[[O], O]: ...

    @overload
    def register(
        self,
        name: str,
        obj: T,
        *,
        description: str = "",
        argument: str | None = None,
        optional: bool = False,
        check: ArgumentCheck | None = None,
    ) -> T: ...

    def register(
        self,
        name: str,
        obj: object = _DECORATE,
        *,
        description: str = "",
        argument: str | None = None,
        optional: bool = False,
        check: ArgumentCheck | None = None,
    ) -> object:
        """Add ``obj`` under ``name``; without ``obj``, a decorator that adds what it decorates
        (and returns it unchanged).

        Args:
            name: the name users write; a second registration of it is refused.
            obj: the object; omitted when used as a decorator.
            description: one line for :meth:`describe` (default: the object's docstring's
                first sentence).
            argument: placeholder of the argument the name takes after a colon
                (``"<MLflow model URI>"``), None when it takes none.
            optional: the argument may be left out (``pyscf`` as well as
                ``pyscf:<functional>/<basis>``).
            check: what is wrong with a given argument (one line), or None when it is
                fine; :meth:`parse` runs it on every argument given.
        """
        extra = _Argument(argument, optional, check) if argument is not None else None
        if obj is _DECORATE:

            def deco(target: O) -> O:
                self._add(name, target, description, extra)  # type: ignore[arg-type]
                return target

            return deco
        self._add(name, obj, description, extra)  # type: ignore[arg-type]
        return obj

    def _add(self, name: str, obj: T, description: str, argument: _Argument | None) -> None:
        if not name or name != name.strip() or ":" in name:
            raise ValueError(f"{self.family} name {name!r} must be non-empty, without ':'")
        if name in self._objects:
            raise ValueError(f"{self.family} {name!r} is already registered")
        self._objects[name] = obj
        self._descriptions[name] = description or summary(obj)
        if argument is not None:
            self._arguments[name] = argument

    @contextmanager
    def registered(
        self, name: str, obj: T, *, description: str = "", argument: str | None = None
    ) -> Iterator[T]:
        """``obj`` registered as ``name`` inside the ``with`` block only (e.g. a test's
        plug-in); the name is free again afterwards."""
        self._add(name, obj, description, None if argument is None else _Argument(argument))
        try:
            yield obj
        finally:
            self._objects.pop(name, None)
            self._descriptions.pop(name, None)
            self._arguments.pop(name, None)

    # --- reading ------------------------------------------------------------------------
    def get(self, name: str) -> T:
        """The object registered as ``name``; :class:`UnknownNameError` (the one line) if none."""
        try:
            return self._objects[name]
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown(name)) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._objects)

    def choices(self) -> tuple[str, ...]:
        """The names as users write them: ``name:<argument>`` for a name that takes one, and
        both ``name`` and ``name:<argument>`` where the argument may be left out."""
        out: list[str] = []
        for n in self._objects:
            arg = self._arguments.get(n)
            if arg is None or arg.optional:
                out.append(n)
            if arg is not None:
                out.append(f"{n}:{arg.placeholder}")
        return tuple(out)

    def describe(self) -> dict[str, str]:
        """Name -> one line saying what it is (its description, else its docstring's first
        sentence)."""
        return dict(self._descriptions)

    def argument(self, name: str) -> str | None:
        """The placeholder of the argument ``name`` takes, None if it takes none."""
        self.get(name)
        arg = self._arguments.get(name)
        return None if arg is None else arg.placeholder

    def name_of(self, obj: object) -> str | None:
        """The (first) name ``obj`` is registered under, None if it is not."""
        return next((n for n, o in self._objects.items() if o is obj), None)

    def unknown(self, name: object) -> str:
        """The one error line for a name that is not registered."""
        return f"unknown {self.family} {name!r}; expected one of: {', '.join(self.choices())}"

    def parse(self, spec: str) -> Spec[T]:
        """A ``name[:argument]`` spec (case and spaces around the name ignored) as its
        :class:`Spec`; ``ValueError`` (one line) for an unknown name, an argument given to a
        name that takes none, one missing, or one its check refuses."""
        name, sep, arg = str(spec).strip().partition(":")
        key = name.strip().lower()
        if key not in self._objects:
            raise UnknownNameError(self.unknown(spec))
        arg = arg.strip()
        expected = self._arguments.get(key)
        if expected is None and sep:
            raise ValueError(f"{self.family} {key!r} takes no argument, got {spec!r}")
        if expected is not None and not arg and (sep or not expected.optional):
            raise ValueError(
                f"{self.family} {key!r} needs an argument: {key}:{expected.placeholder}"
            )
        if arg and expected is not None and expected.check is not None:
            problem = expected.check(arg)
            if problem:
                raise ValueError(f"{self.family} {key!r}: {problem}")
        return Spec(key, self._objects[key], arg)

    def problem(self, spec: str) -> str | None:
        """What is wrong with a ``name[:argument]`` spec (one line), None when it is valid
        (for a config key's check)."""
        try:
            self.parse(spec)
        except ValueError as err:
            return str(err)
        return None

    # --- a read-only mapping's face -----------------------------------------------------
    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._objects))

    def __len__(self) -> int:
        return len(self._objects)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs in registration order."""
        return list(self._objects.items())

    def values(self) -> list[T]:
        """The objects in registration order."""
        return list(self._objects.values())

    def __repr__(self) -> str:
        return f"Registry({self.family!r}: {', '.join(self._objects)})"


def summary(obj: object) -> str:
    """The first sentence of ``obj``'s docstring, on one line ("" without a docstring)."""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    paragraph = " ".join(line.strip() for line in doc.split("\n\n")[0].splitlines())
    head, dot, _ = paragraph.partition(". ")
    return head + dot.strip()
