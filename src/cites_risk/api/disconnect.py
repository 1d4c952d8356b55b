"""Requests whose client has gone are not scored while they still wait for their turn.

uvicorn does not cancel a request when its client disconnects: it only reports
``http.disconnect`` on the request's receive channel once the body has been read. Under
overload clients give up (a timeout) and often retry, and scoring what they abandoned would
spend the capacity their retries need. A request already being scored is finished, stored
and audited as usual: it may be scored together with others (``Coalescer``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request
from starlette.types import Receive

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The status logged and counted for a request whose client left (nginx's convention);
#: nobody receives the answer.
CLIENT_LEFT = 499


class ClientLeftError(Exception):
    """The client disconnected before its answer was ready; its work was cancelled."""


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """The result of ``work``, or :class:`ClientLeftError` once ``request``'s client has
    disconnected first (``work`` is then cancelled)."""
    answer = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({answer, watch}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        answer.cancel()  # this request itself was cancelled
        raise
    finally:
        watch.cancel()
    if answer.done():
        return answer.result()
    if watch.cancelled() or watch.exception() is not None:
        # The channel failed without telling of a disconnect: nothing is known to be gone.
        return await answer
    answer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await answer
    log.info("%s %s: the client left before its answer", request.method, request.url.path)
    raise ClientLeftError
