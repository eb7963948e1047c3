"""config.yaml validation: unknown keys rejected, errors name the file, line and dotted path."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.yamlsrc import ConfigError

ROOT = Path(__file__).resolve().parent.parent
VALID = """\
deployments:
  eu:
    kind: openai_compatible
    base_url: http://127.0.0.1:1/v1
    model: m
    jurisdiction: EU
    region: fr
models:
  chat:
    deployments: [eu]
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    return exc.value.problems


def test_the_shipped_config_is_valid() -> None:
    config = load_config(ROOT / "config.yaml")
    assert {d.jurisdiction for d in config.deployments.values()} == {"EU", "US"}
    assert config.deployments["openai-gpt4"].dpa is True
    assert {d.kind for d in config.deployments.values()} >= {"openai_compatible", "azure_openai"}


def test_a_valid_sample_loads(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(VALID)
    assert load_config(tmp_path / "config.yaml").models["chat"].deployments == ["eu"]


def test_unknown_key_names_file_line_and_path(tmp_path: Path) -> None:
    text = VALID.replace("    region: fr\n", "    region: fr\n    regoin: fr\n")
    assert problems(tmp_path, text) == [f"{tmp_path / 'config.yaml'}:8: deployments.eu.regoin: unknown key"]


def test_bad_jurisdiction_is_reported_at_its_line(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace("jurisdiction: EU", "jurisdiction: europe"))
    assert problem.startswith(
        f"{tmp_path / 'config.yaml'}:6: deployments.eu.jurisdiction: String should match"
    )


def test_alias_naming_a_missing_deployment(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID.replace("deployments: [eu]", "deployments: [eu, gone]"))
    assert problem == f"{tmp_path / 'config.yaml'}:10: models.chat.deployments[1]: unknown deployment 'gone'"


def test_missing_env_var_is_an_error_and_defaults_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GW_TEST_KEY", raising=False)
    [problem] = problems(tmp_path, VALID.replace("model: m", "model: m\n    api_key: ${GW_TEST_KEY}"))
    assert "deployments.eu.api_key: environment variable GW_TEST_KEY is not set" in problem
    (tmp_path / "config.yaml").write_text(
        VALID.replace("model: m", "model: m\n    api_key: ${GW_TEST_KEY:-x}")
    )
    assert load_config(tmp_path / "config.yaml").deployments["eu"].api_key == "x"
    monkeypatch.setenv("GW_TEST_KEY", "from-env")
    assert load_config(tmp_path / "config.yaml").deployments["eu"].api_key == "from-env"


def test_credentials_never_appear_in_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "sk-very-secret")
    (tmp_path / "config.yaml").write_text(VALID.replace("model: m", "model: m\n    api_key: ${GW_TEST_KEY}"))
    assert "sk-very-secret" not in repr(load_config(tmp_path / "config.yaml"))


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    [problem] = problems(tmp_path, VALID + "  - broken: [\n")
    assert "invalid YAML" in problem
    assert "config.yaml:" in problem


def test_database_url_env_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@h/db")
    (tmp_path / "config.yaml").write_text(VALID)
    assert load_config(tmp_path / "config.yaml").storage.database_url == "postgresql+psycopg://u@h/db"


def test_environment_values_stay_strings_and_the_settings_coerce_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "0123")  # not the octal 83
    monkeypatch.setenv("GW_TEST_REGION", "on")  # not True
    monkeypatch.setenv("GW_TEST_PORT", "9090")
    text = (
        VALID.replace("model: m", "model: m\n    api_key: ${GW_TEST_KEY}").replace(
            "region: fr", "region: ${GW_TEST_REGION}"
        )
        + "server:\n  port: ${GW_TEST_PORT}\n  workers: ${GW_TEST_WORKERS:-2}\n"
    )
    (tmp_path / "config.yaml").write_text(text)
    config = load_config(tmp_path / "config.yaml")
    assert config.deployments["eu"].api_key == "0123"
    assert config.deployments["eu"].region == "on"
    assert (config.server.port, config.server.workers) == (9090, 2)
    monkeypatch.setenv("GW_TEST_PORT", "eighty")
    [problem] = problems(tmp_path, text)
    assert problem.startswith(f"{tmp_path / 'config.yaml'}:13: server.port: Input should be a valid integer")


def test_merge_keys_merge_and_keep_the_line_of_what_they_merged(tmp_path: Path) -> None:
    text = VALID.replace("deployments:\n  eu:\n", "deployments:\n  eu: &eu\n") + (
        "  eu2:\n    <<: *eu\n    region: de\n    regoin: de\n"
    )
    text = (
        text.replace("models:\n  chat:\n    deployments: [eu]\n", "")
        + "models:\n  chat:\n    deployments: [eu, eu2]\n"
    )
    [problem] = problems(tmp_path, text)
    assert problem == f"{tmp_path / 'config.yaml'}:11: deployments.eu2.regoin: unknown key"
    (tmp_path / "config.yaml").write_text(text.replace("    regoin: de\n", ""))
    config = load_config(tmp_path / "config.yaml")
    assert (config.deployments["eu2"].region, config.deployments["eu2"].base_url) == (
        "de",
        "http://127.0.0.1:1/v1",
    )
    [problem] = problems(tmp_path, VALID + "server:\n  <<: 5\n")
    assert problem == (
        f"{tmp_path / 'config.yaml'}:12: server: "
        "expected a mapping or list of mappings for merging, but found scalar"
    )
