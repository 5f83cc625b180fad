"""The agent token hand-over on first contact: ``PUT /api/token`` to a ready pod's agent."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from extensions.sandboxes.spawners.base import SpawnerError

NO_ANSWER = 599  # tornado's code for an answer that never came (a timeout, a lost connection)


async def hand_over(
    sandbox_id: str,
    url: str,
    token: str,
    deadline: float,
    *,
    image: str,
    launch_timeout: float,
    log: logging.Logger | logging.LoggerAdapter[Any],
) -> None:
    """``PUT`` the token to the agent at ``url`` (``deadline``: ``time.monotonic()``).

    204 is success, also when the agent has this token already (another replica, or a
    retry after a lost answer: replicas derive the same token from the sandbox id). 409
    means that someone else claimed the agent first: the start fails (and the pod is
    deleted). A connection that fails is tried again until the deadline.
    """
    body = json.dumps({"token": token})
    http = SimpleAsyncHTTPClient(force_instance=True)
    try:
        while True:
            remaining = max(0.5, deadline - time.monotonic())
            try:
                await http.fetch(
                    url,
                    method="PUT",
                    body=body,
                    headers={"Content-Type": "application/json"},
                    connect_timeout=min(5.0, remaining),
                    request_timeout=min(10.0, remaining),
                )
            except HTTPClientError as e:
                if e.code == 409:
                    msg = (
                        f"Sandbox {sandbox_id} was claimed by someone else before the "
                        "platform handed its agent the token; the pod was deleted. Check "
                        "that the cluster enforces the sandbox NetworkPolicy "
                        "(k8s/base/networkpolicies.yaml): only the platform may reach the "
                        "agent port."
                    )
                    raise SpawnerError(msg) from None
                if e.code != NO_ANSWER:
                    msg = (
                        f"Sandbox {sandbox_id}: its agent refused the token ({e.code}: "
                        f"{agent_message(e)}). Is {image} the agent image of this "
                        "platform's version?"
                    )
                    raise SpawnerError(msg) from None
                failure = str(e)
            except OSError as e:
                failure = str(e)
            else:
                log.info("sandbox %s | token handed to its agent", sandbox_id)
                return
            if time.monotonic() >= deadline:
                msg = (
                    f"Sandbox {sandbox_id}: its agent did not take the token within "
                    f"{launch_timeout:.0f} s ({failure})."
                )
                raise SpawnerError(msg)
            await asyncio.sleep(0.2)
    finally:
        http.close()


def agent_message(error: HTTPClientError) -> str:
    """What an agent's JSON error says, else the HTTP reason."""
    response = error.response
    if response is not None:
        try:
            message = json.loads(response.body).get("message")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str):
            return message
    return str(error.message)
