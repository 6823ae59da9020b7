"""The plugin manager: discovery through entry points, name-keyed registries, test helpers.

Environment switches:

* ``CAMKIT_DISABLE_PLUGIN_AUTOLOAD=1``: load only camkit's built-in plugins (the entry points of the
  camkit distribution itself), no third-party ones.
* ``CAMKIT_BLOCK_PLUGINS=name1,name2``: never load the named plugins (entry-point names); pluggy's
  ``set_blocked``, so nothing can register under those names later either.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterator, Mapping

import pluggy

from camkit import hookspecs

ENTRY_POINT_GROUP = "camkit"
# camkit's built-ins are the entry points of its own distribution (pyproject.toml is the one list)
BUILTIN_DISTRIBUTION = "camkit"

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


class UnknownNameError(KeyError, ValueError):
    """A name no registry (or option list) knows; the message lists close matches and what exists.

    A ``KeyError`` for registry look-ups and a ``ValueError`` for option values (a mask rule, a
    sampling), as those raised before it, so callers catching either keep working."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""

    @classmethod
    def of(cls, what: str, name: str, known: "list[str] | tuple[str, ...]", *, where: str = "",
           alternative: str = "") -> "UnknownNameError":
        """``unknown {what} {name!r}. Did you mean ...? Available: ...``, after ``{where}: `` when given
        (the file or entry the name was read from); ``alternative`` ends the list (``or a dict ...``)."""
        import difflib

        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        place = f"{where}: " if where else ""
        available = ", ".join([*known, f"or {alternative}"] if alternative else known) or "(none)"
        return cls(f"{place}unknown {what} {name!r}.{hint} Available: {available}")


@dataclass
class PluginManager:
    """A pluggy manager plus the record of what was loaded and what failed."""

    pm: pluggy.PluginManager
    failed: dict[str, str] = field(default_factory=dict)  # entry-point name -> error text
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
            raise UnknownNameError.of("registry", kind, sorted(REGISTRY_HOOKS))
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
        """One entry per plugin: name, module, distribution, hooks it implements, status (loaded, failed,
        blocked)."""
        rows: list[dict[str, Any]] = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda kv: kv[0]):
            if plugin is None:  # pluggy records a blocked name with no plugin
                rows.append({"name": name, "module": None, "distribution": None, "hooks": [], "status": "blocked"})
                continue
            rows.append({
                "name": name,
                "module": getattr(plugin, "__name__", repr(plugin)),
                "distribution": self.distributions.get(name),
                "hooks": sorted(h.name for h in self.pm.get_hookcallers(plugin) or []),
                "status": "loaded",
            })
        for name, error in sorted(self.failed.items()):
            rows.append({"name": name, "module": None, "distribution": None, "hooks": [], "status": f"failed: {error}"})
        return sorted(rows, key=lambda row: row["name"])

    def register_module(self, module: Any, name: str) -> None:
        """Register an extra plugin module once (e.g. named in a bench config); blocked names refused."""
        with self._lock:
            if self.pm.is_blocked(name):
                raise PluginError(f"plugin {name!r} is blocked (CAMKIT_BLOCK_PLUGINS)")
            if self.pm.get_plugin(name) is None and not self.pm.is_registered(module):
                self.pm.register(module, name=name)
            self.pm.check_pending()


def _blocked_names() -> set[str]:
    raw = os.environ.get("CAMKIT_BLOCK_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _load_entry_points(manager: PluginManager, builtin_only: bool) -> None:
    """Register every entry point of the ``camkit`` group (``module`` or ``module:attr``), as pluggy's
    ``load_setuptools_entrypoints`` does, except that a broken plugin is reported, not fatal."""
    seen: set[str] = set()
    for dist in sorted(metadata.distributions(), key=lambda d: (d.metadata["Name"] or "").lower()):
        if builtin_only and (dist.metadata["Name"] or "").lower() != BUILTIN_DISTRIBUTION:
            continue
        for ep in dist.entry_points:
            if ep.group != ENTRY_POINT_GROUP or ep.name in seen or manager.pm.is_blocked(ep.name):
                continue
            seen.add(ep.name)  # one plugin per name, as pluggy does, even when metadata is duplicated
            try:
                plugin = ep.load()
                manager.pm.register(plugin, name=ep.name)
            except Exception as exc:  # a broken plugin is reported, never fatal
                manager.failed[ep.name] = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"camkit: plugin {ep.name!r} ({ep.value}) failed to load and was skipped: "
                              f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=3)
                continue
            manager.distributions[ep.name] = f"{dist.metadata['Name']} {dist.version}"


def create_plugin_manager(autoload: bool | None = None) -> PluginManager:
    """A fresh manager with the hookspecs and the entry points: camkit's own (its built-ins) and, unless
    autoload is disabled, every other distribution's."""
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    manager = PluginManager(pm)
    if autoload is None:
        autoload = not _truthy(os.environ.get("CAMKIT_DISABLE_PLUGIN_AUTOLOAD"))
    for name in _blocked_names():
        pm.set_blocked(name)
    _load_entry_points(manager, builtin_only=not autoload)
    if not pm.get_plugins():
        warnings.warn("camkit: no plugins found; is camkit installed (pip install -e .)? Its built-ins are "
                      "entry points of the installed distribution", RuntimeWarning, stacklevel=2)
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
        raise UnknownNameError.of(kind[:-1] if kind.endswith("s") else kind, name, list(entries))
    return entries[name]


@contextlib.contextmanager
def temporary_plugin(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (a module or object with hookimpls) for the duration of the block."""
    manager = get_plugin_manager()
    with manager._lock:  # not while another thread reads the registries
        if name is not None and manager.pm.is_blocked(name):
            raise PluginError(f"plugin {name!r} is blocked (CAMKIT_BLOCK_PLUGINS)")
        registered_name = manager.pm.register(plugin, name=name)
    if registered_name is None:
        raise PluginError(f"plugin {name or plugin!r} is already registered")
    try:
        manager.pm.check_pending()
        yield plugin
    finally:
        with manager._lock:
            manager.pm.unregister(plugin)
