"""Recipes: which scheme goes where. Ordered rules from module name/type to weight and
activation schemes (or keep in fp32/fp16/bf16), named presets, and recipe files.

>>> recipe = lowbit.recipes.Recipe.preset("bert-a8w4")
>>> recipe.validate(model)       # {name: Rule}; warns about rules that match nothing
>>> recipe.save("my.toml"); Recipe.load("my.toml") == recipe
"""

from .presets import PRESETS
from .recipe import Recipe
from .rule import ACT_MODES, KEEP_DTYPES, OBSERVERS, WEIGHT_CLIPS, Rule

__all__ = ["ACT_MODES", "KEEP_DTYPES", "OBSERVERS", "PRESETS", "WEIGHT_CLIPS", "Recipe", "Rule"]
