"""Lock-free cached properties on dask's expressions, as on Python 3.12 (no hang on Python 3.11).

On Python < 3.12, :class:`functools.cached_property` holds one re-entrant lock per *class
attribute*, shared by every instance, while it computes a value. dask's expressions cache
``divisions``, ``_meta``, ``npartitions``... that way, and one property's getter reads another's:
a ``FromDelayed``'s ``divisions`` (``PartitionsFiltered``'s lock) reads ``super().divisions``
(``Expr``'s lock), while a ``Blockwise``'s ``divisions`` (``Expr``'s lock) reads its frame's
(``PartitionsFiltered``'s lock). Two threads taking them in opposite orders wait for each other
forever.

Two threads do that in an ordinary run: with a ``LocalCluster`` (a notebook's ``Client()``, or
the cluster a run starts), the scheduler lives in this process and materialises each submitted
graph in a thread of its own (``distributed.utils.offload``) while this thread already builds the
next expression. It hung a cluster build once in CI (the main thread at ``PartitionsFiltered
.divisions`` -> ``Expr.divisions``, for 600 s).

Python 3.12 removed that lock (gh-87634: "it locked across all instances of the class, leading
to high lock contention"), and dask runs on 3.12 and 3.13 without it: a value two threads
compute at once is computed twice, equal both times. :func:`unlock_expression_properties` gives
dask's expression classes that behaviour on 3.11; a scheduler in another process (``dask
scheduler``) never needed it.
"""

from __future__ import annotations

import contextlib
import functools
import sys

__all__ = ["unlock_expression_properties"]

_NO_LOCK = contextlib.nullcontext()  # what ``cached_property.__get__`` on 3.11 enters: never waits


def unlock_expression_properties() -> int:
    """Drop the class-wide lock of every cached property of dask's expression classes.

    Idempotent and cheap (a walk over the loaded subclasses of dask's ``Expr``); called by
    :func:`dedupdask.scheduler.resolve`, so by every call of ``run``, ``extract`` and ``build``,
    which also reaches classes of modules imported since the last call.

    Returns
    -------
    int
        How many properties were unlocked by this call: 0 on Python >= 3.12 (no such lock)
        and on a second call.

    Examples
    --------
    >>> first = unlock_expression_properties()
    >>> unlock_expression_properties()
    0
    """
    if sys.version_info >= (3, 12):
        return 0
    import dask.dataframe  # noqa: F401 -- its expression classes, the ones our stages build
    from dask._expr import Expr

    n, seen, todo = 0, set(), [Expr]
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        for prop in vars(cls).values():
            if isinstance(prop, functools.cached_property) and prop.lock is not _NO_LOCK:
                prop.lock = _NO_LOCK
                n += 1
    return n
