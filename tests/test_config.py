import pytest
import yaml

from lmforge.config import Config, build_config, load_config, parse_overrides
from lmforge.errors import LmforgeError


def test_default_recipe_loads_and_round_trips(tmp_path):
    cfg = load_config(None)
    assert cfg.task == "classification" and cfg.model.name == "minilm-l6"
    p = tmp_path / "c.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg
    assert yaml.safe_load(p.read_text())["train"]["learning_rate"] == cfg.train.learning_rate


def test_issue_config_shape_is_accepted():
    raw = yaml.safe_load("""
task: classification
model: {name: minilm-l6}
data: {train: path/train.csv, eval: path/test.csv, text_column: text, label_column: label}
train: {num_train_epochs: 1, learning_rate: 5.0e-5, per_device_train_batch_size: 32, seed: 1}
output: {output_dir: runs/my-run}
""")
    cfg = build_config(raw)
    assert cfg.train.per_device_train_batch_size == 32 and cfg.data.label_column == "label"
    assert cfg.train.weight_decay == 0.01  # defaults filled in


def test_overrides_are_typed_and_nested():
    o = parse_overrides(["--train.learning_rate", "3e-4", "--data.eval=x.csv", "--train.max_grad_norm", "null"])
    assert o == {"train": {"learning_rate": 3e-4, "max_grad_norm": None}, "data": {"eval": "x.csv"}}
    cfg = load_config(None, ["--train.learning_rate", "3e-4", "--train.per_device_train_batch_size", "8"])
    assert cfg.train.learning_rate == 3e-4 and cfg.train.per_device_train_batch_size == 8


def test_unknown_key_suggests_the_closest():
    with pytest.raises(LmforgeError) as e:
        load_config(None, ["--train.lerning_rate", "1e-3"])
    assert "train.lerning_rate" in e.value.message and "learning_rate" in e.value.message


def test_unknown_section_suggests_the_closest():
    with pytest.raises(LmforgeError) as e:
        build_config({"trian": {"seed": 1}})
    assert "'trian'" in e.value.message and "Did you mean 'train'" in e.value.message


def test_bad_type_names_the_key_and_value():
    with pytest.raises(LmforgeError) as e:
        load_config(None, ["--train.per_device_train_batch_size", "many"])
    assert "train.per_device_train_batch_size" in e.value.message and "many" in e.value.message


@pytest.mark.parametrize("override", [["--train.per_device_train_batch_size", "0"],
                                      ["--train.per_device_train_batch_size", "-4"],
                                      ["--train.learning_rate", "-1"],
                                      ["--data.validation_split", "1.5"],
                                      ["--train.eval_strategy", "steps"]])
def test_bad_values_are_user_errors(override):
    with pytest.raises(LmforgeError) as e:
        load_config(None, override)
    assert override[0][2:] .split(".")[0] in e.value.message or "config" in e.value.message


def test_bad_choice_lists_the_choices():
    with pytest.raises(LmforgeError) as e:
        load_config(None, ["--train.lr_scheduler_type", "cosin"])
    assert "cosine" in e.value.message


def test_invalid_yaml_names_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("task: classification\nmodel: {name: x\n")
    with pytest.raises(LmforgeError) as e:
        load_config(p)
    assert "not valid YAML" in e.value.message and "line" in e.value.message


def test_every_field_has_a_docstring():
    from pydantic import BaseModel

    def walk(cls):
        for name, f in cls.model_fields.items():
            assert f.description, f"{cls.__name__}.{name} has no docstring"
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
                walk(f.annotation)
    walk(Config)


def test_example_is_the_default_recipe():
    from pathlib import Path
    from lmforge.config import default_recipe_path
    example = Path(__file__).parents[1] / "examples" / "sentiment-minilm.yaml"
    assert example.read_text() == default_recipe_path().read_text()
