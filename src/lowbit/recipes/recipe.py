"""Recipe: ordered rules saying which scheme goes where in a model.

For each module the first matching rule wins; modules no rule matches stay as they are.
Only modules that own parameters directly (``Linear``, ``Embedding``, ``LayerNorm``,
``Conv2d``...) are candidates: containers such as a ``BertLayer`` are never planned.

A recipe file (TOML, YAML or JSON, same meaning) holds an optional ``name`` and
``description`` and a list of ``rules``::

    name = "bert-a8w4"
    [[rules]]
    pattern = "*LayerNorm"
    keep = "fp16"
    [[rules]]
    pattern = "encoder.layer.*"
    types = ["Linear"]
    weight = "int4:g128"
    weight_clip = "mse"
    act = "int8:token"

>>> recipe = Recipe.preset("a8w4")
>>> plan = recipe.plan(model)          # {"encoder.layer.0.attention.self.query": Rule, ...}
"""

from __future__ import annotations

import difflib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from .presets import PRESETS
from .rule import Rule

__all__ = ["Recipe"]

_SUFFIXES = (".toml", ".json", ".yaml", ".yml")


def _candidates(model):
    """(qualified name, module) for every module that owns parameters directly."""
    for name, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            yield name, module


def _toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)          # a JSON string is a valid TOML basic string
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)                # Python's int/float literals are valid TOML
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _to_toml(data: dict) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if k != "rules"]
    for rule in data["rules"]:
        lines += ["", "[[rules]]"] + [f"{k} = {_toml_value(v)}" for k, v in rule.items()]
    return "\n".join(lines) + "\n"


def _tomllib():
    try:
        import tomllib  # Python >= 3.11
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("TOML recipes on Python 3.10 need tomli: pip install tomli "
                              "(or write the recipe as .json)") from None
    return tomllib


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ImportError("YAML recipes need PyYAML: pip install pyyaml "
                          "(or write the recipe as .toml or .json)") from None
    return yaml


@dataclass(frozen=True)
class Recipe:
    """Ordered rules; the first rule matching a module decides what happens to it.

    Args:
        rules: ``Rule`` objects (or dicts, read as by ``Rule.from_dict``), in order.
        name: a label saved with quantized models.
        description: one line for humans.
    """

    rules: tuple[Rule, ...]
    name: str = "custom"
    description: str = ""

    def __post_init__(self):
        if isinstance(self.rules, (Rule, dict, str)):
            raise TypeError("rules must be a list of rules, e.g. [Rule(...), ...]")
        rules = tuple(r if isinstance(r, Rule) else Rule.from_dict(r, f"rule {i + 1}")
                      for i, r in enumerate(self.rules))
        if not rules:
            raise ValueError("a recipe needs at least one rule")
        object.__setattr__(self, "rules", rules)

    # -- construction -----------------------------------------------------------------

    @staticmethod
    def presets() -> list[str]:
        """Names accepted by ``Recipe.preset``."""
        return list(PRESETS)

    @classmethod
    def preset(cls, name: str) -> Recipe:
        """A named recipe: ``fp16``, ``bf16``, ``int8``, ``a8w8``, ``a8w4``, ``w4a16``,
        ``w8a16``, ``fp8``, ``mxfp8``, ``mxfp4``, ``mx6``, ``nvfp4``, ``bert-a8w4``."""
        if name not in PRESETS:
            close = difflib.get_close_matches(str(name), list(PRESETS), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown recipe preset {name!r}; presets: "
                             f"{', '.join(PRESETS)}.{hint}")
        return cls.from_dict({"name": name, **PRESETS[name]}, where=f"preset {name!r}")

    @classmethod
    def from_dict(cls, data: dict, where: str = "recipe") -> Recipe:
        """Build from ``{"name", "description", "rules": [table, ...]}``."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: a recipe is a table with a 'rules' list; got "
                             f"{type(data).__name__}")
        unknown = set(data) - {"name", "description", "rules"}
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; a recipe has name, "
                             "description and rules")
        rules = data.get("rules")
        if not isinstance(rules, list) or not rules:
            raise ValueError(f"{where}: 'rules' must be a non-empty list of rule tables")
        parsed = [Rule.from_dict(r, f"{where}, rule {i + 1}") for i, r in enumerate(rules)]
        return cls(tuple(parsed), str(data.get("name", "custom")),
                   str(data.get("description", "")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Recipe:
        """Read a ``.toml``, ``.json`` or ``.yaml``/``.yml`` recipe file."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in _SUFFIXES:
            raise ValueError(f"recipe file {str(path)!r}: the suffix must be one of "
                             f"{', '.join(_SUFFIXES)}")
        text = path.read_text(encoding="utf-8")
        if suffix == ".toml":
            parse, errors = _tomllib().loads, (ValueError,)      # TOMLDecodeError
        elif suffix == ".json":
            parse, errors = json.loads, (ValueError,)            # JSONDecodeError
        else:
            yaml = _yaml()
            parse, errors = yaml.safe_load, (yaml.YAMLError,)
        try:
            data = parse(text)
        except errors as e:
            raise ValueError(f"recipe file {str(path)!r} is not valid {suffix[1:]}: {e}") \
                from None
        return cls.from_dict(data, where=f"recipe file {str(path)!r}")

    @classmethod
    def resolve(cls, name_or_path: str | os.PathLike | Recipe) -> Recipe:
        """A preset name, a recipe file path, or a Recipe as is (for the CLI's --recipe)."""
        if isinstance(name_or_path, Recipe):
            return name_or_path
        text = str(name_or_path)
        if text in PRESETS:
            return cls.preset(text)
        if Path(text).suffix.lower() in _SUFFIXES:
            return cls.load(text)
        return cls.preset(text)     # raises, listing presets

    # -- the edge: dicts and files ----------------------------------------------------

    def to_dict(self) -> dict:
        """Plain strings and lists; ``Recipe.from_dict(r.to_dict()) == r``."""
        out = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["rules"] = [r.to_dict() for r in self.rules]
        return out

    def save(self, path: str | os.PathLike) -> None:
        """Write as TOML, JSON or YAML (by suffix), atomically (temp file + rename)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".toml":
            text = _to_toml(self.to_dict())
        elif suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        elif suffix in (".yaml", ".yml"):
            text = _yaml().safe_dump(self.to_dict(), sort_keys=False)
        else:
            raise ValueError(f"recipe file {str(path)!r}: the suffix must be one of "
                             f"{', '.join(_SUFFIXES)}")
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    # -- applying to a model ----------------------------------------------------------

    def match(self, name: str, module) -> Rule | None:
        """The first rule matching the module called ``name``, or None."""
        return next((r for r in self.rules if r.matches(name, module)), None)

    def plan(self, model) -> dict[str, Rule]:
        """``{qualified name: rule}`` for every module (owning parameters) a rule matches,
        in the model's module order."""
        plan = {}
        for name, module in _candidates(model):
            rule = self.match(name, module)
            if rule is not None:
                plan[name] = rule
        return plan

    def validate(self, model) -> dict[str, Rule]:
        """``plan(model)``, warning (``UserWarning``) for each rule that matches no module
        and each rule that is shadowed (every module it matches is taken by an earlier
        rule)."""
        cands = list(_candidates(model))
        plan = self.plan(model)
        used = set(map(id, plan.values()))
        for i, rule in enumerate(self.rules):
            if id(rule) in used:
                continue
            if any(rule.matches(n, m) for n, m in cands):
                why = "every module it matches is taken by an earlier rule"
            else:
                why = "it matches no module with parameters"
            warnings.warn(f"recipe {self.name!r}, rule {i + 1} ({rule}) has no effect: {why}",
                          UserWarning, stacklevel=2)
        return plan

    def __str__(self) -> str:
        head = f"Recipe {self.name!r}" + (f": {self.description}" if self.description else "")
        return "\n".join([head] + [f"  {i + 1}. {r}" for i, r in enumerate(self.rules)])
