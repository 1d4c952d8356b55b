"""Requests whose client has gone are not scored while they still wait for their turn.

uvicorn does not cancel a request when its client disconnects: it only reports
``http.disconnect`` on the request's receive channel once the body has been read. Under
overload clients give up (a timeout) and often retry, and scoring what they abandoned would
spend the capacity their retries need. The coalescer withdraws a request that is still
queued when :func:`client_left` completes; one whose call has begun is finished, stored,
audited and answered as usual (``Coalescer.submit``).
"""

from __future__ import annotations

from starlette.requests import Request

#: The status logged and counted for a request withdrawn because its client left (nginx's
#: convention); nobody receives the answer.
CLIENT_LEFT = 499


async def client_left(request: Request) -> None:
    """Completes once ``request``'s client has disconnected."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
