"""Model names: aliases, repo ids, folders and the clear refusal of anything else."""

from __future__ import annotations

import pytest

from musicgen_server.errors import UnknownModelError
from musicgen_server.models.registry import ALIASES, META_LICENSE, resolve


@pytest.mark.parametrize(
    ("alias", "repo", "channels"),
    [
        ("small", "facebook/musicgen-small", 1),
        ("medium", "facebook/musicgen-medium", 1),
        ("large", "facebook/musicgen-large", 1),
        ("melody", "facebook/musicgen-melody", 1),
        ("melody-large", "facebook/musicgen-melody-large", 1),
        ("stereo-small", "facebook/musicgen-stereo-small", 2),
        ("stereo-medium", "facebook/musicgen-stereo-medium", 2),
        ("stereo-large", "facebook/musicgen-stereo-large", 2),
        ("stereo-melody", "facebook/musicgen-stereo-melody", 2),
        ("stereo-melody-large", "facebook/musicgen-stereo-melody-large", 2),
    ],
)
def test_aliases_name_meta_checkpoints(alias, repo, channels):
    spec = resolve(alias)
    assert (spec.kind, spec.source, spec.channels, spec.license) == ("hub", repo, channels, META_LICENSE)
    assert resolve(repo) == spec  # the repo id is the same model, listed under its alias


def test_tiny_models_say_they_are_untrained():
    for name in ("tiny", "tiny-stereo"):
        spec = resolve(name)
        assert spec.kind == "tiny" and not spec.trained
        assert "noise" in spec.description


def test_any_repo_id_is_accepted():
    spec = resolve("someone/my-finetuned-musicgen")
    assert (spec.kind, spec.source) == ("hub", "someone/my-finetuned-musicgen")


def test_a_saved_folder_is_a_model(tiny_folder):
    spec = resolve(str(tiny_folder))
    assert (spec.kind, spec.source) == ("local", str(tiny_folder.resolve()))


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(UnknownModelError, match="no config.json"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("name", ["", "   ", "huge", "not a model", "../etc/passwd", "a/b/c"])
def test_unknown_names_are_refused_with_the_choices(name):
    with pytest.raises(UnknownModelError) as caught:
        resolve(name)
    message = str(caught.value)
    assert "small" in message or "empty" in message


def test_every_alias_resolves_to_itself():
    assert all(resolve(name).name == name for name in ALIASES)
