"""What needs jupyter_client and pyzmq; imported when the first kernel starts, so that the
agent itself starts without them (about 100 ms of imports)."""

from __future__ import annotations

import logging
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.connect import ConnectionFileMixin
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.multikernelmanager import AsyncMultiKernelManager
from traitlets.config import Config

from kernel_image.kernels_spec import PYTHON3, python3_spec, resource_dir

__all__ = ["AgentKernelSpecManager", "NoSuchKernel", "close_socket", "connect", "make_manager"]


class AgentKernelSpecManager(KernelSpecManager):
    """Only the agent's own ``python3``: ipykernel on the agent's interpreter.

    Kernelspecs a user installs under ``$HOME`` (the workspace) are not looked at: the kernel a
    notebook gets must not depend on files in it.
    """

    def find_kernel_specs(self) -> dict[str, str]:
        """The one kernelspec, and its resource folder."""
        return {PYTHON3: resource_dir() or ""}

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        """The python3 spec; ``NoSuchKernel`` for any other name."""
        if kernel_name != PYTHON3:
            raise NoSuchKernel(kernel_name)
        return KernelSpec(resource_dir=resource_dir() or "", **python3_spec())

    def get_all_specs(self) -> dict[str, dict[str, Any]]:
        """The one kernelspec, as jupyter_client lists them."""
        spec = self.get_kernel_spec(PYTHON3)
        return {PYTHON3: {"resource_dir": spec.resource_dir, "spec": spec.to_dict()}}


def make_manager(
    connection_dir: str, shutdown_wait: float, log: logging.Logger
) -> AsyncMultiKernelManager:
    """The agent's multi-kernel manager: connection files in ``connection_dir``, ZMQ on
    127.0.0.1, dead kernels restarted on the same ports (clients stay connected)."""
    config = Config(
        {
            "KernelManager": {"ip": "127.0.0.1", "shutdown_wait_time": shutdown_wait},
            # New ports would strand every socket connected to the old ones.
            "KernelRestarter": {"random_ports_until_alive": False},
        }
    )
    return AsyncMultiKernelManager(
        config=config,
        kernel_spec_manager=AgentKernelSpecManager(config=config),
        connection_dir=connection_dir,
        default_kernel_name=PYTHON3,
        log=log,
    )


def connect(
    km: AsyncKernelManager, channel: str, identity: bytes | None = None
) -> zmq.asyncio.Socket:
    """An asyncio socket connected to one of the kernel's channels.

    ``AsyncIOLoopKernelManager`` wraps its sockets in tornado ``ZMQStream`` callbacks; the
    mixin's own methods give plain sockets of the shared ``zmq.asyncio`` context instead.
    """
    factory = {
        "iopub": ConnectionFileMixin.connect_iopub,
        "shell": ConnectionFileMixin.connect_shell,
        "control": ConnectionFileMixin.connect_control,
        "stdin": ConnectionFileMixin.connect_stdin,
    }[channel]
    sock = factory(km, identity=identity)
    if not isinstance(sock, zmq.asyncio.Socket):
        msg = f"expected an asyncio socket, got {type(sock).__name__}"
        raise TypeError(msg)
    return sock


def close_socket(sock: zmq.asyncio.Socket) -> None:
    """Close at once, dropping unsent messages (the kernel may be gone)."""
    if not sock.closed:
        sock.close(linger=0)


ZMQError = zmq.ZMQError
