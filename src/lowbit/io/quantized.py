"""save_quantized / load_quantized: a quantized model as safetensors + a JSON manifest.

A saved directory holds exactly two files and is never unpickled:

* ``model.safetensors``: every tensor. Float parameters and buffers are stored as they
  are (dtype kept, so a LayerNorm kept in fp16 comes back in fp16) under their
  ``state_dict`` keys; each quantized module's tensors (QTensor codes, scales, zero
  points, bias...) under ``<module name>.<key>``. Tied tensors are stored once.
* ``lowbit.json``: the manifest: format version, lowbit version, the model class, the
  recipe (if given), the SHA-256 and size of ``model.safetensors``, tied-tensor aliases,
  and one entry per quantized module: its name, kind, tensor keys, the scheme and shape
  of each QTensor it holds, and the metadata it returned from ``lowbit_state``.

Writes are atomic: a new directory is built beside the target and renamed into place; an
existing directory gets each file through a temporary file and ``os.replace``, manifest
last. A manifest whose checksum does not match the tensors file (a torn or corrupted
write) is refused on load.

``load_quantized(directory, model_like)`` fills ``model_like`` **in place** (quantized
modules replace its float ones; float tensors are assigned with their saved dtype) and
returns it; it changes nothing unless every check passes. See ``lowbit.io.qmodules`` for
the protocol quantized modules implement.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..quant import QTensor
from .qmodules import is_qmodule, qmodule_classes

__all__ = ["FORMAT_VERSION", "MANIFEST", "TENSORS", "load_quantized", "read_manifest",
           "save_quantized"]

FORMAT_VERSION = 1
MANIFEST = "lowbit.json"
TENSORS = "model.safetensors"


def _version() -> str:
    from .. import __version__

    return __version__


# -- saving ------------------------------------------------------------------------------

def _outer_qmodules(model) -> list[tuple[str, torch.nn.Module]]:
    """Quantized modules not inside another quantized module, in module order."""
    out = []
    for name, module in model.named_modules():
        if is_qmodule(module) and not any(name.startswith(p + ".") for p, _ in out):
            if name == "":
                raise ValueError("the model itself is a quantized module; save_quantized "
                                 "needs a model that contains quantized modules")
            out.append((name, module))
    return out


def _under(key: str, prefixes) -> bool:
    return any(key.startswith(p + ".") for p in prefixes)


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Contiguous CPU tensors with no shared storage (safetensors' rule); identical views
    become aliases ``{key: stored key}``, other overlapping views are copied."""
    stored, aliases, by_view, storages = {}, {}, {}, set()
    for key, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensor {key!r} is a {type(t).__name__}, not a torch.Tensor")
        t = t.detach()
        view = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                t.stride(), t.dtype, t.device)
        if view in by_view and t.numel():
            aliases[key] = by_view[view]
            continue
        by_view[view] = key
        ptr = t.untyped_storage().data_ptr()
        t = t.cpu().contiguous()
        if ptr in storages and t.numel():
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        stored[key] = t
    return stored, aliases


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_quantized(model: torch.nn.Module, directory, recipe=None) -> Path:
    """Write ``model`` (quantized modules and float tensors) to ``directory``.

    Args:
        model: a model whose quantized modules implement ``lowbit.io.qmodules``' protocol
            (a model with none is saved as plain float tensors).
        directory: created if missing; existing files other than ours are left alone.
        recipe: a ``lowbit.Recipe`` (or its dict) to record in the manifest.

    Returns:
        The directory as a Path.
    """
    directory = Path(directory)
    qmods = _outer_qmodules(model)
    prefixes = [n for n, _ in qmods]
    tensors = {k: v for k, v in model.state_dict(keep_vars=True).items()
               if not _under(k, prefixes)}
    float_keys = list(tensors)
    entries = []
    for name, module in qmods:
        state, meta = module.lowbit_state()
        json.dumps(meta)        # fail here, with the module's own error, if not JSON-able
        qtensors = {attr: {**v.metadata(), "nbytes": v.nbytes}
                    for attr, v in vars(module).items()
                    if isinstance(v, QTensor) and not attr.startswith("_")}
        entries.append({"name": name, "kind": type(module).lowbit_kind,
                        "class": f"{type(module).__module__}.{type(module).__qualname__}",
                        "tensors": sorted(state), "qtensors": qtensors, "meta": meta})
        for k, v in state.items():
            tensors[f"{name}.{k}"] = v
    stored, aliases = _dedupe(tensors)
    data = st_save(stored, metadata={"format": "lowbit"})
    if recipe is not None and not isinstance(recipe, dict):
        recipe = recipe.to_dict()
    manifest = {
        "format": "lowbit", "format_version": FORMAT_VERSION, "lowbit_version": _version(),
        "model_class": type(model).__name__, "recipe": recipe,
        "tensors_file": {"name": TENSORS, "bytes": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()},
        "float_tensors": float_keys, "aliases": aliases, "modules": entries,
    }
    text = json.dumps(manifest, indent=1).encode("utf-8")
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{str(directory)!r} exists and is not a directory")
    if directory.exists():
        _write_atomic(directory / TENSORS, data)
        _write_atomic(directory / MANIFEST, text)
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        _write_atomic(tmp / TENSORS, data)
        _write_atomic(tmp / MANIFEST, text)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


# -- loading -----------------------------------------------------------------------------

def _read(directory: Path) -> tuple[dict, bytes]:
    mpath, tpath = directory / MANIFEST, directory / TENSORS
    if not mpath.is_file():
        raise ValueError(f"{str(directory)!r} is not a lowbit model directory: no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{mpath}: corrupt manifest (not valid JSON: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != "lowbit":
        raise ValueError(f"{mpath}: not a lowbit manifest (no \"format\": \"lowbit\")")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{mpath}: format_version {version!r} is not supported by lowbit "
                         f"{_version()} (it reads version {FORMAT_VERSION})")
    for key in ("tensors_file", "float_tensors", "aliases", "modules"):
        if key not in manifest:
            raise ValueError(f"{mpath}: corrupt manifest, missing {key!r}")
    if not tpath.is_file():
        raise ValueError(f"{str(directory)!r}: {TENSORS} is missing")
    data = tpath.read_bytes()
    info = manifest["tensors_file"]
    if len(data) != info.get("bytes") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
        raise ValueError(f"{tpath}: corrupt or not the file {MANIFEST} describes (size "
                         f"{len(data)} bytes vs {info.get('bytes')}, or SHA-256 differs); "
                         "save the model again")
    return manifest, data


def read_manifest(directory) -> dict:
    """The parsed ``lowbit.json`` of a saved directory, after checking the tensors file
    against its checksum (recipe, lowbit version, modules with their schemes)."""
    return _read(Path(directory))[0]


def _preview(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def load_quantized(directory, model_like: torch.nn.Module) -> torch.nn.Module:
    """Fill ``model_like`` (the float model the saved one was made from) in place from a
    directory written by ``save_quantized``, and return it.

    Raises ValueError, naming the file, module or tensor, when the files are corrupt or do
    not fit ``model_like``; ``model_like`` is left untouched then.
    """
    manifest, data = _read(Path(directory))
    try:
        tensors = st_load(data)
    except SafetensorError as e:
        raise ValueError(f"{Path(directory) / TENSORS}: corrupt safetensors file: {e}") from None
    for key, target in manifest["aliases"].items():
        if target not in tensors:
            raise ValueError(f"{MANIFEST}: alias {key!r} -> {target!r}, which is not stored")
        tensors[key] = tensors[target]
    saved_from = f" (saved from {manifest.get('model_class')}, model_like is " \
                 f"{type(model_like).__name__})"
    classes = qmodule_classes()
    replacements = []
    for entry in manifest["modules"]:
        name, kind = entry["name"], entry["kind"]
        try:
            float_module = model_like.get_submodule(name)
        except AttributeError:
            raise ValueError(f"saved quantized module {name!r} ({kind}) has no counterpart in "
                             f"model_like{saved_from}") from None
        if kind not in classes:
            raise ValueError(f"module {name!r}: unknown quantized module kind {kind!r} "
                             f"(saved by {entry.get('class')}); import the package that "
                             f"defines it. Known kinds: {', '.join(sorted(classes)) or 'none'}")
        missing = [k for k in entry["tensors"] if f"{name}.{k}" not in tensors]
        if missing:
            raise ValueError(f"module {name!r}: {TENSORS} lacks its tensors {missing}")
        own = {k: tensors[f"{name}.{k}"] for k in entry["tensors"]}
        try:
            new = classes[kind].from_lowbit_state(float_module, own, entry["meta"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"module {name!r} ({kind}) cannot be rebuilt from the saved "
                             f"state{saved_from}: {e}") from None
        if not isinstance(new, torch.nn.Module):
            raise TypeError(f"{kind}.from_lowbit_state returned {type(new).__name__}, "
                            "not an nn.Module")
        replacements.append((name, new))
    prefixes = [n for n, _ in replacements]
    want = {k: v for k, v in model_like.state_dict().items() if not _under(k, prefixes)}
    have = {k: tensors[k] for k in manifest["float_tensors"] if k in tensors}
    if len(have) != len(manifest["float_tensors"]):
        lost = set(manifest["float_tensors"]) - set(have)
        raise ValueError(f"{TENSORS} lacks float tensors listed in {MANIFEST}: {_preview(lost)}")
    if set(want) != set(have):
        extra, lack = set(have) - set(want), set(want) - set(have)
        raise ValueError(f"the saved model does not fit model_like{saved_from}: "
                         + "; ".join(filter(None, [
                             extra and f"saved tensors model_like lacks: {_preview(extra)}",
                             lack and f"model_like tensors not saved: {_preview(lack)}"])))
    for key, t in have.items():
        if tuple(t.shape) != tuple(want[key].shape):
            raise ValueError(f"tensor {key!r}: saved shape {tuple(t.shape)} does not fit "
                             f"model_like's {tuple(want[key].shape)}{saved_from}")
    for name, new in replacements:
        parent, _, child = name.rpartition(".")
        setattr(model_like.get_submodule(parent), child, new)
    model_like.load_state_dict(have, strict=False, assign=True)
    return model_like
