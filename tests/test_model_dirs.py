"""Models an installed distribution ships (the `dbprompt.models` entry points) load by name like dbprompt's own."""

from __future__ import annotations

import importlib.metadata
import json
import sys

import open_clip
import open_clip.factory
import pytest

from dbprompt.backbones import load_backbone, model_dirs, shipped_weights
from dbprompt.backbones.recorded import check_recorded_backbone
from dbprompt.compat import BackboneId

TINY = json.loads((model_dirs.OWN / "dbprompt-tiny.json").read_text())


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A package `fake_models` whose directory holds one config, named by a monkeypatched entry point; open_clip's
    registry and the directories read are put back afterwards."""
    package = tmp_path / "fake_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin-tiny.json").write_text(json.dumps(TINY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_models", raising=False)
    entries = [importlib.metadata.EntryPoint("fake", "fake_models", model_dirs.GROUP)]
    calls = []

    def entry_points(**selection):
        calls.append(selection)
        return [e for e in entries if e.group == selection.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    monkeypatch.setattr(model_dirs, "_read", False)
    monkeypatch.setattr(model_dirs, "_dirs", [])
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIG_PATHS", list(open_clip.factory._MODEL_CONFIG_PATHS))
    monkeypatch.setattr(open_clip.factory, "_MODEL_CONFIGS", dict(open_clip.factory._MODEL_CONFIGS))
    return package, entries, calls


def test_an_entry_point_s_directory_is_read_once_and_its_models_load_by_name(plugin):
    package, _, calls = plugin
    assert "plugin-tiny" not in open_clip.list_models()
    backbone = load_backbone("plugin-tiny", "random")
    assert backbone.embed_dim == TINY["embed_dim"]
    assert model_dirs.model_dirs() == (model_dirs.OWN, package.resolve())
    assert calls == [{"group": model_dirs.GROUP}]  # read lazily, once
    assert shipped_weights("plugin-tiny") is None


def test_weights_beside_an_entry_point_s_config_are_shipped(plugin):
    package, _, _ = plugin
    load_backbone("plugin-tiny", "random")  # registers the directory
    from safetensors.torch import save_file

    model = load_backbone("plugin-tiny", "random", seed=3)
    save_file({k: v.contiguous() for k, v in model.model.state_dict().items()}, package / "plugin-tiny.safetensors")
    assert shipped_weights("plugin-tiny") == package.resolve() / "plugin-tiny.safetensors"
    shipped = load_backbone("plugin-tiny")
    assert shipped.pretrained == "plugin-tiny" and shipped.fingerprint() == model.fingerprint()


def test_a_file_recording_an_installed_model_loads_it_as_shipped(plugin):
    recorded = BackboneId(name="plugin-tiny", pretrained="random", fingerprint="0" * 16)
    assert check_recorded_backbone(recorded) is None  # random weights of a shipped small architecture: allowed


def test_a_broken_or_shadowing_plugin_leaves_dbprompt_working(plugin, caplog):
    package, entries, _ = plugin
    entries.append(importlib.metadata.EntryPoint("broken", "no_such_module_anywhere", model_dirs.GROUP))
    (package / "dbprompt-tiny.json").write_text(json.dumps(TINY | {"embed_dim": 32}))
    assert model_dirs.model_dirs() == (model_dirs.OWN,)
    assert "no_such_module_anywhere" in caplog.text and "dbprompt-tiny would replace" in caplog.text
    assert "plugin-tiny" not in open_clip.list_models()
    assert load_backbone("dbprompt-tiny", "random").embed_dim == TINY["embed_dim"]


def test_add_model_dir_registers_a_directory_like_an_entry_point(plugin, tmp_path):
    _, entries, _ = plugin
    entries.clear()
    other = tmp_path / "more"
    other.mkdir()
    (other / "more-tiny.json").write_text(json.dumps(TINY))
    model_dirs.add_model_dir(other)
    model_dirs.add_model_dir(other)  # twice is once
    assert model_dirs.model_dirs() == (model_dirs.OWN, other.resolve())
    assert load_backbone("more-tiny", "random").embed_dim == TINY["embed_dim"]
