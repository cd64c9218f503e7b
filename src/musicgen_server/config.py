"""The one typed settings object. Every knob is an environment variable `MUSICGEN_<NAME>`;
CLI flags override by constructing `Settings(**overrides)`.

Hugging Face's own variables (`HF_HOME`, `HF_HUB_OFFLINE`, `HF_TOKEN`) are read by huggingface_hub
itself and deliberately not duplicated here.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "musicgen-server"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MUSICGEN_", extra="ignore", frozen=True)

    # --- models -----------------------------------------------------------------------------
    model: str = Field("small", description="Default model: an alias, a Hugging Face repo id or a folder.")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_loaded_models: int = Field(2, ge=1, description="Models kept in memory at once (LRU).")
    model_memory_gb: float | None = Field(
        None, gt=0, description="Optional cap on the weights kept in memory, in GiB (LRU)."
    )
    auto_download: bool = Field(True, description="Download a missing model on first use.")
    hub_timeout: float = Field(5.0, gt=0, description="Seconds to wait for the Hugging Face Hub.")

    # --- generation -------------------------------------------------------------------------
    engine: Literal["batched", "reference"] = Field(
        "batched", description="batched (continuous batching, the default) or reference (transformers' generate())."
    )
    cpu_threads: int | None = Field(
        None, ge=1, description="Threads an engine uses on CPU; unset keeps torch's default."
    )
    max_duration: float = Field(30.0, gt=0, description="Longest clip, in seconds, a request may ask for.")
    max_batch_size: int = Field(8, ge=1)
    loudness_target: float = Field(-14.0, le=0, description="LUFS target of loudness normalisation.")

    # --- service ----------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in data_dir.")
    max_queue: int = Field(100, ge=1, description="Waiting jobs accepted before 429.")
    result_ttl: float = Field(24 * 3600, gt=0, description="Seconds finished audio is kept.")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    shutdown_grace: float = Field(30.0, ge=0, description="Seconds running jobs get to finish on SIGTERM.")
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["plain", "json"] = "plain"
    log_level: str = "INFO"
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest request body accepted (413 beyond).")
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt accepted, in characters.")

    # --- jobs -------------------------------------------------------------------------------
    lease_seconds: float = Field(
        10.0,
        gt=0,
        description="A running job's lease; a worker renews it while alive. A job whose worker died "
        "is claimed again at most this long after the last renewal.",
    )
    poll_interval: float = Field(0.5, gt=0, description="Seconds between looks at the queue for new work.")
    sweep_interval: float = Field(60.0, gt=0, description="Seconds between sweeps that delete expired audio.")
    max_attempts: int = Field(
        3, ge=1, description="Starts of one job before it is failed (a job that keeps killing its worker)."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        """Keys come as one comma-separated variable, the form every deployment tool can set."""
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @cached_property
    def models_dir(self) -> Path:
        """Where built-in models (tiny) are written; downloaded ones live in the HF cache."""
        return self.data_dir / "models"

    @cached_property
    def audio_dir(self) -> Path:
        return self.data_dir / "audio"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'jobs.db'}"


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags) winning."""
    clean = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**clean)
