"""Each setting is described once, on its schema field: docs/settings.md and the validation
messages are generated from there, and params.yaml spells out exactly the schema's keys."""

from pathlib import Path
from typing import get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from components.params import Params, ParamsError, parse_params, settings_markdown

REPO = Path(__file__).resolve().parents[2]


def fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, FieldInfo) of every field of the schema, blocks and leaves (a mapping of
    blocks, benchmark.variants, as `<name>`)."""
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        yield key, field
        ann = field.annotation
        if get_origin(ann) is dict:
            ann, key = get_args(ann)[1], f"{key}.<name>"
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from fields(ann, key)


def leaves(tree: dict, prefix: str = ""):
    """The dotted keys of a params tree down to the schema's leaves (mappings the schema
    leaves open, such as benchmark.scenarios, end there)."""
    for key, value in tree.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and dotted not in OPEN:
            yield from leaves(value, dotted)
        else:
            yield dotted


OPEN = {"benchmark.scenarios", "benchmark.variants", "families.set"}


def test_every_setting_has_a_description():
    missing = [key for key, field in fields(Params) if not (field.description or "").strip()]
    assert not missing, f"settings without Field(description=...): {', '.join(missing)}"


def test_settings_doc_is_generated_from_the_schema():
    doc = REPO / "docs" / "settings.md"
    assert doc.read_text() == settings_markdown(), (
        "docs/settings.md is out of date with components/params.py: regenerate it with "
        "`python -m components.params --markdown > docs/settings.md`")


def test_settings_doc_lists_every_leaf():
    text = settings_markdown()
    for key in leaves(parse_params({}).model_dump(mode="json")):
        assert f"| `{key}` |" in text


def test_params_file_spells_out_exactly_the_schema_keys():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    schema = set(leaves(parse_params({}).model_dump(mode="json")))
    assert set(leaves(raw)) == schema, "params.yaml and components/params.py differ in keys"


@pytest.mark.parametrize("raw,key,meaning", [
    ({"data": {"heldout_fraction": 0.7}}, "data.heldout_fraction", "never trained on"),
    ({"train": {"epochs": "many"}}, "train.epochs", "passes over the training data"),
    ({"benchmark": {"variants": {"x": {"method": "scrubb"}}}}, "benchmark.variants.x.method",
     "the method the row runs"),
])
def test_a_bad_value_is_explained_by_its_field_description(raw, key, meaning):
    with pytest.raises(ParamsError) as exc:
        parse_params(raw)
    assert f"'{key}'" in str(exc.value) and f"({key}: " in str(exc.value)
    assert meaning in str(exc.value)
