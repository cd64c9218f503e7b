"""Fixtures shared by every test: a private data dir and Hugging Face cache, and the tiny models
built once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports huggingface_hub (which reads these once): no test may read the
# developer's cache or reach the network for a model.
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="musicgen-tests-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from musicgen_server.config import Settings  # noqa: E402
from musicgen_server.models import tiny  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("musicgen")


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(session_dir: Path):
    """Subprocesses (the CLI, the server) inherit a private data dir and no MUSICGEN_ settings
    from the developer's shell."""
    saved = dict(os.environ)
    os.environ["MUSICGEN_DATA_DIR"] = str(session_dir / "data")
    for key in list(os.environ):
        if key.startswith("MUSICGEN_") and key != "MUSICGEN_DATA_DIR":
            del os.environ[key]
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def settings(session_dir: Path) -> Settings:
    return Settings(data_dir=session_dir / "data", model="tiny")


@pytest.fixture(scope="session")
def tiny_folder(settings: Settings) -> Path:
    return tiny.build_tiny("tiny", settings.models_dir / "tiny")


@pytest.fixture(scope="session")
def tiny_stereo_folder(settings: Settings) -> Path:
    return tiny.build_tiny("tiny-stereo", settings.models_dir / "tiny-stereo")


@pytest.fixture(scope="session")
def tiny_model(settings, tiny_folder):
    from musicgen_server.models import load_model

    return load_model("tiny", settings)


@pytest.fixture(scope="session")
def tiny_stereo_model(settings, tiny_stereo_folder):
    from musicgen_server.models import load_model

    return load_model("tiny-stereo", settings)


@pytest.fixture
def start_server(tmp_path, tiny_folder):
    """Start real `musicgen serve` processes (tiny model, free port, private data dir); all are
    stopped at the end of the test. `start_server(env={...})` or `start_server(path, env={...})`;
    see `support.start_server` and `support.ServerProcess`."""
    import support

    servers = []

    def start(path: Path | None = None, env: dict | None = None, **options):
        folder = path or tmp_path / f"server-{len(servers) + 1}"
        folder.mkdir(parents=True, exist_ok=True)
        server = support.start_server(folder, env, tiny_folder=tiny_folder, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
