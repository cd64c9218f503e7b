"""The Hugging Face cache and Hub, as this project needs them: is a model here, how big is it,
fetch it, and fail fast with a message a person can act on when it can be neither.

Everything goes through huggingface_hub so that `HF_HOME`, `HF_HUB_CACHE`, `HF_HUB_OFFLINE` and
`HF_TOKEN` mean what they mean everywhere else.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi, constants, scan_cache_dir, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)

from musicgen_server.errors import ModelNotAvailableError

# What a MusicGen checkpoint needs; the rest of a repo (pickled .bin twins, audio samples,
# READMEs' images) is skipped to save gigabytes.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt"]
LEGACY_WEIGHT_PATTERNS = ["*.json", "*.bin", "*.model", "*.txt"]


def is_offline() -> bool:
    return constants.is_offline_mode()


def cache_dir() -> Path:
    return Path(constants.HF_HUB_CACHE)


def cached_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The folder of the cached snapshot, or None when the model is not downloaded."""
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None
    return folder if (folder / "config.json").is_file() else None


def size_on_disk(repo_id: str) -> int | None:
    """Bytes the repo takes in the cache (all revisions), or None when it is not cached."""
    try:
        info = scan_cache_dir(cache_dir())
    except (OSError, ValueError):
        return None
    for repo in info.repos:
        if repo.repo_type == "model" and repo.repo_id == repo_id:
            return repo.size_on_disk
    return None


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _how_to_get(name: str, repo_id: str) -> str:
    return (
        f"run `musicgen models pull {name}` on a machine with network access "
        f"(the files go to {cache_dir()}), or set HF_HOME to a cache that has {repo_id}"
    )


def not_cached_offline(name: str, repo_id: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"model '{name}' ({repo_id}) is not in the Hugging Face cache and HF_HUB_OFFLINE=1 "
        f"forbids downloading it: {_how_to_get(name, repo_id)}"
    )


def _weight_patterns(api: HfApi, repo_id: str, revision: str | None, timeout: float) -> list[str]:
    """Prefer safetensors; fall back to .bin for repos that only ship pickles."""
    info = api.model_info(repo_id, revision=revision, timeout=timeout, files_metadata=False)
    names = [sibling.rfilename for sibling in (info.siblings or [])]
    if any(name.endswith(".safetensors") for name in names):
        return WEIGHT_PATTERNS
    return LEGACY_WEIGHT_PATTERNS


def download(
    name: str,
    repo_id: str,
    *,
    revision: str | None = None,
    timeout: float = 5.0,
) -> Path:
    """Download a checkpoint into the HF cache. A quick metadata call with a short timeout comes
    first, so an unreachable Hub fails in seconds instead of after the client's retry loop."""
    if is_offline():
        raise not_cached_offline(name, repo_id)
    api = HfApi()
    try:
        patterns = _weight_patterns(api, repo_id, revision, timeout)
    except GatedRepoError as error:
        raise ModelNotAvailableError(
            f"model '{name}' ({repo_id}) is gated: accept its terms on huggingface.co and set HF_TOKEN"
        ) from error
    except RepositoryNotFoundError as error:
        raise ModelNotAvailableError(
            f"model '{name}': no repository {repo_id} on the Hugging Face Hub "
            "(check the spelling, or set HF_TOKEN for a private repo)"
        ) from error
    except (HfHubHTTPError, OSError, Exception) as error:  # network errors come in many types
        raise ModelNotAvailableError(
            f"model '{name}' ({repo_id}) is not downloaded and the Hugging Face Hub cannot be "
            f"reached ({type(error).__name__}): {_how_to_get(name, repo_id)}"
        ) from error
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            etag_timeout=timeout,
        )
    except Exception as error:
        raise ModelNotAvailableError(
            f"downloading model '{name}' ({repo_id}) failed ({type(error).__name__}: {error}); "
            "run the command again to resume"
        ) from error
    return Path(folder)
