"""Build configuration: one YAML file, validated by pydantic, diffable.

A build config names the corpus, its storage root, the flow (the ordered stages) and one
section per stage. Every stage section is validated by that stage's own config model, so
an unknown key or a bad value fails before any work starts, with the file and the dotted
key in the message::

    configs/pretrain.yaml: stages.pretrain_clip.min_clip_sec: Input should be a valid number

Relative local paths in the file (``root``, a source ``path``) are resolved against the
folder of the config file, so a scheduled run gives the same result from any working dir.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.stage import Stage, StageConfig


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class RayConfig(BaseModel):
    """Where stages run. ``address`` null: ``$RAY_ADDRESS`` if set, else a local Ray started
    by the command (``num_cpus`` caps it). ``part_retries``: extra attempts for a part that raises.
    ``fuse``: run consecutive stages of one resource shape as one task per part.
    ``executor``: ``ray``, or ``local`` to run every part in the command's own process."""
    model_config = ConfigDict(extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    part_retries: int = Field(2, ge=0)
    fuse: bool = True
    executor: Literal["ray", "local"] = "ray"


class BuildConfig(BaseModel):
    """The top level of a build config file (see README "Config file")."""
    model_config = ConfigDict(extra="forbid")

    corpus: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    flow: str = Field("pretrain", pattern=r"^[a-z_]+$")
    root: str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    part_size: int = Field(100, ge=1)
    ray: RayConfig = Field(default_factory=RayConfig)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: settings of `livecc release`, validated by the release package (release/config.py); in no
    #: stage's config hash, so changing them never makes a part stale
    release: dict[str, Any] = Field(default_factory=dict)

    # set by load_config; not part of the file
    path: str | None = Field(None, exclude=True)


def _fmt_loc(loc: tuple) -> str:
    return ".".join(str(p) for p in loc)


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "--set") -> dict[str, Any]:
    """``data`` with ``KEY=VALUE`` overrides merged in (dotted keys, YAML values), through
    OmegaConf's dot-list parser, which ``train/`` uses too.

    Raises:
        ConfigError: an override that is not ``KEY=VALUE``.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    for o in overrides:
        if "=" not in o or not o.split("=", 1)[0].strip():
            raise ConfigError(f"{where} {o!r}: expected KEY=VALUE")
    if not overrides:
        return data
    try:
        merged = OmegaConf.merge(OmegaConf.create(data), OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return OmegaConf.to_container(merged, resolve=False)


def resolve_local(path: str, base: str | os.PathLike) -> str:
    """A local path from a config file, made absolute against ``base`` (the file's folder);
    URLs and absolute paths are returned as they are."""
    if "://" in path or os.path.isabs(path):
        return path
    return str((Path(base) / os.path.expanduser(path)).resolve())


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> BuildConfig:
    """Load and validate a build config file, applying ``KEY=VALUE`` overrides.

    Raises:
        ConfigError: unreadable YAML, an unknown key or a bad value (names file and key).
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such config file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, list(overrides or []))
    try:
        cfg = BuildConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{path}: {_fmt_loc(err['loc'])}: {err['msg']}") from None
    base = path.resolve().parent
    cfg.root = resolve_local(cfg.root, base)
    cfg.path = str(path.resolve())
    return cfg


def stage_config(cfg: BuildConfig, stage: type[Stage]) -> StageConfig:
    """Validate the ``stages.<name>`` section with the stage's config model. Keys the section
    leaves unset take their value from the sections its model ``inherits`` from (the media
    stage takes crawl's network settings); local path fields are made absolute against the
    config file's folder.

    Raises:
        ConfigError: naming the file and the dotted key.
    """
    raw = dict(cfg.stages.get(stage.name) or {})
    for source, fields in stage.Config.inherits.items():
        for key, value in (cfg.stages.get(source) or {}).items():
            if key in fields and key not in raw:
                raw[key] = value
    try:
        sc = stage.Config.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"{cfg.path or 'config'}: stages.{stage.name}.{_fmt_loc(err['loc'])}: {err['msg']}") from None
    base = Path(cfg.path).parent if cfg.path else Path.cwd()
    # Stage configs may declare local path fields; resolve them like the top-level root.
    for name, field in type(sc).model_fields.items():
        if (field.json_schema_extra or {}).get("local_path") and isinstance(getattr(sc, name), str):
            setattr(sc, name, resolve_local(getattr(sc, name), base))
    return sc


def check_stage_sections(cfg: BuildConfig, stages: list[type[Stage]]) -> None:
    """Every ``stages.<name>`` section must belong to a stage of the flow.

    Raises:
        ConfigError: an unknown stage section, or a bad value inside a known one.
    """
    names = [s.name for s in stages]
    for key in cfg.stages:
        if key not in names:
            raise ConfigError(f"{cfg.path or 'config'}: stages.{key}: no such stage in flow "
                              f"{cfg.flow!r} (stages: {', '.join(names)})")
    for s in stages:
        stage_config(cfg, s)


def config_hash(payload: Any) -> str:
    """sha256 (16 hex digits) of a JSON-serialisable payload, key order independent."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolved_yaml(cfg: BuildConfig, stages: list[type[Stage]]) -> str:
    """The config with every default filled in: what a build actually uses, for diffing."""
    data = cfg.model_dump(mode="json", exclude={"stages"})
    data["stages"] = {s.name: stage_config(cfg, s).model_dump(mode="json") for s in stages}
    return yaml.safe_dump(data, sort_keys=False)
