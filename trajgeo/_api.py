"""Keeping old call forms working for one release while the signatures follow one rule.

The rule (docs/architecture.md): analyses take ``traj`` first and every option by keyword; functions
that run a model take it first. :func:`changed_signature` wraps a function whose keywords were
renamed, or whose options became keyword-only, so that old calls still work and say, with a
:class:`DeprecationWarning`, how to write them now.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Mapping, Sequence, TypeVar

__all__ = ["changed_signature"]

F = TypeVar("F", bound=Callable[..., Any])


def changed_signature(
    *,
    renamed: Mapping[str, str] | None = None,
    positional: Sequence[str] = (),
    n_leading: int = 1,
    since: str = "0.2",
) -> Callable[[F], F]:
    """Accept renamed keywords and formerly positional options, with a DeprecationWarning.

    Parameters
    ----------
    renamed : mapping of old keyword -> new keyword
        An old keyword is passed on under its new name; giving both is a TypeError.
    positional : sequence of str
        The (new) names of the options that used to follow the ``n_leading`` positional arguments,
        in their old order: extra positional arguments are passed on as these keywords.
    n_leading : int
        How many leading positional arguments the function still takes (``traj``; ``model, traj``).
    since : str
        The version that changed the signature (named in the warning).

    Returns
    -------
    A decorator.

    Examples
    --------
    >>> @changed_signature(renamed={"by": "word"}, positional=("labels",))
    ... def curves(traj, *, labels="sense", word="word"):
    ...     return labels, word
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     curves(None, "s", by="lemma")
    ('s', 'lemma')
    """
    renamed = dict(renamed or {})
    positional = tuple(positional)

    def decorate(fn: F) -> F:
        name = getattr(fn, "__qualname__", getattr(fn, "__name__", "function"))

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if len(args) > n_leading:
                extra = args[n_leading:]
                if len(extra) > len(positional):
                    raise TypeError(
                        f"{name}() takes {n_leading} positional argument(s) and keyword options; "
                        f"got {len(args)} positional arguments"
                    )
                names = positional[: len(extra)]
                warnings.warn(
                    f"{name}(): passing {', '.join(names)} by position is deprecated since trajgeo {since}; "
                    f"pass {', '.join(f'{n}=' for n in names)} by keyword",
                    DeprecationWarning,
                    stacklevel=2,
                )
                for n, v in zip(names, extra):
                    if n in kwargs:
                        raise TypeError(f"{name}() got multiple values for argument {n!r}")
                    kwargs[n] = v
                args = args[:n_leading]
            for old, new in renamed.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{name}() got both {old!r} (deprecated) and {new!r}; pass only {new!r}")
                    warnings.warn(
                        f"{name}(): the keyword {old!r} is deprecated since trajgeo {since}; use {new!r}",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__trajgeo_renamed__ = dict(renamed)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
