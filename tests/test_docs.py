"""Generated reference docs match the code."""

from __future__ import annotations

from gateway import docgen


def test_configuration_reference_is_up_to_date() -> None:
    assert docgen.CONFIG_DOC.read_text() == docgen.config_reference(), "run: python -m gateway.docgen"


def test_policy_reference_is_up_to_date() -> None:
    assert docgen.POLICY_DOC.read_text() == docgen.policy_reference(), "run: python -m gateway.docgen"


def test_every_config_field_has_a_description() -> None:
    from pydantic import BaseModel

    from gateway.config import Config

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for sub in docgen._nested(field.annotation):
                walk(sub)

    walk(Config)
