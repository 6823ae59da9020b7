"""The plugin manager: discovery through entry points, name-keyed registries, test helpers.

Environment switches:

* ``CAMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load only camkit's built-in plugins, no third-party ones.
* ``CAMKIT_BLOCK_PLUGINS=name1,name2``: never load the named plugins (entry-point names).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterator, Mapping

import pluggy

from camkit import hookspecs

ENTRY_POINT_GROUP = "camkit"

# The built-ins, by entry-point name. They are declared as entry points too (pyproject.toml);
# this list is what loads when autoload is disabled.
DEFAULT_PLUGINS: dict[str, str] = {
    "core": "camkit_plugins.core",
    "cam": "camkit_plugins.methods.cam",
    "gradcam": "camkit_plugins.methods.gradcam",
    "gradcampp": "camkit_plugins.methods.gradcampp",
    "xgradcam": "camkit_plugins.methods.xgradcam",
    "layercam": "camkit_plugins.methods.layercam",
    "hirescam": "camkit_plugins.methods.hirescam",
    "scorecam": "camkit_plugins.methods.scorecam",
    "eigencam": "camkit_plugins.methods.eigencam",
    "image": "camkit_plugins.image",
    "skeleton": "camkit_plugins.skeleton",
    "gpu": "camkit_plugins.gpu",
    "metrics": "camkit_plugins.metrics",
    "bench": "camkit_plugins.bench",
}

REGISTRY_HOOKS = {
    "axes": "camkit_register_axes",
    "layouts": "camkit_register_layouts",
    "methods": "camkit_register_methods",
    "model_families": "camkit_register_model_families",
    "models": "camkit_register_models",
    "datasets": "camkit_register_datasets",
    "renderers": "camkit_register_renderers",
    "metrics": "camkit_register_metrics",
    "perturbations": "camkit_register_perturbations",
    "commands": "camkit_register_commands",
}


class PluginError(RuntimeError):
    """A plugin misbehaved (duplicate registration, bad hook answer)."""


@dataclass
class PluginManager:
    """A pluggy manager plus the record of what was loaded and what failed."""

    pm: pluggy.PluginManager
    failed: dict[str, str] = field(default_factory=dict)  # entry-point name -> error text
    blocked: set[str] = field(default_factory=set)
    distributions: dict[str, str] = field(default_factory=dict)  # plugin name -> "dist version"
    _cache: dict[Any, tuple[list[Any], dict[str, Any]]] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def registry(self, kind: str) -> dict[str, Any]:
        """Merge every plugin's answer to ``camkit_register_<kind>`` into one dict.

        A name registered twice is a ``PluginError`` naming both plugins. Cached until the set of
        registered plugins changes (``temporary_plugin`` included)."""
        if kind not in REGISTRY_HOOKS:
            raise KeyError(f"unknown registry {kind!r}; known: {', '.join(sorted(REGISTRY_HOOKS))}")
        with self._lock:  # threads may look up while another registers a plugin
            plugins = list(self.pm.get_plugins())
            key = (kind, frozenset(map(id, plugins)))
            if key not in self._cache:
                self._cache = {k: v for k, v in self._cache.items() if k[1] == key[1]}  # drop stale plugin sets
                # the cached entry holds the plugins themselves, so their ids cannot be reused meanwhile
                self._cache[key] = (plugins, self._merge(kind))
            return dict(self._cache[key][1])

    def _merge(self, kind: str) -> dict[str, Any]:
        caller = getattr(self.pm.hook, REGISTRY_HOOKS[kind])
        merged: dict[str, Any] = {}
        owner: dict[str, str] = {}
        for impl in caller.get_hookimpls():  # registration order
            answer = impl.function()
            if answer is None:
                continue
            if not isinstance(answer, Mapping):
                raise PluginError(f"plugin {impl.plugin_name!r}: {REGISTRY_HOOKS[kind]} must return a mapping, "
                                  f"got {type(answer).__name__}")
            for name, value in answer.items():
                if name in merged:
                    raise PluginError(f"{kind[:-1] if kind.endswith('s') else kind} {name!r} is registered twice: "
                                      f"by plugin {owner[name]!r} and by plugin {impl.plugin_name!r}")
                merged[name] = value
                owner[name] = impl.plugin_name
        return dict(sorted(merged.items()))

    def describe(self) -> list[dict[str, Any]]:
        """One entry per loaded plugin: name, module, hooks it implements; then failed ones."""
        rows = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda kv: kv[0]):
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append({
                "name": name,
                "module": getattr(plugin, "__name__", repr(plugin)),
                "distribution": self.distributions.get(name),
                "hooks": hooks,
                "status": "loaded",
            })
        for name, error in sorted(self.failed.items()):
            rows.append({"name": name, "module": None, "distribution": None, "hooks": [], "status": f"failed: {error}"})
        for name in sorted(self.blocked):
            rows.append({"name": name, "module": None, "distribution": None, "hooks": [], "status": "blocked"})
        return rows


def _blocked_names() -> set[str]:
    raw = os.environ.get("CAMKIT_BLOCK_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _register_module(manager: PluginManager, name: str, module_name: str, dist: Any = None) -> None:
    try:
        module = importlib.import_module(module_name)
        manager.pm.register(module, name=name)
    except Exception as exc:  # a broken plugin is reported, never fatal
        manager.failed[name] = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"camkit: plugin {name!r} ({module_name}) failed to load and was skipped: "
                      f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
        return
    if dist is not None:
        manager.distributions[name] = f"{dist.metadata['Name']} {dist.version}"


def create_plugin_manager(autoload: bool | None = None) -> PluginManager:
    """A fresh manager with the hookspecs, the built-ins and (unless disabled) every entry point."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    if autoload is None:
        autoload = not _truthy(os.environ.get("CAMKIT_DISABLE_PLUGIN_AUTOLOAD"))
    blocked = _blocked_names()
    seen: set[str] = set()
    if autoload:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            if ep.name in blocked:
                manager.blocked.add(ep.name)
                continue
            _register_module(manager, ep.name, ep.value.split(":")[0], getattr(ep, "dist", None))
    # Built-ins missing from the installed metadata (e.g. run from a source tree) still load.
    for name, module_name in DEFAULT_PLUGINS.items():
        if name in seen:
            continue
        if name in blocked:
            manager.blocked.add(name)
            continue
        _register_module(manager, name, module_name)
    pm.check_pending()
    return manager


_manager: PluginManager | None = None
_lock = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide manager, created on first use."""
    global _manager
    with _lock:
        if _manager is None:
            _manager = create_plugin_manager()
        return _manager


def set_plugin_manager(manager: PluginManager | None) -> None:
    """Replace the process-wide manager (``None``: rebuild on next use). For tests and embedding."""
    global _manager
    with _lock:
        _manager = manager


def registry(kind: str) -> dict[str, Any]:
    """The merged registry ``kind`` ("methods", "layouts", "models", ...) of the current plugins."""
    return get_plugin_manager().registry(kind)


def lookup(kind: str, name: str) -> Any:
    """One entry of a registry; an unknown name is a ``KeyError`` listing the available ones."""
    entries = registry(kind)
    if name not in entries:
        import difflib

        close = difflib.get_close_matches(name, list(entries), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown {kind[:-1] if kind.endswith('s') else kind} {name!r}.{hint} "
                       f"Available: {', '.join(entries) or '(none)'}")
    return entries[name]


@contextlib.contextmanager
def temporary_plugin(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (a module or object with hookimpls) for the duration of the block."""
    manager = get_plugin_manager()
    with manager._lock:  # not while another thread reads the registries
        registered_name = manager.pm.register(plugin, name=name)
    if registered_name is None:
        raise PluginError(f"plugin {name or plugin!r} is blocked or already registered")
    try:
        manager.pm.check_pending()
        yield plugin
    finally:
        with manager._lock:
            manager.pm.unregister(plugin)
