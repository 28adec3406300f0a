"""Ray's private API: used in one file only (spklip/runtime/ray_private.py), and every use still holds on the
installed Ray. On a Ray release that moves one, `problems()` names it here instead of a training run failing."""

import ast
import warnings
from pathlib import Path

import ray

from spklip.runtime import ray_private

ROOT = Path(__file__).resolve().parents[1] / "spklip"
HOME = ROOT / "runtime" / "ray_private.py"


def _private_uses(path: Path) -> list[str]:
    """Imports of ``ray._private``/``..._internal...`` modules or underscore names from ray, and ``ray._x``
    attribute chains, in one file."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.startswith("ray") and "._" in a.name]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ray":
            if "._" in node.module:
                out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id == "ray":
                out.append(".".join(["ray", *reversed(chain)]))
    return out


def test_private_ray_api_is_used_in_one_file_only():
    elsewhere = {str(p.relative_to(ROOT.parent)): uses for p in ROOT.rglob("*.py") if p != HOME
                 for uses in [_private_uses(p)] if uses}
    assert not elsewhere, elsewhere
    assert len(set(_private_uses(HOME))) >= 8  # the table of its docstring: each use is there


def test_every_private_use_holds_on_the_installed_ray():
    assert ray_private.problems() == []


def test_the_check_names_a_use_that_moved(monkeypatch):
    monkeypatch.delattr(ray_private._ray_worker, "_global_node")
    monkeypatch.setattr(ray_private._ray_torch_config, "get_address_and_port", lambda: ("127.0.0.1", 1))
    got = ray_private.problems()
    assert "ray._private.worker._global_node is gone" in got
    assert any("swap would not take" in line for line in got)


def test_the_version_check_warns_only_off_the_tested_release(monkeypatch):
    assert ray.__version__ == ray_private.TESTED_RAY  # pyproject.toml pins the release the uses were read in
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ray_private.check_version()
    monkeypatch.setattr(ray, "__version__", "9.9.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ray_private.check_version()
    assert any("Ray 9.9.0" in str(w.message) and "problems()" in str(w.message) for w in caught)


def test_the_store_address_swap_is_undone_after_on_start(monkeypatch):
    calls = []
    backend = ray_private.torch_backend_with_store_address(lambda: ("127.0.0.1", 4242))
    original = ray_private._ray_torch_config.get_address_and_port

    def on_start(self, worker_group, backend_config):  # what Ray's _TorchBackend.on_start does with the name
        calls.append(ray_private._ray_torch_config.get_address_and_port())

    monkeypatch.setattr(ray_private._TorchBackend, "on_start", on_start)
    backend().on_start(None, None)
    assert calls == [("127.0.0.1", 4242)]
    assert ray_private._ray_torch_config.get_address_and_port is original
