"""Service settings: defaults, configs/serve.yaml, environment overrides and errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from neural_router.policy.routing import DEFAULT_PRESET, PRESETS, Preferences
from neural_router.serving.config import ConfigError, PresetPreferences, ServeSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
SERVE_YAML = REPO / "configs" / "serve.yaml"


def test_serve_yaml_holds_exactly_the_defaults() -> None:
    """configs/serve.yaml is the annotated reference of ServeSettings: it cannot drift from it."""
    assert load_settings(SERVE_YAML).model_dump() == ServeSettings().model_dump()


def test_built_in_presets_are_the_policys() -> None:
    s = ServeSettings()
    assert s.default_preset == DEFAULT_PRESET
    assert {name: p.to_preferences() for name, p in s.presets.items()} == PRESETS
    assert PresetPreferences().to_preferences() == Preferences()  # the same defaults


def test_settings_from_yaml_env_and_keywords(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_config = load_settings(SERVE_YAML)
    assert repo_config.max_batch_size >= 1 and repo_config.default_preset in repo_config.presets
    f = tmp_path / "serve.yaml"
    f.write_text("max_batch_size: 4\npresets:\n  thrifty: {cost_weight: 2}\ndefault_preset: thrifty\n")
    monkeypatch.setenv("NEURAL_ROUTER_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__THRIFTY__LATENCY_WEIGHT", "0.5")
    s = load_settings(f, max_queue=7, port=None)
    assert s.max_batch_size == 16 and s.max_queue == 7 and s.port == 8000
    assert s.presets["thrifty"].cost_weight == 2 and s.presets["thrifty"].latency_weight == 0.5


@pytest.mark.parametrize(("text", "message"), [
    ("max_batch_size: 4\nmax_batch: 3\n", "max_batch"),
    ("presets: {a: {quality_weight: -1}}\ndefault_preset: a\n", "quality_weight"),
    ("[unclosed", "YAML"),
], ids=["unknown-key", "negative-weight", "not-yaml"])
def test_invalid_config_files_are_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "serve.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(f)


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def _presets(s: ServeSettings) -> dict[str, dict[str, float]]:
    return {name: p.model_dump() for name, p in s.presets.items()}


def test_env_override_of_one_preset_value_keeps_the_other_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The example in the header of configs/serve.yaml: one nested value from the environment, with
    or without a config file, changes that value only."""
    defaults = _presets(ServeSettings())
    assert defaults["cheap"]["cost_weight"] == 1.0
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT", "2")
    expected = {**defaults, "cheap": {**defaults["cheap"], "cost_weight": 2.0}}
    for s in (ServeSettings(), load_settings(), load_settings(SERVE_YAML)):
        assert _presets(s) == expected
        assert s.default_preset == "balanced"


def test_env_adds_a_preset_and_names_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # a preset the defaults lack is added; a bad value is still a clear error naming the variable's key
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__THRIFTY__COST_WEIGHT", "3")
    assert set(load_settings().presets) == {*PRESETS, "thrifty"}
    monkeypatch.setenv("NEURAL_ROUTER_PRESETS__CHEAP__COST_WEIGHT", "-1")
    with pytest.raises(ConfigError, match="presets.cheap.cost_weight"):
        load_settings()


def test_a_presets_map_replaces_the_built_in_presets(tmp_path: Path) -> None:
    # a presets map in the config file (or a keyword argument) replaces the built-in presets
    f = tmp_path / "serve.yaml"
    f.write_text("presets:\n  thrifty: {cost_weight: 2}\ndefault_preset: thrifty\n")
    assert set(load_settings(f).presets) == {"thrifty"}
    assert set(ServeSettings(presets={"only": {"cost_weight": 1}}, default_preset="only").presets) == {"only"}
