"""The engine's registry hook (lakehouse_ml/engine/registry_hook.py): the local backend's model
registry satisfies it, and the engine registers and drops models through it."""

from __future__ import annotations

import inspect

from lakehouse_ml.backends.local_registry import LocalModelRegistry
from lakehouse_ml.engine.engine import BqmlEngine
from lakehouse_ml.engine.registry_hook import RegisteredVersion, RegistryHook

from .engine_data import binary


def _hook_methods() -> list[str]:
    return [
        name for name, _ in inspect.getmembers(RegistryHook, inspect.isfunction) if not name.startswith("_")
    ]


def test_local_model_registry_satisfies_the_hook(tmp_path):
    registry = LocalModelRegistry.at(tmp_path / "registry")
    assert isinstance(registry, RegistryHook)
    assert set(_hook_methods()) == {
        "drop_bqml_model",
        "find_bqml_version",
        "register_version",
        "replace_bqml_version",
    }
    # The keyword arguments the engine passes are the registry's own.
    for name in _hook_methods():
        declared = inspect.signature(getattr(RegistryHook, name)).parameters
        actual = inspect.signature(getattr(LocalModelRegistry, name)).parameters
        assert list(declared) == list(actual), name
        for parameter, spec in declared.items():
            assert actual[parameter].kind == spec.kind, (name, parameter)
            assert actual[parameter].default == spec.default, (name, parameter)


def test_the_engine_registers_and_drops_through_the_hook(tmp_path):
    hook: RegistryHook = LocalModelRegistry.at(tmp_path / "registry")
    engine = BqmlEngine(tmp_path / "models", registry=hook)
    engine.create_model("churn", {"model_type": "LOGISTIC_REG", "model_registry": "VERTEX_AI"}, binary(200))
    version = hook.find_bqml_version("bqml://main.churn")
    assert isinstance(version, RegisteredVersion)
    assert (version.model_id, version.version_id) == ("churn", "1")
    hook.drop_bqml_model("bqml://main.churn", check_only=True)  # not deployed: allowed
    engine.drop_model("churn")
    assert hook.find_bqml_version("bqml://main.churn") is None
