"""What `musicgen models list` and `GET /models` show: every alias, whether its files are
here, how much disk they take and under which licence the weights may be used."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from musicgen_server.config import Settings
from musicgen_server.models import hub, tiny
from musicgen_server.models.registry import ALIASES, ModelSpec


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: str
    description: str
    parameters: str
    channels: int | None
    license: str
    trained: bool
    downloaded: bool
    size_bytes: int | None
    notes: str

    def to_dict(self) -> dict:
        return asdict(self)


def _notes(spec: ModelSpec) -> str:
    if not spec.trained:
        return "untrained: noise, for tests"
    if "melody" in spec.name:
        return "text only for now"
    return ""


def entry(spec: ModelSpec, settings: Settings) -> CatalogEntry:
    if spec.kind == "tiny":
        folder = settings.models_dir / spec.source
        downloaded = tiny.is_built(folder)
        size = hub.folder_size(folder) if downloaded else None
    elif spec.kind == "local":
        downloaded, size = True, hub.folder_size(spec.source)
    else:
        downloaded = hub.cached_snapshot(spec.source) is not None
        size = hub.size_on_disk(spec.source) if downloaded else None
    return CatalogEntry(
        name=spec.name,
        source=spec.source,
        description=spec.description,
        parameters=spec.parameters,
        channels=spec.channels,
        license=spec.license,
        trained=spec.trained,
        downloaded=downloaded,
        size_bytes=size,
        notes=_notes(spec),
    )


def catalog(settings: Settings) -> list[CatalogEntry]:
    return [entry(spec, settings) for spec in ALIASES.values()]
