from dataclasses import dataclass, field

import pytest

from vtp_gen.config import ConfigError, DataConfig, RunConfig, TrainerConfig, load_config, save_config


@dataclass
class Schema:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    lr: float = 1e-3
    extra: dict = field(default_factory=dict)


def test_defaults_recipe_and_overrides_layer(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.5\ntrainer:\n  max_steps: 7\n")
    cfg = load_config(Schema, recipe, ["trainer.max_steps=9", "data.image_size=64", "extra.anything=3"])
    assert cfg.lr == 0.5 and cfg.trainer.max_steps == 9 and cfg.data.image_size == 64
    assert cfg.extra.anything == 3 and cfg.data.batch_size == DataConfig().batch_size


@pytest.mark.parametrize(
    "override, nearest",
    [("trainer.max_step=5", "trainer.max_steps"), ("data.batchsize=3", "data.batch_size"), ("lrr=1", "lr")],
)
def test_misspelt_override_names_nearest_key(override, nearest):
    with pytest.raises(ConfigError, match=f"did you mean '{nearest}'"):
        load_config(Schema, None, [override])


def test_misspelt_key_in_recipe_names_file_and_nearest_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("trainer:\n  max_stpes: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*did you mean 'trainer.max_steps'"):
        load_config(Schema, recipe)


@pytest.mark.parametrize(
    "override, key, expected",
    [("trainer.max_steps=abc", "trainer.max_steps", "int"), ("lr=x", "lr", "float")],
)
def test_wrong_type_names_key_and_type(override, key, expected):
    with pytest.raises(ConfigError, match=f"wrong type for '{key}': expected {expected}"):
        load_config(Schema, None, [override])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Schema, None, ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Schema, tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Schema, None, ["lr=0.25"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Schema, path).lr == 0.25


def test_every_shipped_recipe_validates():
    from vtp_gen.pipeline.cli import schema_for_recipe
    from vtp_gen.pipeline.recipes import shipped_recipes

    recipes = shipped_recipes()
    assert len(recipes) >= 20, "the shipped recipes (configs/, installed as vtp_gen/recipes) are missing"
    for recipe in recipes:
        load_config(schema_for_recipe(recipe), recipe)


def test_recipes_layer_left_to_right(tmp_path):
    base, preset = tmp_path / "base.yaml", tmp_path / "preset.yaml"
    base.write_text("lr: 0.5\ntrainer:\n  max_steps: 7\n")
    preset.write_text("lr: 0.1\n")
    cfg = load_config(Schema, [base, preset], ["trainer.log_every_n_steps=3"])
    assert cfg.lr == 0.1 and cfg.trainer.max_steps == 7 and cfg.trainer.log_every_n_steps == 3
