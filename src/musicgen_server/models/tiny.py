"""`tiny` and `tiny-stereo`: untrained MusicGen models of the real architecture, built offline.

They exist so that tests, CI and smoke runs exercise every real code path (T5 text encoder,
MusicGen decoder with the delay pattern and classifier-free guidance, EnCodec at 32 kHz with
4 codebooks at 50 frames a second) on a machine that cannot download Meta's weights. They are
written with `save_pretrained` and loaded back exactly like a downloaded checkpoint. Their
weights are random (seeded, so every machine builds the same model): the audio is noise.
"""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
from pathlib import Path

import torch

# Bump when the recipe below changes, so folders built by an older version are rebuilt.
RECIPE_VERSION = 2
STAMP_FILE = "musicgen_tiny.json"
VARIANTS = ("tiny", "tiny-stereo")

# A small real vocabulary: characters so any prompt tokenizes, and whole words for the common
# ones so prompts tokenize the way they would with T5's SentencePiece model.
_WORDS = """
music song track beat loop melody harmony rhythm groove tempo bpm drum drums kick snare hihat
cymbal percussion piano keys organ synth synthesizer pad lead bass bassline guitar acoustic
electric violin cello strings orchestra orchestral brass trumpet horn sax saxophone flute choir
vocal vocals voice ambient calm chill relaxing upbeat energetic happy sad dark epic cinematic
dramatic soft loud slow fast heavy light warm bright deep lofi lo-fi hip hop hiphop jazz blues
rock metal pop electronic edm house techno trance dubstep disco funk soul rnb reggae country
folk classical latin afrobeat trap drill garage dance game retro 8-bit 80s 90s vintage modern
rain night morning summer winter ocean forest city space dream with and the a of in on for
to from by at background intro outro solo
""".split()


def _vocab() -> list[tuple[str, float]]:
    """T5's layout: <pad>=0, </s>=1, <unk>=2, the pieces, then the 100 sentinel tokens."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    for word in _WORDS:
        pieces.append(("\u2581" + word, -3.0))
    for char in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        pieces.append(("\u2581" + char, -6.0))
        pieces.append((char, -5.0))
    seen: set[str] = set()
    unique = [(piece, score) for piece, score in pieces if not (piece in seen or seen.add(piece))]
    unique.extend((f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1))
    return unique


def _build_model(variant: str):
    from transformers import (
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    stereo = variant == "tiny-stereo"
    text = T5Config(
        vocab_size=len(_vocab()),
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="relu",
        is_encoder_decoder=False,
    )
    codec = encodec_32k_config(codebook_dim=16, hidden_size=16, num_filters=4, num_lstm_layers=1)
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        max_position_embeddings=2048,
        num_hidden_layers=2,
        ffn_dim=128,
        num_attention_heads=4,
        hidden_size=64,
        num_codebooks=8 if stereo else 4,
        audio_channels=2 if stereo else 1,
    )
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    # Seed a private RNG stream so the build is the same everywhere and leaves the caller's
    # global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234 if stereo else 1233)
        model = MusicgenForConditionalGeneration(config)
        fill_codebooks(model)
    model.generation_config = musicgen_generation_config()
    return model


def encodec_32k_config(**sizes):
    """EnCodec as in Meta's MusicGen checkpoints: 32 kHz, hop 8*5*4*4 = 640 samples (50 frames
    a second), four 2048-entry codebooks at 2.2 kbps; `sizes` sets the widths (filters, hidden
    size, codebook dimension, LSTM layers)."""
    from transformers import EncodecConfig

    return EncodecConfig(
        **{
            "audio_channels": 1,
            "sampling_rate": 32000,
            "chunk_length_s": None,
            "overlap": None,
            "codebook_size": 2048,
            "num_residual_layers": 1,
            "upsampling_ratios": [8, 5, 4, 4],
            "target_bandwidths": [2.2],
            "norm_type": "weight_norm",
            "normalize": False,
            "use_causal_conv": False,
            "pad_mode": "reflect",
            "trim_right_ratio": 1.0,
            "compress": 2,
            "dilation_growth_rate": 2,
            "kernel_size": 7,
            "last_kernel_size": 7,
            "residual_kernel_size": 3,
            "use_conv_shortcut": False,
            **sizes,
        }
    )


def musicgen_generation_config():
    """The generation settings Meta's checkpoints ship with."""
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=2048,
        decoder_start_token_id=2048,
        pad_token_id=2048,
        do_sample=True,
        guidance_scale=3.0,
        max_length=1500,
        top_k=250,
    )


def fill_codebooks(model) -> None:
    """EnCodec's codebooks start as zeros (a trained checkpoint overwrites them), which would make
    every code decode to the same sound. Random entries make the audio depend on the codes, as it
    does with real weights, so tests that compare audio compare something."""
    for layer in model.audio_encoder.quantizer.layers:
        codebook = layer.codebook
        entries = torch.randn_like(codebook.embed)
        codebook.embed.copy_(entries)
        codebook.embed_avg.copy_(entries)
        codebook.cluster_size.fill_(1.0)


def build_processor():
    from transformers import EncodecFeatureExtractor, MusicgenProcessor, T5Tokenizer

    tokenizer = T5Tokenizer(vocab=_vocab(), model_max_length=512)
    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=32000, padding_value=0.0)
    return MusicgenProcessor(feature_extractor=features, tokenizer=tokenizer)


def is_built(folder: Path) -> bool:
    stamp = folder / STAMP_FILE
    if not stamp.is_file() or not (folder / "config.json").is_file():
        return False
    try:
        return json.loads(stamp.read_text()).get("recipe") == RECIPE_VERSION
    except (OSError, ValueError):
        return False


def is_tiny_folder(folder: Path) -> bool:
    """Whether a model folder holds a tiny model (so listings can say its output is noise)."""
    return (Path(folder) / STAMP_FILE).is_file()


def build_tiny(variant: str, folder: Path) -> Path:
    """Write the tiny model to `folder` unless it is already there. Safe when several processes
    race: each builds in a private temporary folder and the first rename wins."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}")
    folder = Path(folder)
    if is_built(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        from musicgen_server.models.hf_logging import quiet_transformers

        with quiet_transformers():
            _build_model(variant).save_pretrained(scratch)
            build_processor().save_pretrained(scratch)
        stamp = {
            "variant": variant,
            "recipe": RECIPE_VERSION,
            "trained": False,
            "note": "untrained MusicGen built by musicgen-server: its output is noise",
        }
        (scratch / STAMP_FILE).write_text(json.dumps(stamp, indent=2))
        if folder.exists() and not is_built(folder):
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(scratch, folder)
        except OSError:
            if not is_built(folder):  # lost the race to a broken folder: surface it
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
