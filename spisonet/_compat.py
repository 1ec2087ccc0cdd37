"""Old spellings that still work, with a DeprecationWarning saying the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["renamed_parameter"]


def renamed_parameter(old: str, new: str) -> Callable[[F], F]:
    """Accept keyword ``old`` as ``new`` (warning once per call); both at once is an error."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old!r} and {new!r}; use {new!r}")
                warnings.warn(
                    f"{fn.__name__}({old}=...) is deprecated; use {new}=...",
                    DeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call  # type: ignore[return-value]

    return wrap
