"""Model names users type, and what each one means.

A name is one of: an alias (`small`, `stereo-large`, ...) for Meta's checkpoints, `tiny` or
`tiny-stereo` (built here, untrained), a local folder written by `save_pretrained`, or any
Hugging Face repo id. Resolution is pure: it never touches the network or loads weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from musicgen_server.errors import UnknownModelError

META_LICENSE = "CC-BY-NC-4.0"
TINY_LICENSE = "MIT"

SourceKind = Literal["hub", "local", "tiny"]

# Hugging Face repo ids: "owner/name", each part letters, digits, '-', '_' or '.'.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from and what a listing should say about it."""

    name: str
    kind: SourceKind
    source: str  # repo id for "hub", folder for "local", variant for "tiny"
    description: str = ""
    license: str = "see the model card"
    parameters: str = ""
    channels: int | None = None  # known for aliases; otherwise read from the config at load
    trained: bool = True

    @property
    def repo_id(self) -> str | None:
        return self.source if self.kind == "hub" else None


def _meta(alias: str, repo: str, parameters: str, channels: int, description: str) -> ModelSpec:
    return ModelSpec(
        name=alias,
        kind="hub",
        source=repo,
        description=description,
        license=META_LICENSE,
        parameters=parameters,
        channels=channels,
    )


ALIASES: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        _meta("small", "facebook/musicgen-small", "300M", 1, "text to music, fastest"),
        _meta("medium", "facebook/musicgen-medium", "1.5B", 1, "text to music"),
        _meta("large", "facebook/musicgen-large", "3.3B", 1, "text to music, best quality"),
        _meta("melody", "facebook/musicgen-melody", "1.5B", 1, "text (and melody) to music"),
        _meta("melody-large", "facebook/musicgen-melody-large", "3.3B", 1, "text (and melody) to music"),
        _meta("stereo-small", "facebook/musicgen-stereo-small", "300M", 2, "stereo text to music"),
        _meta("stereo-medium", "facebook/musicgen-stereo-medium", "1.5B", 2, "stereo text to music"),
        _meta("stereo-large", "facebook/musicgen-stereo-large", "3.3B", 2, "stereo text to music"),
        _meta("stereo-melody", "facebook/musicgen-stereo-melody", "1.5B", 2, "stereo text (and melody) to music"),
        _meta(
            "stereo-melody-large",
            "facebook/musicgen-stereo-melody-large",
            "3.3B",
            2,
            "stereo text (and melody) to music",
        ),
        ModelSpec(
            name="tiny",
            kind="tiny",
            source="tiny",
            description="untrained MusicGen for tests and smoke runs: its output is noise",
            license=TINY_LICENSE,
            parameters="1.3M",
            channels=1,
            trained=False,
        ),
        ModelSpec(
            name="tiny-stereo",
            kind="tiny",
            source="tiny-stereo",
            description="untrained stereo MusicGen for tests and smoke runs: its output is noise",
            license=TINY_LICENSE,
            parameters="1.4M",
            channels=2,
            trained=False,
        ),
    ]
}

# The reverse map lets `facebook/musicgen-small` show up as `small` in listings.
_ALIAS_OF_REPO = {spec.source: spec for spec in ALIASES.values() if spec.kind == "hub"}


def resolve(name: str) -> ModelSpec:
    """Turn what a user typed into a ModelSpec, or say clearly why it is not a model name."""
    text = (name or "").strip()
    if not text:
        raise UnknownModelError("model name is empty: give an alias such as 'small' or a repo id")
    if text in ALIASES:
        return ALIASES[text]
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(
                f"folder '{text}' has no config.json: save a model into it with save_pretrained()"
            )
        return ModelSpec(
            name=text,
            kind="local",
            source=str(path.resolve()),
            description=f"local folder {path}",
        )
    if text in _ALIAS_OF_REPO:
        return _ALIAS_OF_REPO[text]
    if _REPO_ID.match(text) and not text.startswith((".", "/")):
        return ModelSpec(name=text, kind="hub", source=text, description="Hugging Face repo")
    known = ", ".join(ALIASES)
    raise UnknownModelError(
        f"unknown model '{text}': use one of {known}, a Hugging Face repo id (owner/name), "
        "or a folder saved with save_pretrained()"
    )


def is_known_name(name: str) -> bool:
    """True when `resolve` would accept the name (used by request validation)."""
    try:
        resolve(name)
    except UnknownModelError:
        return False
    return True
