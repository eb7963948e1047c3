"""The policy bundle's own rules (gateway/bundle.py): each malformed file gets its one-line error
with file, line and path; and the bundle's chain order, header values, holder and file discovery.

test_layering.py covers merging and loosening; these pin every structural error message the
compliance team can meet and the small mechanisms around the bundle.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.bundle import (
    CANONICAL_ORDER,
    Bundle,
    BundleHolder,
    load_bundle,
    load_holder,
    order_warnings,
    parse_bundle,
    policy_files,
    watch,
)
from gateway.config import Config
from gateway.errors import GatewayError
from gateway.services import Services
from gateway.yamlsrc import ConfigError, loads

KNOWN = "consent_fallback, pii_redaction, rag_context, residency, token_accounting"


def problems(*texts: str) -> list[str]:
    sources = [loads(text, f"{name}.yaml", expand_env=False) for name, text in zip("ab", texts, strict=False)]
    with pytest.raises(ConfigError) as exc:
        parse_bundle(sources)
    return exc.value.problems


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- a\n- b\n", "a.yaml:1: <root>: expected a mapping"),
        (
            "version: 1\nextras: 1\n",
            "a.yaml:2: extras: unknown key (expected version, order, defaults, tenants)",
        ),
        ("version: 2\n", "a.yaml:1: version: unsupported version 2"),
        ("version: 1\ntenants: [a]\n", "a.yaml:2: tenants: expected a mapping of tenants"),
        ("version: 1\ntenants:\n  hr: 5\n", "a.yaml:3: tenants.hr: expected a mapping"),
        (
            "version: 1\ntenants:\n  hr:\n    apps: [x]\n",
            "a.yaml:4: tenants.hr.apps: expected a mapping of apps",
        ),
        ("version: 1\ndefaults: [residency]\n", "a.yaml:2: defaults: expected a mapping of policy sections"),
        ("version: 1\ndefaults:\n  residency: 5\n", "a.yaml:3: defaults.residency: expected a mapping"),
        (
            "version: 1\ndefaults:\n  residency: {mode: loud}\n",
            "a.yaml:3: defaults.residency.mode: must be one of ('enforce', 'shadow', 'off')",
        ),
        (
            "version: 1\ntenants:\n  hr:\n    residency: {replace: 'yes'}\n",
            "a.yaml:4: tenants.hr.residency.replace: must be true or false",
        ),
        (
            "version: 1\ntenants:\n  hr:\n    residency: {reason: '  '}\n",
            "a.yaml:4: tenants.hr.residency.reason: must be a non-empty string",
        ),
        (
            "version: 1\ntenants:\n  hr:\n    residency: {reason: 7}\n",
            "a.yaml:4: tenants.hr.residency.reason: must be a non-empty string",
        ),
        (
            "version: 1\ndefaults:\n  nonsense: {}\n",
            f"a.yaml:3: defaults.nonsense: unknown policy 'nonsense' (known: {KNOWN})",
        ),
        (
            "version: 1\ntenants:\n  hr:\n    apps:\n      bot:\n        replace: true\n",
            "a.yaml:6: tenants.hr.apps.bot.replace: `replace` belongs at the top of a policy section, not here",
        ),
        (
            "version: 1\norder: [residency, rag]\n",
            f"a.yaml:2: order[1]: unknown policy 'rag' (known: {KNOWN})",
        ),
    ],
)
def test_each_structural_error_is_one_line_with_file_line_and_path(text: str, message: str) -> None:
    assert problems(text) == [message]


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    found = problems("version: 3\nextras: 1\ndefaults:\n  residency: 5\n  nonsense: {}\n")
    assert found == [
        "a.yaml:2: extras: unknown key (expected version, order, defaults, tenants)",
        "a.yaml:1: version: unsupported version 3",
        "a.yaml:4: defaults.residency: expected a mapping",
        f"a.yaml:5: defaults.nonsense: unknown policy 'nonsense' (known: {KNOWN})",
    ]


def test_the_order_is_written_in_one_file() -> None:
    assert problems("version: 1\norder: [residency]\n", "version: 1\norder: [residency]\n") == [
        "b.yaml:2: order: already set at a.yaml:2; write it in one file"
    ]


def test_empty_sections_tenants_and_apps_are_allowed() -> None:
    bundle = parse_bundle(
        [
            loads(
                "version: 1\ndefaults:\ntenants:\n  hr:\n    apps:\n      bot:\n        residency:\n",
                "a.yaml",
                expand_env=False,
            )
        ]
    )
    assert bundle.scopes() == [("", ""), ("hr", ""), ("hr", "bot")]
    assert bundle.sections_for("hr", "bot") == {"residency": {}}
    assert bundle.order == CANONICAL_ORDER


def test_chain_position_puts_the_named_order_first_then_the_rest_canonically() -> None:
    bundle = parse_bundle(
        [loads("version: 1\norder: [token_accounting, residency]\n", "a.yaml", expand_env=False)]
    )
    assert bundle.position() == [
        "token_accounting",
        "residency",
        "consent_fallback",
        "rag_context",
        "pii_redaction",
    ]
    assert Bundle.empty().position() == list(CANONICAL_ORDER)
    assert Bundle.empty().hash == "e3b0c44298fc1c14"  # sha256 of nothing, cut to 16


def test_the_rag_before_pii_warning_points_at_the_order_line() -> None:
    text = (
        "version: 1\norder: [pii_redaction, rag_context]\ndefaults:\n  pii_redaction: {}\n"
        "tenants:\n  hr:\n    apps:\n      bot:\n        rag_context: {collection: hb}\n"
    )
    assert order_warnings(parse_bundle([loads(text, "a.yaml", expand_env=False)])) == [
        "a.yaml:2: order: rag_context runs after pii_redaction, so retrieved context reaches the model without "
        "PII redaction; put rag_context first"
    ]
    fine = text.replace("[pii_redaction, rag_context]", "[rag_context, pii_redaction]")
    assert order_warnings(parse_bundle([loads(fine, "a.yaml", expand_env=False)])) == []
    unused = "version: 1\norder: [pii_redaction, rag_context]\ndefaults:\n  pii_redaction: {}\n"
    assert order_warnings(parse_bundle([loads(unused, "a.yaml", expand_env=False)])) == []


def test_a_data_class_header_must_name_a_configured_class() -> None:
    text = (
        "version: 1\ndefaults:\n  residency: {data_classes: {public: [EU]}}\ntenants:\n  hr:\n"
        "    residency: {data_classes: {internal: [EU]}}\n  ops:\n    residency: {mode: 'off', "
        "data_classes: {secret: [EU]}}\n"
    )
    bundle = parse_bundle([loads(text, "a.yaml", expand_env=False)])
    assert bundle.header_values() == {
        "x-data-class": frozenset({"public", "internal"})
    }  # not the off section's
    bundle.check_header("x-data-class", "public")
    bundle.check_header("x-data-class", None)
    bundle.check_header("x-other", "anything")
    with pytest.raises(GatewayError) as refused:
        bundle.check_header("x-data-class", "secret")
    assert (refused.value.status, refused.value.code) == (400, "invalid_request.data_class")
    assert refused.value.message == "X-Data-Class must be one of the configured values: internal, public."


def test_the_holder_binds_services_and_swaps_bundles_with_them() -> None:
    first, second = Bundle.empty(), Bundle.empty()
    holder = BundleHolder(first)
    assert holder.current is first
    assert first.services is None
    assert holder.services is None
    unbound, early = BundleHolder(Bundle.empty()), Bundle.empty()
    unbound.swap(early)  # before bind: the bundle gets no services yet
    assert unbound.current is early
    assert early.services is None
    services = Services(config=Config.model_validate({"deployments": {}, "models": {}}))
    first._chains[("t", "a")] = first.chain_for("t", "a")
    holder.bind(services)
    assert first.services is services
    assert first._chains == {}
    holder.swap(second)
    assert holder.current is second
    assert second.services is services
    dry = second.with_services(Services(config=services.config))
    assert dry.services is not services
    assert dry.hash == second.hash
    assert dry._resolved is second._resolved


def test_policy_files_are_the_yaml_files_of_a_directory_without_the_test_cases(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text("version: 1\n")
    (tmp_path / "a.yaml").write_text("version: 1\ndefaults:\n  residency: {allow: [EU]}\n")
    (tmp_path / "a_test.yaml").write_text("cases: []\n")
    (tmp_path / "notes.md").write_text("# notes\n")
    single = tmp_path / "single.yml"
    single.write_text("version: 1\n")
    assert policy_files([tmp_path, single, tmp_path / "missing.yaml"]) == [
        tmp_path / "a.yaml",
        tmp_path / "b.yaml",
        single,
    ]
    bundle = load_bundle([tmp_path])
    assert bundle.sections_for("x", "y") == {"residency": {"allow": ["EU"]}}
    config = Config.model_validate(
        {"deployments": {}, "models": {}, "server": {"policies_dir": str(tmp_path)}}
    )
    assert load_holder(config).current.hash == bundle.hash
    gone = config.model_copy(
        update={"server": config.server.model_copy(update={"policies_dir": str(tmp_path / "no")})}
    )
    assert load_holder(gone).current.hash == Bundle.empty().hash


def test_where_falls_back_to_the_nearest_written_place() -> None:
    bundle = parse_bundle(
        [loads("version: 1\ndefaults:\n  residency:\n    allow: [EU]\n", "a.yaml", expand_env=False)]
    )
    assert bundle.where(("defaults", "residency", "allow")) == "a.yaml:4"
    assert bundle.where(("defaults", "residency", "strict")) == "a.yaml:3"
    assert Bundle.empty().where(("defaults",)) == "<bundle>"


def _counter(metric: Any) -> float:
    return sum(s.value for m in metric.collect() for s in m.samples if s.name.endswith("_total"))


async def test_watch_swaps_a_changed_bundle_keeps_the_last_good_one_and_stops_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway import metrics
    from gateway.bundle import reload as bundle_module  # where the watcher looks load_bundle up

    caplog.set_level(logging.INFO, "gateway.policy")
    (tmp_path / "bundle.yaml").write_text("version: 1\ndefaults:\n  residency: {allow: [EU]}\n")
    holder = BundleHolder(load_bundle([tmp_path]))
    first = holder.current.hash
    stop = asyncio.Event()
    task = asyncio.create_task(watch(holder, tmp_path, stop))
    await asyncio.sleep(0.3)  # the watcher is set up
    reloads, failures = _counter(metrics.POLICY_RELOADS), _counter(metrics.POLICY_RELOAD_FAILURES)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(100):
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the watcher did not react within 5 s")

    (tmp_path / "bundle.yaml").write_text("version: 1\ndefaults:\n  residency: {allow: [EU, US]}\n")
    await until(lambda: holder.current.hash != first)
    assert holder.current.sections_for("t", "a") == {"residency": {"allow": ["EU", "US"]}}
    assert _counter(metrics.POLICY_RELOADS) == reloads + 1
    good = holder.current.hash
    [reloaded] = [r for r in caplog.records if r.name == "gateway.policy"]
    assert (reloaded.levelname, reloaded.getMessage(), reloaded.policy_hash) == (  # type: ignore[attr-defined]
        "INFO",
        "policy bundle reloaded",
        good,
    )
    caplog.clear()
    (tmp_path / "bundle.yaml").write_text("version: 1\ndefaults:\n  residency: {allow: [EUR]}\n")
    await until(lambda: _counter(metrics.POLICY_RELOAD_FAILURES) == failures + 1)
    [rejected] = [r for r in caplog.records if r.name == "gateway.policy"]
    assert rejected.getMessage() == f"policy reload rejected; keeping bundle {good}"
    assert rejected.levelname == "ERROR"
    assert rejected.problems == [  # type: ignore[attr-defined]
        f"{tmp_path / 'bundle.yaml'}:3: defaults.residency.allow[0]: unknown jurisdiction 'EUR' "
        "(known: AU, BR, CA, CH, CN, EEA, EU, IN, JP, KR, SG, UK, US)"
    ]
    assert holder.current.hash == good

    def broken(paths: Any) -> Bundle:
        raise OSError("disk gone")

    monkeypatch.setattr(bundle_module, "load_bundle", broken)
    caplog.clear()
    (tmp_path / "bundle.yaml").write_text("version: 1\n")
    await until(lambda: _counter(metrics.POLICY_RELOAD_FAILURES) == failures + 2)
    [failed] = [r for r in caplog.records if r.name == "gateway.policy"]
    assert failed.getMessage() == f"policy reload failed; keeping bundle {good}"
    assert failed.exc_type == "OSError"  # type: ignore[attr-defined]
    assert holder.current.hash == good
    monkeypatch.undo()  # the watcher goes on after a failed reload
    (tmp_path / "bundle.yaml").write_text("version: 1\ndefaults:\n  residency: {allow: [EEA]}\n")
    await until(lambda: holder.current.hash != good)
    assert holder.current.sections_for("t", "a") == {"residency": {"allow": ["EEA"]}}
    stop.set()
    await asyncio.wait_for(task, 2)


def test_a_block_reused_with_a_merge_key_merges_and_its_errors_point_at_the_anchor() -> None:
    text = (
        "version: 1\ndefaults:\n  residency: &eu {allow: [EU]}\ntenants:\n  hr:\n    residency:\n"
        "      <<: *eu\n      unknown_data_class: default\n"
    )
    bundle = parse_bundle([loads(text, "a.yaml", expand_env=False)])
    assert bundle.sections_for("hr", "x") == {"residency": {"allow": ["EU"], "unknown_data_class": "default"}}
    assert problems(text.replace("[EU]", "[EUR]")) == [
        "a.yaml:3: defaults.residency.allow[0]: unknown jurisdiction 'EUR' "
        "(known: AU, BR, CA, CH, CN, EEA, EU, IN, JP, KR, SG, UK, US)"
    ]
