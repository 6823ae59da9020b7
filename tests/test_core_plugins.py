"""The plugin system: registries, a new method in a small plugin, discovery, switches, the CLI."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import camkit
from camkit import hookimpl, temporary_plugin
from camkit.plugin_manager import PluginError, create_plugin_manager

ROOT = Path(__file__).resolve().parents[1]


def run_camkit(*args, env=None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "camkit", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=120)


class NegativeGradCam:
    """A CAM method in a 20-line plugin: Grad-CAM of the *negative* gradient (counterfactual)."""

    @hookimpl
    def camkit_register_methods(self):
        from camkit.methods import CamMethod, Weights

        class Counterfactual(CamMethod):
            name = "counterfactual"
            needs_gradients = True

            def weights(self, ctx):
                return Weights.channel(-ctx.sum_over_sites(ctx.gradients) / ctx.num_sites)

        return {"counterfactual": Counterfactual}


def test_a_new_method_from_a_small_plugin(gap_net_factory):
    net = gap_net_factory(channels=4, classes=3)
    x = torch.randn(2, 3, 6, 6)
    assert "counterfactual" not in camkit.registry("methods")
    with temporary_plugin(NegativeGradCam(), name="negative"):
        assert "counterfactual" in camkit.available_methods()
        res = camkit.explain(net, x, "counterfactual", relu=False, normalize=False)
        plain = camkit.explain(net, x, "gradcam", relu=False, normalize=False)
        torch.testing.assert_close(res.maps, -plain.maps)
    assert "counterfactual" not in camkit.registry("methods")


def test_duplicate_names_are_errors_naming_both_plugins():
    class Dup:
        @hookimpl
        def camkit_register_methods(self):
            return {"gradcam": object}

    with temporary_plugin(Dup(), name="dup"):
        with pytest.raises(PluginError, match=r"'gradcam' is registered twice.*'gradcam'.*'dup'"):
            camkit.registry("methods")


def test_unknown_method_lists_available():
    with pytest.raises(KeyError, match=r"unknown method 'gradcm'.*Did you mean 'gradcam'.*Available: .*scorecam"):
        camkit.Explainer(nn.Linear(2, 2), "gradcm")


def test_firstresult_kernel_hook_prefers_plugins():
    from camkit.kernels import TorchKernel, select_kernel

    class Tagged(TorchKernel):
        name = "tagged"

    class KernelPlugin:
        @hookimpl
        def camkit_select_kernel(self, device_type, dtype):
            return Tagged() if dtype == torch.float64 else None

    assert select_kernel(torch.zeros(1, dtype=torch.float64)).name == "torch"
    with temporary_plugin(KernelPlugin(), name="tagged-kernel"):
        assert select_kernel(torch.zeros(1, dtype=torch.float64)).name == "tagged"
        assert select_kernel(torch.zeros(1)).name == "torch"  # declined -> built-in


def test_misspelt_hook_fails_loudly():
    class Typo:
        @hookimpl
        def camkit_register_metods(self):
            return {}

    with pytest.raises(Exception, match="unknown hook|camkit_register_metods"):
        with temporary_plugin(Typo(), name="typo"):
            pass


def test_layout_plugin_adds_axis_letters():
    class GraphAxes:
        @hookimpl
        def camkit_register_axes(self):
            return {"P": "discrete"}

        @hookimpl
        def camkit_register_layouts(self):
            return {"point-cloud": "NCP"}

    with pytest.raises(ValueError, match="unknown axis"):
        camkit.Layout.parse("NCP")
    with temporary_plugin(GraphAxes(), name="graph-axes"):
        layout = camkit.Layout.parse("point-cloud")
        assert layout.letters == "NCP" and layout.kind("P") == "discrete"


@pytest.fixture
def third_party(tmp_path):
    """A fake installed distribution with one good and one broken camkit plugin."""
    dist = tmp_path / "camkit_thirdparty-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: camkit-thirdparty\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[camkit]\nhappy = happy_plugin\nbroken = broken_plugin\n")
    (tmp_path / "happy_plugin.py").write_text(textwrap.dedent("""
        import camkit

        @camkit.hookimpl
        def camkit_register_layouts():
            return {"happy-layout": "NCL"}
    """))
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs a library that is not installed')\n")
    return tmp_path


def test_broken_third_party_plugin_is_reported_not_fatal(third_party):
    out = run_camkit("plugins", "--json", env={"PYTHONPATH": str(third_party)})
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert rows["happy"]["status"] == "loaded" and rows["happy"]["hooks"] == ["camkit_register_layouts"]
    assert rows["happy"]["distribution"] == "camkit-thirdparty 0.1"
    assert rows["broken"]["status"].startswith("failed: ImportError: needs a library")
    assert "broken" in out.stderr and "skipped" in out.stderr
    assert rows["cam"]["status"] == "loaded"


def test_env_switches_block_and_disable_autoload(third_party):
    env = {"PYTHONPATH": str(third_party), "CAMKIT_BLOCK_PLUGINS": "broken,eigencam"}
    rows = {r["name"]: r for r in json.loads(run_camkit("plugins", "--json", env=env).stdout)}
    assert rows["broken"]["status"] == "blocked" and rows["eigencam"]["status"] == "blocked"
    assert rows["happy"]["status"] == "loaded"
    env = {"PYTHONPATH": str(third_party), "CAMKIT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    rows = {r["name"]: r for r in json.loads(run_camkit("plugins", "--json", env=env).stdout)}
    assert "happy" not in rows and "broken" not in rows
    assert rows["gradcam"]["status"] == "loaded"  # built-ins still load


def test_fresh_manager_is_independent():
    manager = create_plugin_manager(autoload=False)
    assert "gradcam" in manager.registry("methods")
    assert manager.pm is not camkit.get_plugin_manager().pm


def test_importing_camkit_and_listing_plugins_does_not_import_torch():
    code = ("import sys, camkit; rows = camkit.list_plugins(); "
            "assert rows and 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:5]; "
            "print(len(rows))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 9


def test_cli_plugins_table_and_python_m():
    out = run_camkit("plugins")
    assert out.returncode == 0
    assert re.search(r"^gradcam\s+loaded\s+camkit_plugins\.methods\.gradcam", out.stdout, re.M)
    assert "camkit_register_methods" in out.stdout
    listed = run_camkit("list", "methods")
    assert re.search(r"^gradcam\+\+\s+positive gradients", listed.stdout, re.M)  # one method a line, described
    assert run_camkit("list").stdout.count("\n") >= 9 and "methods: ablationcam, cam," in run_camkit("list").stdout
    axes = run_camkit("list", "axes").stdout  # the core's built-in letters, not "(none)"
    assert axes.startswith("axes: H (continuous)") and "V (discrete)" in axes and "M (reducible)" in axes
    bad = run_camkit("no-such-command")
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_every_hook_is_documented():
    from camkit import hookspecs

    doc = (ROOT / "docs" / "plugins.md").read_text()
    hooks = [name for name in dir(hookspecs) if name.startswith("camkit_")]
    assert len(hooks) >= 12
    missing = [h for h in hooks if f"### `{h}" not in doc]
    assert not missing, f"undocumented hooks in docs/plugins.md: {missing}"


def test_registry_cache_follows_registration():
    class Extra:
        @hookimpl
        def camkit_register_layouts(self):
            return {"extra-layout": "NCL"}

    before = camkit.registry("layouts")
    assert "extra-layout" not in before
    for _ in range(2):  # register, unregister, register a new object again: never a stale answer
        with temporary_plugin(Extra(), name="extra"):
            assert camkit.registry("layouts")["extra-layout"] == "NCL"
        assert camkit.registry("layouts") == before
    mutated = camkit.registry("layouts")
    mutated["sneaky"] = "NCL"  # callers get a copy
    assert "sneaky" not in camkit.registry("layouts")


def test_registries_can_be_read_from_threads_while_plugins_come_and_go():
    import sys
    import threading
    import types

    for kind in ("methods", "models"):
        camkit.registry(kind)
    errors, stop = [], threading.Event()

    def reader(kind):
        while not stop.is_set():
            try:
                assert "cam" in camkit.registry("methods") if kind == "methods" else camkit.registry(kind)
            except Exception as exc:  # collected for the assertion below, not swallowed
                errors.append(repr(exc))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: the race showed within a second
    threads = [threading.Thread(target=reader, args=(kind,)) for kind in ("methods", "models", "layouts")]
    try:
        for thread in threads:
            thread.start()
        for index in range(300):
            with camkit.temporary_plugin(types.ModuleType(f"transient{index}")):
                pass
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        sys.setswitchinterval(interval)
    assert errors == []


def test_the_command_reports_user_errors_in_one_line_with_status_2():
    done = run_camkit("list", "no-such-kind")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("camkit: error: unknown registry 'no-such-kind'. Available: axes,")
    traced = run_camkit("list", "no-such-kind", env={"CAMKIT_TRACEBACK": "1"})
    assert traced.returncode == 1 and "Traceback" in traced.stderr and "UnknownNameError" in traced.stderr


def test_a_blocked_name_cannot_be_taken_by_a_temporary_plugin(monkeypatch):
    from camkit.plugin_manager import PluginError, set_plugin_manager

    monkeypatch.setenv("CAMKIT_BLOCK_PLUGINS", "eigencam")
    set_plugin_manager(None)
    try:
        assert "eigencam" not in camkit.registry("methods")
        rows = {row["name"]: row for row in camkit.list_plugins()}
        assert rows["eigencam"]["status"] == "blocked" and rows["gradcam"]["distribution"].startswith("camkit ")

        class Impostor:
            @camkit.hookimpl
            def camkit_register_methods(self):
                return {"eigencam": object}

        with pytest.raises(PluginError, match="'eigencam' is blocked"):
            with camkit.temporary_plugin(Impostor(), name="eigencam"):
                pass
    finally:
        set_plugin_manager(None)


def test_unknown_names_list_close_matches_without_quotes():
    from camkit.plugin_manager import UnknownNameError

    with pytest.raises(UnknownNameError) as caught:
        camkit.lookup("methods", "gradcm")
    assert str(caught.value).startswith("unknown method 'gradcm'. Did you mean 'gradcam'")
    assert isinstance(caught.value, KeyError)


def test_an_unknown_name_is_both_a_key_error_and_a_value_error():
    from camkit.plugin_manager import UnknownNameError

    error = UnknownNameError.of("mask rule", "treshold", ["threshold", "topk"])
    assert isinstance(error, KeyError) and isinstance(error, ValueError)  # registry look-ups and option values
    assert str(error) == "unknown mask rule 'treshold'. Did you mean 'threshold'? Available: threshold, topk"
    assert str(UnknownNameError.of("layout", "zz", [])) == "unknown layout 'zz'. Available: (none)"


def test_an_unknown_registry_suggests_the_close_one():
    with pytest.raises(KeyError, match=r"unknown registry 'metods'\. Did you mean 'methods', .*\? Available: axes,"):
        camkit.registry("metods")
