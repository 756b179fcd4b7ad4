"""One formatter for validation problems and one locator for YAML syntax errors, for every file Hecate reads."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hecate.adapters import yamlfile
from hecate.domain import policy, validation
from hecate.domain.config import HecateConfig
from hecate.domain.runs import RunHistory, RunRecord


def _config_problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        HecateConfig.model_validate(data)
    return [p.text for p in validation.problems(info.value, HecateConfig)]


def test_a_bad_value_reads_the_same_in_hecate_yaml_and_in_a_powerpolicy() -> None:
    [in_file] = _config_problems({"trigger": {"safety_factor": 0.5}})
    with pytest.raises(ValidationError) as info:
        policy.parse_policy({"apiVersion": "hecate.io/v1alpha1", "kind": "PowerPolicy",
                             "spec": {"trigger": {"safety_factor": 0.5}}})
    assert in_file.startswith("trigger.safety_factor = 0.5: Input should be greater than or equal to 1")
    assert policy.describe_error(info.value) == f"spec.{in_file}"


def test_validator_messages_lose_pydantics_value_error_prefix() -> None:
    [text] = _config_problems({"trigger": {}, "metrics": {"listen": ":0"}})
    assert text == "metrics.listen = ':0': port must be 1-65535"


def test_a_problem_is_located_at_the_field_it_is_about() -> None:
    # A validator of the whole list (or section) names the item and field, and its value.
    nodes = [{"name": n, "address": "a", "role": "agent"} for n in ("a1", "a2", "a1")]
    [text] = _config_problems({"cluster": {"nodes": nodes}})
    assert text == "cluster.nodes[2].name = 'a1': node names must be unique: item 0 has it too"
    [text] = _config_problems({"ups": [{"name": "p"}, {"name": "p"}]})
    assert text == "ups[1].name = 'p': UPS names must be unique: item 0 has it too"


def test_field_error_locates_from_where_it_is_raised() -> None:
    from pydantic import BaseModel, model_validator

    class Section(BaseModel):
        items: list[int]

        @model_validator(mode="after")
        def _check(self) -> Section:
            raise validation.field_error(("items", 1), "too big", self.items[1])

    class Root(BaseModel):
        section: Section

    with pytest.raises(ValidationError) as info:
        Root.model_validate({"section": {"items": [1, 99]}})
    [problem] = validation.problems(info.value, Root)
    assert (problem.loc, problem.text) == (("section", "items", 1), "section.items[1] = 99: too big")
    with pytest.raises(ValidationError) as info:
        Section.model_validate({"items": [1, 2]})
    assert validation.problems(info.value)[0].text == "items[1] = 2: too big"


def test_unknown_keys_name_the_keys_allowed_there_and_list_items_their_index() -> None:
    [text] = _config_problems({"cluster": {"nodes": [{"name": "n", "address": "a", "role": "agent", "adress": 1}]}})
    assert text.startswith("cluster.nodes[0].adress: unknown key (allowed here: address, ")


def test_a_whole_document_is_never_quoted_back() -> None:
    with pytest.raises(ValidationError) as info:
        RunHistory.validate_json(b'[{"id": "x", "kind": "shut' + b" " * 10_000)
    [problem] = validation.problems(info.value, RunRecord)
    assert problem.text.startswith("(top level): Invalid JSON")
    assert len(problem.text) < 200


@pytest.mark.parametrize(("text", "where"), [("trigger:\n  safety_factor: [1.1\n", "hecate.yaml:3:1"),
                                             ("a: b\n\tc: d\n", "hecate.yaml:2:1")])
def test_a_yaml_syntax_error_says_source_line_and_column(text: str, where: str) -> None:
    with pytest.raises(yamlfile.YamlSyntaxError) as info:
        yamlfile.load(text, "hecate.yaml")
    assert str(info.value).startswith(f"{where}: YAML syntax error: ")
    assert "\n" not in str(info.value)


def test_every_document_of_a_stream_and_its_errors_too() -> None:
    assert yamlfile.load_all("a: 1\n---\nb: 2\n", "x.yaml") == [{"a": 1}, {"b": 2}]
    with pytest.raises(yamlfile.YamlSyntaxError, match=r"^x\.yaml:4:2: YAML syntax error: expected "):
        yamlfile.load_all("a: 1\n---\nb: [c\nd: ]\n", "x.yaml")
