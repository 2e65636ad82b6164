"""Building the user's model from a job, and choosing the layers whose units we catalog.

A `ModelRecipe` carries everything a Ray worker needs to rebuild the model
(factory source text, weight bytes), so workers need no access to the job's
files or Python path.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import fnmatch
import importlib
import io
import os
import pickle
import re
import sys
import traceback
import types
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from catalog_schema.layout import FEATURES_SUFFIX
from pipeline.inputs.layouts import Windows
from pipeline.job.config import ModelConfig
from pipeline.errors import UserError


@dataclass(frozen=True)
class ModelRecipe:
    """How to rebuild the model anywhere: kind is 'torchvision', 'timm', 'factory' or 'archive'."""

    kind: str
    name: str
    num_classes: int = 0
    factory_source: str | None = None  # the text of a "file.py:fn" factory
    weights: bytes | None = None
    weights_name: str = ""
    trust_weights: bool = False
    archive: bytes | None = None  # the bytes of a torch.export or TorchScript file


@dataclass(frozen=True)
class LayerInfo:
    """One selected layer: its module path, its units-first shape for one image, how often forward calls it, and
    where its output keeps the units (layouts.py): `shape` is (C, H, W) or (C,) whatever the layout, H x W being
    the patch grid of a token layer, whose first `prefix` tokens (class, register, distillation) lie off the grid."""

    name: str
    shape: tuple[int, ...]  # (C, H, W) or (C,)
    calls: int
    layout: str = ""  # "nchw", "nc", "nhwc" or "tokens"; "" = nchw for (C, H, W), nc for (C,)
    prefix: int = 0  # tokens before the patch grid (tokens layout only)
    windows: Windows | None = None  # where a windowed output's positions lie on the grid (windows layout only)

    def __post_init__(self) -> None:
        if not self.layout:
            object.__setattr__(self, "layout", "nchw" if len(self.shape) == 3 else "nc")

    @property
    def units(self) -> int:
        return self.shape[0]

    @property
    def spatial(self) -> tuple[int, int]:
        return (self.shape[1], self.shape[2]) if len(self.shape) == 3 else (1, 1)


def recipe_from_config(cfg: ModelConfig) -> ModelRecipe:
    """Read the files a model needs once, on the driver."""
    common = {"weights": cfg.weights.read_bytes() if cfg.weights else None,
              "weights_name": str(cfg.weights or ""), "trust_weights": cfg.trust_weights}
    archive = cfg.archive or cfg.torchscript
    if archive:
        return ModelRecipe("archive", str(archive), archive=archive.read_bytes(), **common)
    if cfg.torchvision:
        return ModelRecipe("torchvision", cfg.torchvision, cfg.num_classes, **common)
    if cfg.timm:
        return ModelRecipe("timm", cfg.timm, cfg.num_classes, **common)
    target = cfg.factory.rpartition(":")[0]
    source = Path(target).read_text(encoding="utf-8") if target.endswith(".py") else None  # made absolute by load_job
    return ModelRecipe("factory", cfg.factory, cfg.num_classes, factory_source=source, **common)


def build_model(recipe: ModelRecipe) -> nn.Module:
    """The model in eval mode on the CPU, weights loaded; UserError when they do not fit."""
    if recipe.kind == "archive":
        model = _serialized_model(recipe)
    elif recipe.kind == "torchvision":
        model = _torchvision_model(recipe)
    elif recipe.kind == "timm":
        model = _timm_model(recipe)
    else:
        model = _factory_model(recipe)
    if recipe.weights is not None:
        _load_weights(model, recipe)
    return model.eval()


def _serialized_model(recipe: ModelRecipe) -> nn.Module:
    """A torch.export archive (.pt2), unflattened back into hookable submodules, or a TorchScript file.

    `torch.export.load` unpickles parts of an archive without `weights_only` and loads compiled native
    code: unless the job trusts the file, archives holding such parts are refused and every pickle in
    it is read with weights_only=True.
    """
    trusted = recipe.trust_weights
    if not trusted:
        _refuse_code_in_archive(recipe)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            with _weights_only_loads(not trusted):
                return torch.export.unflatten(torch.export.load(io.BytesIO(recipe.archive)))
        except pickle.UnpicklingError as exc:
            if not trusted and "weights only" in str(exc).lower():
                raise UserError(_untrusted(recipe.name, "a pickled object that torch.load(weights_only=True) refuses")) from None
        except Exception:
            pass  # not an exported program: try TorchScript
        try:
            return torch.jit.load(io.BytesIO(recipe.archive), map_location="cpu")
        except Exception as exc:
            reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise UserError(f"model.archive {recipe.name} is neither a torch.export archive nor TorchScript: {reason}") from None


def _refuse_code_in_archive(recipe: ModelRecipe) -> None:
    """UserError for a .pt2 part that loading would execute: compiled code, or objects read with pickle.loads."""
    try:
        with zipfile.ZipFile(io.BytesIO(recipe.archive)) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return  # not an archive: torch.export and TorchScript will both refuse it
    for name in names:
        base = name.rsplit("/", 1)[-1]
        if "data/aotinductor/" in name or "data/mtia" in name:
            raise UserError(_untrusted(recipe.name, f"compiled native code ({name})"))
        if "data/constants/" in name and base.startswith(("opaque_obj_", "custom_obj_")):
            raise UserError(_untrusted(recipe.name, f"a pickled Python object ({name})"))


def _untrusted(name: str, what: str) -> str:
    return (f"model.archive {name} holds {what}, which loading it would execute: refused, because a model file "
            "can run any code that way. Export the model again with torch.export.save (plain tensors load safely), "
            "or, only if you trust the file, set [model] trust_weights = true.")


@contextlib.contextmanager
def _weights_only_loads(force: bool) -> Iterator[None]:
    """Make every torch.load in the block use weights_only=True (torch reads TORCH_FORCE_WEIGHTS_ONLY_LOAD per call)."""
    if not force:
        yield
        return
    keys = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ[keys[0]] = "1"
    os.environ.pop(keys[1], None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _torchvision_model(recipe: ModelRecipe) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if recipe.name not in names:
        close = difflib.get_close_matches(recipe.name, names, n=3)
        raise UserError(f"model.torchvision = {recipe.name!r} is not a torchvision model. Closest: {', '.join(close) or 'none'}.")
    kwargs = {"num_classes": recipe.num_classes} if recipe.num_classes else {}
    return torchvision.models.get_model(recipe.name, weights=None, **kwargs)


def _timm_model(recipe: ModelRecipe) -> nn.Module:
    """timm.create_model(name, pretrained=False): nothing is downloaded; `weights` loads a local state_dict."""
    try:
        import timm
    except ImportError:
        raise UserError("model.timm needs the timm package: pip install 'neuron-catalog[timm]' (make demo and "
                        "make test install it).") from None
    if not timm.is_model(recipe.name):
        close = difflib.get_close_matches(recipe.name, timm.list_models(), n=3)
        raise UserError(f"model.timm = {recipe.name!r} is not a timm model. Closest: {', '.join(close) or 'none'}.")
    kwargs = {"num_classes": recipe.num_classes} if recipe.num_classes else {}  # timm reads 0 as "no head"
    return timm.create_model(recipe.name, pretrained=False, **kwargs)


def _factory_model(recipe: ModelRecipe) -> nn.Module:
    target, _, fn = recipe.name.rpartition(":")
    if recipe.factory_source is not None:
        module = types.ModuleType(f"neuron_catalog_factory_{hashlib.sha256(target.encode()).hexdigest()[:12]}")
        module.__file__ = target
        sys.modules[module.__name__] = module  # classes defined there must pickle/unpickle on this process
        try:
            exec(compile(recipe.factory_source, target, "exec"), module.__dict__)
        except Exception as exc:
            raise UserError(f"model.factory file {target} failed to import: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise UserError(f"model.factory module {target!r} cannot be imported ({exc}). Install it or use \"file.py:function\".") from None
    factory = getattr(module, fn, None)
    if not callable(factory):
        raise UserError(f"model.factory {recipe.name!r}: {target} has no function {fn!r}.")
    try:
        model = factory()
    except Exception as exc:  # the user's code failed: say where, without a traceback
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != __file__]
        at = f" (at {Path(frames[-1].filename).name} line {frames[-1].lineno})" if frames else ""
        raise UserError(f"model.factory {recipe.name!r} raised {type(exc).__name__}: {exc}{at}. The function must take "
                        "no arguments and return a torch.nn.Module.") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory {recipe.name!r} returned {type(model).__name__}, not a torch.nn.Module.")
    return model


def _load_weights(model: nn.Module, recipe: ModelRecipe) -> None:
    try:
        state = torch.load(io.BytesIO(recipe.weights), map_location="cpu", weights_only=not recipe.trust_weights)
    except Exception as exc:
        reason = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:  # name what needs code, rather than torch's page of advice
            reason = f"it holds a pickled {found.group(1)}, which only code can rebuild"
        raise UserError(
            f"model.weights {recipe.weights_name} could not be read as a state_dict with torch.load(weights_only=True): "
            f"{reason}. Save it with torch.save(model.state_dict(), path), or, only if you trust the file "
            "(unpickling runs its code), set [model] trust_weights = true."
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"model.weights {recipe.weights_name} holds a {type(state).__name__}, not a state_dict.")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch lists missing keys, unexpected keys and size mismatches
        detail = " ".join(str(exc).split())
        hint = " If only the classifier differs, set [model] num_classes." if "size mismatch" in detail else ""
        raise UserError(f"model.weights {recipe.weights_name} does not fit the model (a checkpoint of another "
                        f"architecture?): {detail[:600]}.{hint}") from None


def resolve_layers(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Module paths selected by names or globs, in model order; default every Conv2d and Linear."""
    names = [n for n, _ in model.named_modules() if n]
    if not patterns:
        kinds = ("Conv2d", "Linear")
        return [n for n, m in model.named_modules() if n and (isinstance(m, (nn.Conv2d, nn.Linear)) or getattr(m, "original_name", "") in kinds)]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)] if any(c in pattern for c in "*?[") else [n for n in names if n == pattern]
        if not hits:
            close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
            raise UserError(
                f"model.layers: no module named {pattern!r}. Closest names: {', '.join(close) or '(none)'}. "
                f"Layers are module paths as in model.named_modules(), e.g. {', '.join(names[:4])}."
            )
        chosen.extend(h for h in hits if h not in chosen)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def select_among(model: nn.Module, patterns: tuple[str, ...], names: list[str], key: str) -> list[str]:
    """The run's layers (`names`, a dictionary's features included) that a stage's `key` selects, in run order:
    module paths and globs as in model.layers; a dictionary's features only by a pattern ending in "..features"
    ("conv4..features", "*..features"). Refused: a module the run does not catalog, a pattern that selects nothing."""
    wanted = [p for p in patterns if p.endswith(FEATURES_SUFFIX)]
    modules = set(resolve_layers(model, tuple(p for p in patterns if p not in wanted))) if len(wanted) < len(patterns) else set()
    outside = [n for n in modules if n not in names]
    empty = [p for p in wanted if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if outside or empty:
        what = ", ".join(sorted(outside) + empty)
        raise UserError(f"{key} selects {what}, which model.layers does not (nor a dictionary's features): "
                        f"choose among {', '.join(names)}.")
    return [n for n in names if n in modules or any(fnmatch.fnmatchcase(n, p) for p in wanted)]
