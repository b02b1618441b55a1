"""Every table of every shipped recipe (recipes/*.toml) that names config fields builds its config
dataclass: the values pass the configs' type and range checks (llmforge/config_check.py), so a
recipe cannot ship with a value a run would reject only after its first stages."""
from __future__ import annotations

import dataclasses
import glob
import os
import typing

import pytest

from llmforge.align.dpo import DPOConfig
from llmforge.align.grpo import GRPOConfig
from llmforge.align.kto import KTOConfig
from llmforge.align.orpo import ORPOConfig
from llmforge.align.ppo import PPOConfig
from llmforge.align.rejection import RejectionConfig
from llmforge.align.reward import RewardConfig
from llmforge.data.clean import QualityConfig
from llmforge.eval.runner import EvalConfig
from llmforge.model import ModelConfig
from llmforge.recipes import load_recipe
from llmforge.train.pretrain import PretrainConfig
from llmforge.train.sft import SFTConfig

CONFIGS = (PretrainConfig, SFTConfig, ModelConfig, DPOConfig, ORPOConfig, KTOConfig, RewardConfig, GRPOConfig,
           PPOConfig, RejectionConfig, QualityConfig, EvalConfig)
# keys the commands take out of a table before building its config (recipes.run_sft, run_eval, the pipeline)
NOT_FIELDS = {"base", "chats", "heldout", "max_conversations", "model", "out_dir"}
RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "recipes", "*.toml")))


def _build(cls, table: dict):
    hints = typing.get_type_hints(cls)
    kw = {}
    for k, v in table.items():
        if k in NOT_FIELDS and k not in hints:
            continue
        t = hints[k]
        kw[k] = _build(t, v) if dataclasses.is_dataclass(t) and isinstance(v, dict) else v
    return cls(**kw)


def _tables(obj, path=()):
    if isinstance(obj, dict):
        yield path, obj
        for k, v in obj.items():
            yield from _tables(v, path + (k,))


def test_recipes_are_shipped():
    assert len(RECIPES) >= 10


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_tables_build_their_configs(path):
    built = 0
    for where, table in _tables(load_recipe(path)):
        keys = set(table) - NOT_FIELDS
        for cls in CONFIGS:
            names = {f.name for f in dataclasses.fields(cls)}
            if keys and keys <= names:
                try:
                    _build(cls, table)
                except (TypeError, ValueError) as e:
                    pytest.fail(f"{os.path.basename(path)} [{'.'.join(where)}] as {cls.__name__}: {e}")
                built += 1
    assert built >= 1, "no table of this recipe names config fields"
