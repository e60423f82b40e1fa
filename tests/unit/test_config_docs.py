"""docs/configuration.md is current, and names every settings field with its default and meaning."""

from __future__ import annotations

from persona.config_docs import FILES, PAGE, fields, missing, render, rows
from persona.settings import ROOT


def test_the_configuration_page_is_current() -> None:
    assert PAGE.read_text() == render(), "docs/configuration.md is stale: run `python -m persona.config_docs`"


def test_every_settings_field_has_its_default_in_a_conf_file_and_a_meaning() -> None:
    assert missing() == {}
    for file, model, _ in FILES:
        documented = rows((ROOT / "conf" / file).read_text())
        assert [key for key, _, comment in documented if not comment] == [], file
        # Each documented key is a field of the model, inside a free-form one, or a model set inline: no stale name.
        names = fields(model)
        assert [k for k, _, _ in documented if k not in names
                and not any(k.startswith(n + ".") or n.startswith(k + ".") for n in names)] == []
