"""The ``release:`` section of a build config (docs/recipes.md#release).

It is read only by ``livecc release``: no stage sees it and it is in no config hash, so
changing the licence or the retry settings never makes a part stale.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.config import BuildConfig, ConfigError


class RetryPolicy(BaseModel):
    """Our backoff around every Hub request (huggingface_hub < 1.0 retries neither the
    preupload, the LFS batch nor the commit call): a request that gets 408, 429 or 5xx, or whose
    connection drops or times out, is sent again after a wait drawn uniformly from
    ``[0, min(max_s, base_s * 2**retry))`` ("full jitter"), and never sooner than the response's
    ``Retry-After`` (capped at ``max_retry_after_s``)."""
    model_config = ConfigDict(extra="forbid")

    attempts: int = Field(8, ge=1, description="tries per request, the first included")
    base_s: float = Field(1.0, ge=0, description="first backoff ceiling, seconds")
    max_s: float = Field(60.0, ge=0, description="backoff ceiling, seconds")
    max_retry_after_s: float = Field(600.0, ge=0, description="longest Retry-After honoured, seconds")


class ReleaseConfig(BaseModel):
    """``release:`` in the build config. Every key is optional."""
    model_config = ConfigDict(extra="forbid")

    license: str = Field(
        "unknown", pattern=r"^[a-z0-9][a-z0-9.+-]*$",
        description="Hub licence id of the release (e.g. cc-by-4.0, other). The default claims nothing: the "
                    "videos and captions stay under their owners' terms")
    license_name: str | None = Field(None, description="name of a custom licence (license: other)")
    license_link: str | None = Field(None, description="URL or repo path of a custom licence (license: other)")
    pretty_name: str | None = Field(None, description="card title (default: the corpus name)")
    description: str | None = Field(None, description="a paragraph for the top of the card")
    language: list[str] = Field(default_factory=lambda: ["en"], description="languages of the text stream")
    tags: list[str] = Field(default_factory=list, description="tags added to webdataset, video, streaming, livecc")
    batch_files: int = Field(16, ge=1, description="files pre-uploaded per batch")
    batch_bytes: int = Field(4 << 30, ge=1, description="bytes pre-uploaded per batch at most (one larger file is a batch)")
    num_threads: int = Field(4, ge=1, description="parallel LFS uploads within a batch")
    commit_max_files: int = Field(20_000, ge=1, description="files per commit (the Hub takes up to 25k LFS files)")
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    forbidden_strings: list[str] = Field(
        default_factory=list,
        description="extra strings (paths, host names) that must not appear in any released file")

    @model_validator(mode="after")
    def _custom_licence_named(self) -> "ReleaseConfig":
        if self.license == "other" and not self.license_name:
            raise ValueError("license: other needs license_name (and license_link)")
        return self


def release_config(cfg: BuildConfig) -> ReleaseConfig:
    """The validated ``release:`` section of a loaded build config.

    Raises:
        ConfigError: an unknown key or a bad value, naming the file and the dotted key.
    """
    raw: dict[str, Any] = dict(cfg.release or {})
    try:
        return ReleaseConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{cfg.path or 'config'}: release{'.' + loc if loc else ''}: {err['msg']}") from None


__all__ = ["ReleaseConfig", "RetryPolicy", "release_config"]
