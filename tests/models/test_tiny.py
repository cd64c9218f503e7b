"""The tiny models: the real MusicGen architecture, built offline, the same on every machine,
saved and loaded exactly like a downloaded checkpoint."""

from __future__ import annotations

import hashlib
import json
import threading

import torch
from transformers import MusicgenForConditionalGeneration, MusicgenProcessor

from musicgen_server.models import tiny


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_tiny_is_a_saved_pretrained_checkpoint(tiny_folder):
    names = {path.name for path in tiny_folder.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"processor_config.json", tiny.STAMP_FILE} <= names
    stamp = json.loads((tiny_folder / tiny.STAMP_FILE).read_text())
    assert stamp["trained"] is False and "noise" in stamp["note"]


def test_tiny_has_musicgens_architecture(tiny_folder):
    model = MusicgenForConditionalGeneration.from_pretrained(tiny_folder)
    config = model.config
    assert config.text_encoder.model_type == "t5"
    assert config.audio_encoder.model_type == "encodec"
    assert config.audio_encoder.sampling_rate == 32000
    assert config.audio_encoder.frame_rate == 50
    assert config.audio_encoder.codebook_size == 2048
    assert config.decoder.num_codebooks == 4 and config.decoder.audio_channels == 1
    assert model.generation_config.guidance_scale == 3.0 and model.generation_config.top_k == 250
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_tiny_stereo_has_eight_interleaved_codebooks(tiny_stereo_folder):
    config = MusicgenForConditionalGeneration.from_pretrained(tiny_stereo_folder).config
    assert config.decoder.num_codebooks == 8 and config.decoder.audio_channels == 2


def test_tiny_tokenizer_is_a_real_t5_tokenizer(tiny_folder):
    processor = MusicgenProcessor.from_pretrained(tiny_folder)
    tokens = processor.tokenizer("calm piano with rain").input_ids
    pieces = processor.tokenizer.convert_ids_to_tokens(tokens)
    assert pieces == ["\u2581calm", "\u2581piano", "\u2581with", "\u2581rain", "</s>"]
    # Words outside the vocabulary still tokenize (by characters), never to <unk> only.
    odd = processor.tokenizer("Zyxwv!").input_ids
    assert processor.tokenizer.unk_token_id not in odd and len(odd) > 2
    batch = processor(text=["a", "calm piano"], padding=True, return_tensors="pt")
    assert batch.attention_mask.tolist()[0][-1] == 0  # padded like any T5 batch


def test_building_is_deterministic_and_leaves_global_rng_alone(tmp_path, tiny_folder):
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    again = tiny.build_tiny("tiny", tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected_next)
    assert digest(again) == digest(tiny_folder)


def test_concurrent_builds_agree(tmp_path):
    target = tmp_path / "race" / "tiny"
    errors: list[BaseException] = []

    def build():
        try:
            tiny.build_tiny("tiny", target)
        except BaseException as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert tiny.is_built(target)
    assert [p.name for p in target.parent.iterdir()] == ["tiny"]  # no scratch folders left


def test_a_stale_build_is_rebuilt(tmp_path):
    target = tiny.build_tiny("tiny", tmp_path / "tiny")
    stamp = target / tiny.STAMP_FILE
    stamp.write_text(json.dumps({"recipe": tiny.RECIPE_VERSION - 1}))
    assert not tiny.is_built(target)
    tiny.build_tiny("tiny", target)
    assert json.loads(stamp.read_text())["recipe"] == tiny.RECIPE_VERSION
