"""``SandboxesApp``: the sandboxes extension's wiring into the server."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from jupyter_server.extension.application import ExtensionApp
from traitlets import Type

from extensions.sandboxes import events_handler
from extensions.sandboxes.events import EventHub
from extensions.sandboxes.handlers import default_handlers
from extensions.sandboxes.manager import Sandboxes
from extensions.sandboxes.packages import handlers as package_handlers
from extensions.sandboxes.packages.index import PackageIndex
from extensions.sandboxes.spawners.base import Spawner
from platform_server.app import PlatformApp
from platform_server.db.secrets import load_or_create_secret
from platform_server.errors import DatabaseUnavailable

# Short names of the spawners, as JupyterHub names its spawners' entry points:
# --SandboxesApp.spawner_class=kubernetes
SPAWNERS = {
    "local": "extensions.sandboxes.spawners.local.LocalSpawner",
    "kubernetes": "extensions.sandboxes.spawners.kubernetes.KubernetesSpawner",
}


class SpawnerType(Type):  # type: ignore[type-arg]
    """A ``Spawner`` subclass, given as a class, an import name, or a short name."""

    def validate(self, obj: Any, value: Any) -> Any:
        """Resolve a short name, then check as ``Type`` does."""
        if isinstance(value, str):
            value = SPAWNERS.get(value, value)
        return super().validate(obj, value)

    def _resolve_string(self, string: str) -> Any:
        return super()._resolve_string(SPAWNERS.get(string, string))


class SandboxesApp(ExtensionApp):
    """Sandbox lifecycle (``/api/workspaces/<uuid>/sandbox``), culling, and the spawner."""

    name = "sandboxes"
    load_other_extensions = True

    spawner_class = SpawnerType(
        "local",
        klass=Spawner,
        help="How sandboxes are started: 'local' (bubblewrap on this machine, the default), "
        "'kubernetes' (a pod per sandbox), or the import name of a Spawner subclass.",
    ).tag(config=True)

    _tasks: list[asyncio.Task[None]] = []  # noqa: RUF012  (replaced per instance on start)

    def initialize_settings(self) -> None:
        """Make the spawner and the ``Sandboxes`` service."""
        platform = cast(PlatformApp, self.serverapp)
        spawner_class = cast(type[Spawner], self.spawner_class)
        spawner_options: dict[str, Any] = {}
        if "data_dir" in spawner_class.class_trait_names():
            spawner_options["data_dir"] = platform.data_dir
        spawner = spawner_class(parent=self, **spawner_options)
        sandboxes = Sandboxes(
            parent=self,
            db=platform.db,
            spawner=spawner,
            events=EventHub(platform.db.conninfo, self.log),
            token_key=load_or_create_secret(platform.db.conninfo, "agent_token_key"),
            package_index=PackageIndex(parent=self, data_dir=platform.data_dir),
        )
        self.settings["sandboxes"] = sandboxes

    def initialize_handlers(self) -> None:
        """Register the REST handlers."""
        self.handlers.extend(default_handlers)
        self.handlers.extend(events_handler.default_handlers)
        self.handlers.extend(package_handlers.default_handlers)

    @property
    def sandboxes(self) -> Sandboxes:
        """The sandboxes service."""
        return cast(Sandboxes, self.settings["sandboxes"])

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Check the host can run sandboxes, reattach to them, then start culling."""
        await self.sandboxes.spawner.check()
        await self.sandboxes.reconcile()
        self.sandboxes.events.start()
        self._tasks = [
            asyncio.create_task(self.sandboxes.culler.cull_forever()),
            asyncio.create_task(self.sandboxes.sync_leases.renew_forever()),
            asyncio.create_task(self.sandboxes.pool.fill_forever()),
            asyncio.create_task(self.sandboxes.health.check_forever()),
        ]

    async def stop_extension(self) -> None:
        """Stop the background work; sandboxes keep running (a restart reattaches to them)."""
        try:
            await self.sandboxes.culler.log_survivors()
        except DatabaseUnavailable:
            self.log.warning("sandboxes | cannot count the sandboxes left running: no database")
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.sandboxes.close()
        await self.sandboxes.events.stop()
        await self.sandboxes.spawner.close()
