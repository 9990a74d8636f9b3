"""Drive the official `fal-client` against a running simulator; print what happened as JSON.

Run in a subprocess by test_conformance.py, because fal_client reads FAL_QUEUE_RUN_HOST and
the key when it is imported. Not a test module itself.
"""

import asyncio
import json
import sys

import fal_client


def sync_flow(endpoint: str, arguments: dict) -> dict:
    handle = fal_client.submit(endpoint, arguments=arguments)
    first = handle.status(with_logs=True)
    events = [type(s).__name__ for s in handle.iter_events(with_logs=True, interval=0.05)]
    result = handle.get()
    again = fal_client.status(endpoint, handle.request_id, with_logs=False)
    return {
        "request_id": handle.request_id,
        "first_status": type(first).__name__,
        "events": events,
        "result": result,
        "status_by_id": type(again).__name__,
        "result_by_id": fal_client.result(endpoint, handle.request_id),
    }


def cancel_flow(endpoint: str, arguments: dict) -> dict:
    # With the simulator's only slot held by a slow job, this one waits IN_QUEUE.
    blocker = fal_client.submit(endpoint, arguments=arguments)
    queued = fal_client.submit(endpoint, arguments=arguments)
    status = queued.status()
    queued.cancel()
    outcome: dict = {"queued_status": type(status).__name__, "cancelled": True}
    try:
        queued.get()
    except fal_client.client.FalClientHTTPError as exc:
        outcome["cancelled_result_status"] = exc.status_code
    try:
        fal_client.cancel(endpoint, "00000000-0000-0000-0000-000000000000")
    except fal_client.client.FalClientHTTPError as exc:
        outcome["unknown_cancel_status"] = exc.status_code
    blocker.get()
    try:
        blocker.cancel()
    except fal_client.client.FalClientHTTPError as exc:
        outcome["completed_cancel_status"] = exc.status_code
    return outcome


async def async_flow(endpoint: str, arguments: dict) -> dict:
    client = fal_client.AsyncClient()
    result = await client.subscribe(endpoint, arguments=arguments, with_logs=True)
    return {"result": result}


def main() -> None:
    mode, endpoint, arguments = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if mode == "sync":
        out = sync_flow(endpoint, arguments)
    elif mode == "cancel":
        out = cancel_flow(endpoint, arguments)
    else:
        out = asyncio.run(async_flow(endpoint, arguments))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
