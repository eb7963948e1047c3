"""Tenant and app layers over the defaults: merging, loosening, shadow trials, and `policy show`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.bundle import Bundle, parse_bundle
from gateway.cli import app
from gateway.layering import deep_merge
from gateway.policies.pii_redaction import PiiRedaction
from gateway.yamlsrc import ConfigError, loads

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

DEFAULTS = """\
version: 1
defaults:
  residency:
    allow: [EU]
    data_classes: {public: [EU, CH]}
  pii_redaction:
    entities:
      EMAIL_ADDRESS: redact
      IBAN_CODE: {action: block, threshold: 0.6}
      CREDIT_CARD: redact
"""


def bundle(text: str, *more: str) -> Bundle:
    sources = [loads(text, "bundle.yaml", expand_env=False)]
    sources += [loads(extra, f"extra{i}.yaml", expand_env=False) for i, extra in enumerate(more)]
    return parse_bundle(sources)


def problems(text: str, *more: str) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        bundle(text, *more)
    return exc.value.problems


def pii(b: Bundle, tenant: str, app_: str) -> Any:
    return PiiRedaction.Config.model_validate(
        {k: v for k, v in b.sections_for(tenant, app_)["pii_redaction"].items() if k != "mode"}
    )


def test_deep_merge_merges_mappings_at_every_depth_and_replaces_lists_and_scalars() -> None:
    base: dict[str, Any] = {"a": {"b": {"c": 1, "d": 2}}, "l": [1, 2], "s": "x"}
    assert deep_merge(base, {"a": {"b": {"c": 9}}, "l": [3], "s": "y"}) == {
        "a": {"b": {"c": 9, "d": 2}},
        "l": [3],
        "s": "y",
    }
    assert base["a"]["b"]["c"] == 1  # the inherited value is not mutated


def test_an_app_that_adds_an_entity_keeps_every_default_entity() -> None:
    b = bundle(
        DEFAULTS
        + """\
tenants:
  hr:
    apps:
      chatbot:
        pii_redaction:
          entities:
            PERSON: {action: redact, jurisdictions: {EU: allow}}
"""
    )
    cfg = pii(b, "hr", "chatbot")
    assert set(cfg.entities) == {"EMAIL_ADDRESS", "IBAN_CODE", "CREDIT_CARD", "PERSON"}
    assert cfg.entities["IBAN_CODE"].action == "block"
    assert cfg.entities["IBAN_CODE"].threshold == 0.6
    assert b.loosenings() == []


def test_a_shorthand_override_keeps_the_inherited_threshold() -> None:
    b = bundle(DEFAULTS + "tenants: {hr: {pii_redaction: {entities: {IBAN_CODE: redact}}}}\n")
    cfg = pii(b, "hr", "")
    assert cfg.entities["IBAN_CODE"].threshold == 0.6  # `IBAN_CODE: redact` only sets the action
    [item] = b.loosenings()
    assert item.path == ("entities", "IBAN_CODE", "action")
    assert "block -> redact" in item.message


def test_a_weaker_entity_action_is_a_loosening_naming_both_lines() -> None:
    b = bundle(
        DEFAULTS
        + """\
tenants:
  hr:
    apps:
      bot:
        pii_redaction:
          entities:
            EMAIL_ADDRESS: {jurisdictions: {US: allow}}
"""
    )
    [item] = b.loosenings()
    assert item.scope == "hr/bot"
    assert item.section == "pii_redaction"
    assert item.path == ("entities", "EMAIL_ADDRESS", "jurisdictions", "US")
    assert item.message == "EMAIL_ADDRESS: redact -> allow for US"
    assert item.inherited_at == "bundle.yaml:8"
    assert item.override_at == "bundle.yaml:17"
    assert item.reason is None


def test_a_reason_next_to_the_override_documents_the_loosening() -> None:
    b = bundle(
        DEFAULTS
        + """\
tenants:
  hr:
    pii_redaction:
      entities:
        CREDIT_CARD: {action: mask, reason: "card numbers are our product ids"}
"""
    )
    [item] = b.loosenings()
    assert item.reason == "card numbers are our product ids"
    assert pii(b, "hr", "").entities["CREDIT_CARD"].action == "mask"


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        ("residency: {allow: [EU, US]}", ("allow",), "also allows US"),
        (
            "residency: {data_classes: {public: [EU, CH, US]}}",
            ("data_classes", "public"),
            "data class 'public' also allows US",
        ),
        ("residency: {mode: off}", ("mode",), "turns enforcement off"),
        ("pii_redaction: {allow_list: [Jane]}", ("allow_list",), "1 more term(s) never treated as PII"),
        (
            "pii_redaction: {entities: {IBAN_CODE: {threshold: 0.9}}}",
            ("entities", "IBAN_CODE", "threshold"),
            "IBAN_CODE: threshold 0.6 -> 0.9 (fewer hits)",
        ),
        (
            "pii_redaction: {replace: true, entities: {EMAIL_ADDRESS: redact}}",
            ("replace",),
            "replace: true discards the inherited section",
        ),
    ],
)
def test_each_kind_of_loosening_is_reported(override: str, path: tuple[str, ...], message: str) -> None:
    b = bundle(DEFAULTS + f"tenants:\n  hr:\n    {override}\n")
    found = {(item.path, item.message) for item in b.loosenings()}
    assert (path, message) in found, found


def test_replace_discards_the_inherited_entities() -> None:
    b = bundle(
        DEFAULTS + "tenants: {hr: {pii_redaction: {replace: true, entities: {EMAIL_ADDRESS: redact}}}}\n"
    )
    assert set(pii(b, "hr", "").entities) == {"EMAIL_ADDRESS"}
    messages = {item.message for item in b.loosenings()}
    assert {"IBAN_CODE is no longer detected", "CREDIT_CARD is no longer detected"} <= messages


def test_replace_on_a_non_section_is_a_one_line_error_with_file_and_line() -> None:
    found = problems(
        DEFAULTS + "tenants:\n  hr:\n    pii_redaction:\n      entities:\n        replace: true\n"
    )
    assert found == [
        "bundle.yaml:15: tenants.hr.pii_redaction.entities.replace: `replace` belongs at the top of a "
        "policy section, not here"
    ]
    assert problems(DEFAULTS + "tenants:\n  hr:\n    replace: true\n") == [
        "bundle.yaml:13: tenants.hr.replace: `replace` belongs at the top of a policy section, not here"
    ]


def test_replace_in_the_defaults_is_an_error() -> None:
    found = problems("version: 1\ndefaults:\n  residency:\n    replace: true\n")
    assert found == [
        "bundle.yaml:4: defaults.residency.replace: defaults have nothing to replace; `replace` "
        "belongs in a tenant or app layer"
    ]


def test_two_files_writing_the_same_section_of_one_layer_is_an_error() -> None:
    found = problems(DEFAULTS, "version: 1\ndefaults:\n  residency: {allow: [EU, US]}\n")
    assert found == [
        "extra0.yaml:3: defaults.residency: already defined at bundle.yaml:3; write each section "
        "once per layer"
    ]


def test_two_files_may_each_add_apps_to_one_tenant() -> None:
    b = bundle(
        DEFAULTS + "tenants: {hr: {apps: {a: {residency: {allow: [EU]}}}}}\n",
        "version: 1\ntenants: {hr: {apps: {b: {residency: {allow: [EU]}}}}}\n",
    )
    assert set(b.tenants["hr"]["apps"]) == {"a", "b"}


def test_shadow_over_an_enforced_default_runs_beside_it_instead_of_replacing_it() -> None:
    b = bundle(DEFAULTS + "tenants: {marketing: {residency: {mode: shadow, unknown_data_class: default}}}\n")
    chain = b.chain_for("marketing", "")
    residency = [
        ("shadow" if chain.is_shadow(p) else "enforce", p.config.unknown_data_class, p.config.data_classes)
        for p in chain.policies
        if p.name == "residency"
    ]
    # The default keeps enforcing unchanged; the trial inherits the default's data classes and varies
    # only what the layer writes.
    assert residency == [
        ("enforce", "deny", {"public": ["EU", "CH"]}),
        ("shadow", "default", {"public": ["EU", "CH"]}),
    ]
    assert b.loosenings() == []  # a trial never weakens what is enforced


def test_a_shadow_token_accounting_beside_the_enforced_one_is_refused() -> None:
    found = problems(
        "version: 1\ndefaults:\n  token_accounting: {default_max_tokens: 10}\n"
        "tenants:\n  hr:\n    token_accounting: {mode: shadow}\n"
    )
    assert len(found) == 1
    assert found[0].startswith("bundle.yaml:6: tenants.hr.token_accounting.mode: a shadow")


def test_a_schema_error_is_reported_where_the_override_writes_it() -> None:
    found = problems(
        DEFAULTS + "tenants:\n  hr:\n    apps:\n      bot:\n        residency: {allow: [MARS]}\n"
    )
    assert len(found) == 1
    assert found[0].startswith("bundle.yaml:15: tenants.hr.apps.bot.residency.allow")


# --- the CLI ---------------------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "bundle.yaml").write_text(text)
    return tmp_path / "policies"


def _run(*args: str) -> Any:
    return runner.invoke(app, [*args, "--config", str(ROOT / "config.yaml")])


def test_policy_check_strict_fails_on_a_loosening_without_a_reason(tmp_path: Path) -> None:
    policies = _write(tmp_path, DEFAULTS + "tenants: {hr: {residency: {allow: [EU, US]}}}\n")
    lenient = _run("policy", "check", str(policies))
    assert lenient.exit_code == 0, lenient.output
    assert "loosening" in lenient.output
    assert "residency.allow: also allows US" in lenient.output
    strict = _run("policy", "check", "--strict", str(policies))
    assert strict.exit_code == 1
    assert "1 loosening(s) without a `reason:` (--strict)" in strict.output
    _write(tmp_path, DEFAULTS + 'tenants: {hr: {residency: {allow: [EU, US], reason: "US DPA, ticket 7"}}}\n')
    assert _run("policy", "check", "--strict", str(policies)).exit_code == 0


def test_the_shipped_bundle_passes_its_own_strict_check_and_full_coverage() -> None:
    policies = str(ROOT / "policies")
    check = _run("policy", "check", "--strict", policies)
    assert check.exit_code == 0, check.output
    tested = _run("policy", "test", "--coverage", "--min-coverage", "100", policies)
    assert tested.exit_code == 0, tested.output
    assert "coverage: 14/14 (tenant/app, policy) pairs, 100%" in tested.output


def test_min_coverage_fails_when_an_app_has_no_test(tmp_path: Path) -> None:
    policies = _write(tmp_path, DEFAULTS + "tenants: {hr: {apps: {bot: {residency: {allow: [EU]}}}}}\n")
    (policies / "bundle_test.yaml").write_text(
        "cases:\n  - name: defaults answer\n    request: {tenant: x, app: y, model: mistral-7b}\n"
        "    expect: {deployment: mistral-7b-selfhosted}\n"
    )
    result = _run("policy", "test", "--coverage", "--min-coverage", "100", str(policies))
    assert result.exit_code == 1
    assert "hr/* residency" in result.output
    assert "hr/bot pii_redaction" in result.output


def test_policy_show_prints_each_value_with_the_line_it_came_from() -> None:
    result = _run("policy", "show", "--tenant", "hr", "--app", "chatbot", "--json", str(ROOT / "policies"))
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    values = {(s["title"], v["path"]): v for s in shown["sections"] for v in s["values"]}
    email = values[("pii_redaction", "entities.EMAIL_ADDRESS.action")]
    assert email["value"] == "redact"
    assert email["layer"] == "defaults"
    assert email["from"].startswith("policies/bundle.yaml:") or email["from"].endswith(
        tuple(f"bundle.yaml:{n}" for n in range(1, 200))
    )
    person = values[("pii_redaction", "entities.PERSON.jurisdictions.EU")]
    assert person["value"] == "allow"
    assert person["layer"] == "app hr/chatbot"
    assert values[("residency", "strict")]["from"] == "built-in default"


def test_policy_show_diff_defaults_lists_only_what_the_app_changes() -> None:
    result = _run(
        "policy",
        "show",
        "--tenant",
        "hr",
        "--app",
        "chatbot",
        "--json",
        "--diff-defaults",
        str(ROOT / "policies"),
    )
    shown = json.loads(result.output)
    layers = {v["layer"] for s in shown["sections"] for v in s["values"]}
    assert layers == {"app hr/chatbot", "tenant hr"}  # hr's own residency class, and the chatbot's changes
    paths = {v["path"] for s in shown["sections"] for v in s["values"]}
    assert "entities.PERSON.action" in paths
    assert "entities.EMAIL_ADDRESS.action" not in paths


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--tenant", "nobody"), "tenants: no tenant 'nobody' (listed: hr, marketing)"),
        (("--tenant", "hr", "--app", "nobody"), "tenants.hr: no app 'nobody' (listed: chatbot)"),
    ],
)
def test_policy_show_names_an_unknown_tenant_or_app_in_one_line(args: tuple[str, ...], expected: str) -> None:
    result = _run("policy", "show", *args, str(ROOT / "policies"))
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert expected in lines[0]
    assert "bundle.yaml:" in lines[0]


FLOOR_BUNDLE = """\
version: 1
defaults:
  residency: {allow: [EU]}
  pii_redaction:
    entities:
      EMAIL_ADDRESS: {action: redact, jurisdictions: {US: allow}{reason}}
tenants:
  hr:
    apps:
      chatbot:
        consent_fallback: {target: openai-gpt4, reason: "DPA"}
"""
FLOOR_CASES = """\
cases:
  - name: the consented US hop
    request: {tenant: hr, app: chatbot, model: mistral-7b, subject: s, message: "mail a.b@example.org, +49 30 1234567"}
    consents: [llm_fallback_gpt4]
    fail: [mistral-7b-selfhosted, mistral-api]
    expect:
      deployment: openai-gpt4
      hops: {openai-gpt4: {floor: [%s], clear: [%s]}}
"""


@pytest.mark.parametrize(
    ("reason", "floor", "clear"),
    [
        ("", "EMAIL_ADDRESS, PHONE_NUMBER", ""),  # `US: allow` alone does not lift the floor
        (', reason: "US support desk needs the address"', "PHONE_NUMBER", "EMAIL_ADDRESS"),
    ],
)
def test_the_dpa_floor_redacts_every_identifier_unless_a_reason_lifts_it(
    tmp_path: Path, reason: str, floor: str, clear: str
) -> None:
    policies = _write(tmp_path, FLOOR_BUNDLE.replace("{reason}", reason))
    (policies / "bundle_test.yaml").write_text(FLOOR_CASES % (floor, clear))
    result = _run("policy", "test", str(policies))
    assert result.exit_code == 0, result.output


def test_policy_explain_reads_the_consent_registry_unless_told_otherwise(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    db = tmp_path / "gateway.db"
    config.write_text(
        (ROOT / "config.yaml")
        .read_text()
        .replace("sqlite:///./gateway.db", f"sqlite:///{db}")
        .replace("policies_dir: policies", f"policies_dir: {ROOT / 'policies'}")
    )
    explain = [
        "policy",
        "explain",
        "--tenant",
        "hr",
        "--app",
        "chatbot",
        "--model",
        "mistral-7b",
        "--subject",
        "emp-1",
        "--fail",
        "mistral-7b-selfhosted",
        "--fail",
        "mistral-api",
        "--config",
        str(config),
    ]
    before = runner.invoke(app, explain)
    assert "consent: the registry in sqlite:///" in before.output
    assert "denied consent.required (HTTP 503)" in before.output
    granted = runner.invoke(
        app,
        [
            "consent",
            "grant",
            "--tenant",
            "hr",
            "--subject",
            "emp-1",
            "--purpose",
            "llm_fallback_gpt4",
            "--config",
            str(config),
        ],
    )
    assert granted.exit_code == 0, granted.output
    after = runner.invoke(app, explain)
    assert "routed to openai-gpt4 (US)" in after.output, after.output
    overridden = runner.invoke(app, [*explain, "--no-consent"])
    assert "consent: none (--no-consent)" in overridden.output
    assert "denied consent.required" in overridden.output
    other = runner.invoke(
        app, [*explain[:8], "--subject", "emp-2", *explain[10:], "--consent", "llm_fallback_gpt4"]
    )
    assert "consent: --consent llm_fallback_gpt4 (command line)" in other.output
    assert "routed to openai-gpt4 (US)" in other.output


def test_the_chain_runs_in_canonical_order_whatever_layer_a_section_comes_from(tmp_path: Path) -> None:
    bundle = parse_bundle(
        [
            loads(
                "version: 1\ndefaults:\n  token_accounting: {}\n  pii_redaction: {}\n"
                "tenants:\n  hr:\n    apps:\n      bot:\n        rag_context: {collection: hb}\n"
                "  fin:\n    residency: {allow: [EU]}\n",
                "bundle.yaml",
            )
        ]
    )
    assert list(bundle.sections_for("hr", "bot")) == ["rag_context", "pii_redaction", "token_accounting"]
    assert list(bundle.sections_for("fin", "")) == ["residency", "pii_redaction", "token_accounting"]
    assert [p.name for p in bundle.chain_for("hr", "bot").policies] == [
        "rag_context",
        "pii_redaction",
        "token_accounting",
    ]


def test_an_explicit_order_is_honoured_and_policy_check_warns_when_rag_follows_pii(tmp_path: Path) -> None:
    text = (
        "version: 1\norder: [token_accounting, pii_redaction]\ndefaults:\n  pii_redaction: {}\n"
        "  token_accounting: {}\n  residency: {allow: [EU]}\n"
    )
    bundle = parse_bundle([loads(text, "bundle.yaml")])
    assert list(bundle.sections_for("", "")) == ["token_accounting", "pii_redaction", "residency"]
    policies = _write(tmp_path, text)
    assert "rag_context runs after pii_redaction" not in _run("policy", "check", str(policies)).output
    _write(
        tmp_path,
        text.replace("[token_accounting, pii_redaction]", "[pii_redaction, rag_context]")
        + "tenants: {hr: {apps: {bot: {rag_context: {collection: hb}}}}}\n",
    )
    result = _run("policy", "check", str(policies))
    assert result.exit_code == 0
    assert "bundle.yaml:2: order: rag_context runs after pii_redaction" in " ".join(result.output.split())


@pytest.mark.parametrize(
    ("order", "message"),
    [
        ("[pii_redaction, nonsense]", "order[1]: unknown policy 'nonsense'"),
        ("[pii_redaction, pii_redaction]", "order[1]: 'pii_redaction' is listed twice"),
        ("pii_redaction", "order: expected a list of policy names"),
    ],
)
def test_a_bad_order_is_a_one_line_error(tmp_path: Path, order: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_bundle(
            [loads(f"version: 1\norder: {order}\ndefaults: {{pii_redaction: {{}}}}\n", "bundle.yaml")]
        )
    assert any(message in p and "bundle.yaml:2" in p for p in err.value.problems), err.value.problems
