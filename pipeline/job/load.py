"""Reading a job file (TOML) into a JobConfig: every problem is a UserError naming the key and the fix."""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import UserError
from pipeline.inputs.layouts import DESCRIBED, GIVEN
from pipeline.job.checks import at_least_one, check_exists
from pipeline.job.config import JobConfig, StagesConfig

if TYPE_CHECKING:
    from pipeline.stages.protocol import Stage


def load_job(path: str | Path, stages: Mapping[str, Stage]) -> JobConfig:
    """Read and validate a job file; every problem is a UserError naming the key. `stages`: every stage there is
    (pipeline.registry.STAGES), by name in pipeline order: their [stages.<name>] sections are read with their settings."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"job file {path} does not exist: pass the path of a TOML job file (see jobs/demo.toml).")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"job file {path} is not valid TOML: {exc}. Fix the syntax at that line.") from None
    job = _build(JobConfig, raw, "", path.resolve().parent, extra={"path": path.resolve()}, stages=stages)
    job = _alias_torchscript(job)
    _check_values(job, stages)
    target, _, fn = job.model.factory.rpartition(":")
    if target.endswith(".py"):  # a factory file is relative to the job file, like every other path
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, factory=f"{(job.path.parent / target).resolve()}:{fn}"))
    target, _, fn = job.concepts.segmenter.rpartition(":")
    if target.endswith(".py"):
        job = dataclasses.replace(job, concepts=dataclasses.replace(
            job.concepts, segmenter=f"{(job.path.parent / target).resolve()}:{fn}"))
    return job


def _alias_torchscript(job: JobConfig) -> JobConfig:
    """[model] torchscript is the old name of [model] archive."""
    m = job.model
    if m.torchscript is None:
        return job
    if m.archive is not None:
        raise UserError(f"job file {job.path}: [model] sets both archive and torchscript (its old name); keep archive.")
    return dataclasses.replace(job, model=dataclasses.replace(m, archive=m.torchscript, torchscript=None))


def _build(cls: type, table: Any, where: str, base: Path, extra: dict[str, Any] | None = None,
           stages: Mapping[str, Stage] | None = None) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"job key [{where}] must be a table, got {table!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in (extra or {})]
    values: dict[str, Any] = dict(extra or {})
    for key, value in table.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown job key '{full}'.{hint} Valid keys here: {', '.join(names)}.")
        values[key] = _convert(hints[key], value, full, base, stages)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, base: Path, stages: Mapping[str, Stage] | None = None) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: the X part decides
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if hint is StagesConfig:
        return _stages(value, key, base, stages or {})
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, base)
    if origin is dict:
        item = typing.get_args(hint)[1]
        if not isinstance(value, dict):
            raise UserError(f"job key '{key}' must be a table, got {value!r}: write e.g. {key.rsplit('.', 1)[-1]} = "
                            '{ "module.path" = "..." }.')
        return {str(k): _convert(item, v, f"{key}.{k}", base) for k, v in value.items()}
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(item, str(item))
            raise UserError(f"job key '{key}' must be a list of {plural}, got {value!r}: write e.g. {key.rsplit('.', 1)[-1]} = [...].")
        return tuple(_convert(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise UserError(f"job key '{key}' must be a non-empty path string, got {value!r}.")
        return (base / value).resolve()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise UserError(f"job key '{key}' must be {_name(hint)}, got {value!r} ({type(value).__name__}).")
    raise TypeError(f"unsupported type {hint} for {key}")  # a bug in this module, not user input


def _stages(table: Any, key: str, base: Path, stages: Mapping[str, Stage]) -> StagesConfig:
    """[stages.<name>] tables, each read as its stage's settings; kept in pipeline order."""
    if not isinstance(table, dict):
        raise UserError(f"job key [{key}] must be a table, got {table!r}.")
    for name in table:
        if name not in stages:
            close = difflib.get_close_matches(name, list(stages), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown job key '{key}.{name}'.{hint} Valid keys here: {', '.join(stages)}.")
    sections = {name: _build(stage.Settings, table[name], f"{key}.{name}", base)
                for name, stage in stages.items() if name in table}
    return StagesConfig(sections, tuple(stages))


def _name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _check_values(job: JobConfig, stages: Mapping[str, Stage]) -> None:
    m = job.model
    sources = [n for n in ("torchvision", "timm", "factory", "archive") if getattr(m, n)]
    if len(sources) != 1:
        raise UserError(
            f"job file {job.path}: [model] needs exactly one of torchvision = NAME, timm = NAME, factory = "
            f"\"module:function\" or archive = FILE; found {sources or 'none'}."
        )
    bad = {glob: layout for glob, layout in m.layouts.items() if layout not in GIVEN}
    if bad:
        raise UserError(f"job key 'model.layouts' gives {bad}: a layout is one of {', '.join(map(repr, GIVEN))} "
                        f"({'; '.join(f'{k}: {DESCRIBED[k]}' for k in GIVEN)}).")
    if m.factory and ":" not in m.factory:
        raise UserError(f"job key 'model.factory' = {m.factory!r} must look like \"pkg.module:function\" or \"file.py:function\".")
    if len(m.mean) != len(m.std) or len(m.mean) not in (1, 3):
        raise UserError("job keys 'model.mean' and 'model.std' must both list 1 (grayscale) or 3 (RGB) numbers.")
    if any(s <= 0 for s in m.std):
        raise UserError(f"job key 'model.std' must be positive, got {list(m.std)}.")
    positive = {
        "model.input_size": m.input_size, "data.batch_size": job.data.batch_size,
        "ray.shard_images": job.ray.shard_images, "ray.cpus_per_worker": job.ray.cpus_per_worker,
    }
    for name, settings in job.stages.sections.items():
        settings.check(f"stages.{name}")
    at_least_one(positive)
    for key, value in {"data.limit": job.data.limit, "ray.workers": job.ray.workers}.items():
        if value < 0:
            raise UserError(f"job key '{key}' must be 0 or more, got {value}.")
    if job.ray.gpus_per_worker < 0:
        raise UserError(f"job key 'ray.gpus_per_worker' must be 0 or more, got {job.ray.gpus_per_worker}.")
    if job.latents is not None:
        _check_generator(job)
    elif job.data.images is None:
        raise UserError(f"job file {job.path}: [data] images is missing: set it to an image folder (or, for a "
                        "generator, add [latents]).")
    elif job.concepts.segmenter:
        raise UserError("job key 'concepts.segmenter' segments generated images: it needs [latents] (a generator "
                        "job). For a classifier, point [concepts] broden at a Broden-format directory instead.")
    if job.output.catalog is None:
        raise UserError(f"job file {job.path}: [output] catalog is missing: set it to the catalog directory to write.")
    check_output_location(job, job.output.catalog, "[output] catalog")


def _check_generator(job: JobConfig) -> None:
    """A generator job's [latents], and the tables it replaces."""
    z = job.latents
    if job.data.images is not None:
        raise UserError(f"job file {job.path}: [latents] makes the model a generator whose images are generated, so "
                        "[data] images has no use; remove one of them.")
    if z.count < 1 or not z.shape or any(n < 1 for n in z.shape):
        raise UserError(f"job keys 'latents.count' and 'latents.shape' must be positive, got count {z.count} and shape "
                        f"{list(z.shape)}: write e.g. count = 512, shape = [128] (one latent's shape, no batch axis).")
    if z.distribution not in ("normal", "uniform"):
        raise UserError(f"job key 'latents.distribution' must be 'normal' or 'uniform', got {z.distribution!r}.")
    if job.concepts.broden is not None:
        raise UserError("job key 'concepts.broden' of a generator job: its concepts come from segmenting the generated "
                        "images; set [concepts] segmenter instead.")
    if job.concepts.segmenter and ":" not in job.concepts.segmenter:
        raise UserError(f"job key 'concepts.segmenter' = {job.concepts.segmenter!r} must look like "
                        "\"pkg.module:function\" or \"file.py:function\".")


def check_output_location(job: JobConfig, catalog: Path, key: str = "--out") -> None:
    """The catalog must not be, lie inside, or hold a data set the run reads ([data] images, [concepts] broden).

    Inside one, the run would write its tables and arrays into the data set (and read them back as data
    next time); holding one, the data would live in a folder the run writes, stages and replaces files in.
    """
    catalog = catalog.resolve()
    for name, data in (("data.images", job.data.images), ("concepts.broden", job.concepts.broden)):
        if data is None:
            continue
        data = data.resolve()
        if catalog == data or data in catalog.parents:
            where = "is" if catalog == data else "is inside"
            raise UserError(f"{key} = {catalog} {where} the data set {name} = {data}: the run would write the catalog "
                            f"into the data it reads. Choose a catalog path outside {data} (paths in the job file are "
                            f"relative to {job.path.parent}).")
        if catalog in data.parents:
            raise UserError(f"{key} = {catalog} holds the data set {name} = {data}: the run writes and replaces files in "
                            "the catalog folder, so the data must not live there. Choose a catalog path beside the "
                            "data, not above it.")


def check_inputs_exist(job: JobConfig) -> None:
    """The model's and the data's files must exist; called after [prepare] had its chance to make them."""
    m = job.model
    needed = {"model.weights": m.weights, "model.archive": m.archive, "data.images": job.data.images,
              "concepts.segmenter_weights": job.concepts.segmenter_weights}
    for key, spec in (("model.factory", m.factory), ("concepts.segmenter", job.concepts.segmenter)):
        if spec.rpartition(":")[0].endswith(".py"):
            needed[key] = Path(spec.rpartition(":")[0])
    for key, p in needed.items():
        check_exists(job, key, p)

