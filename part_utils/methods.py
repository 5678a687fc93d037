"""Attach an exercise to its class right where it is defined, keeping the method's own name."""

from collections.abc import Callable
from typing import TypeVar

Member = TypeVar("Member")


def add_to_class(cls: type) -> Callable[[Member], Member]:
    """Decorator: `@add_to_class(ToySAE)` above `def forward(self, ...)` makes it `ToySAE.forward`.

    Exercises are written one method per cell, so that each can be run and checked on its
    own; the decorator attaches the method as it is defined (nothing to forget afterwards),
    and tracebacks show the name the text uses. Works for functions and for properties
    (put it above `@property`).
    """

    def attach(member: Member) -> Member:
        function = member.fget if isinstance(member, property) else member
        name = getattr(function, "__name__", None)
        if name is None:
            raise TypeError(
                f"add_to_class({cls.__name__}) expects a function or a property, got {type(member).__name__}"
            )
        if callable(function) and hasattr(function, "__qualname__"):
            function.__qualname__ = f"{cls.__name__}.{name}"
        setattr(cls, name, member)
        return member

    return attach
