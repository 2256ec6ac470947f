"""params.yaml is validated once, with messages that name the key and suggest the fix."""

from pathlib import Path

import pytest
import yaml

from components.params import ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[2]


def test_project_params_file_is_valid_and_matches_schema_defaults():
    params = load_params(REPO / "params.yaml")
    assert params.unlearn.method == "decouple"
    assert params.data.dataset == "fashion-mnist"
    assert params.forget.classes == [7]
    # the file spells out every knob, at the schema's defaults
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert parse_params(raw).model_dump() == parse_params({}).model_dump()
    assert raw.keys() == parse_params({}).model_dump().keys()


def test_unknown_key_names_the_key_and_suggests_the_closest():
    with pytest.raises(ParamsError) as exc:
        parse_params({"unlearn": {"decoupel": {"lr": 0.1}}})
    assert "unknown key 'unlearn.decoupel'" in str(exc.value)
    assert "did you mean 'unlearn.decouple'" in str(exc.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ParamsError, match=r"'train.epochs'"):
        parse_params({"train": {"epochs": "many"}})


@pytest.mark.parametrize("noise", [{"epsilon": 0}, {"epsilon": -1.0}, {"epsilon": 1, "delta": 0},
                                   {"epsilon": 1, "delta": 1.5}])
def test_privacy_budget_out_of_range_is_refused(noise):
    with pytest.raises(ParamsError, match="unlearn.decouple.noise"):
        parse_params({"unlearn": {"decouple": {"noise": noise}}})


@pytest.mark.parametrize("unlearn,message", [
    ({"decouple": {"noise": {"epsilon": float("inf")}}}, "unlearn.decouple.noise.epsilon"),
    ({"certified": {"epsilon": float("inf")}}, "ε = ∞ certifies nothing"),
    ({"certified": {"delta": 1.0}}, "unlearn.certified.delta"),
    ({"method": "certified"}, "cannot restore the vqtoken tokenizer"),
])
def test_settings_that_cannot_be_certified_are_refused(unlearn, message):
    with pytest.raises(ParamsError, match=message):
        parse_params({"unlearn": unlearn, "model": {"family": "vqtoken"}})


def test_unknown_method_lists_known_ones_and_suggests():
    with pytest.raises(ParamsError) as exc:
        parse_params({"unlearn": {"method": "decoupel"}})
    assert "did you mean 'decouple'" in str(exc.value)
    assert "finetune" in str(exc.value)


def test_unknown_model_family_is_refused():
    with pytest.raises(ParamsError, match="model.family"):
        parse_params({"model": {"family": "gan"}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)


def test_benchmark_rows_are_methods_or_declared_variants():
    params = parse_params({"benchmark": {"methods": ["decouple", "decouple_keep0"]}})
    assert params.benchmark.variants["decouple_keep0"].method == "decouple"
    with pytest.raises(ParamsError, match="unknown method 'decouple_keep1'"):
        parse_params({"benchmark": {"methods": ["decouple_keep1"]}})
    with pytest.raises(ParamsError, match="did you mean 'scrub'"):
        parse_params({"benchmark": {"variants": {"x": {"method": "scrubb"}}}})


def test_override_merges_a_partial_tree_and_validates_it():
    from components.params import override

    params = override(parse_params({}), {"unlearn": {"finetune": {"keep_decoupled": 0.0}}})
    assert params.unlearn.finetune.keep_decoupled == 0.0 and params.unlearn.finetune.steps == 120
    with pytest.raises(ParamsError, match="unlearn.finetune.stepz"):
        override(params, {"unlearn": {"finetune": {"stepz": 1}}})
