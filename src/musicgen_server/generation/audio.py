"""Turning float audio into files people can play, and reading them back.

Everything goes through libsndfile (via soundfile), so the service needs no ffmpeg. Arrays are
float32 shaped (channels, frames), the layout the model produces; a 1-D array is taken as mono.

Clips are promised exact to the sample, in every format. With libsndfile 1.2.2 that holds even
for the lossy ones: Vorbis carries the length in its granule positions, and for MP3 LAME writes a
Xing/LAME tag with the encoder delay (576) and padding that libsndfile's mpg123 decoder uses to
trim them again. A decoder that ignores the LAME tag would return 1105 extra leading samples
(576 encoder + 529 decoder delay) and the padding at the end; that is the decoder's doing, not
the file's.

Lossy decoders can overshoot the written peak (a full-scale square wave at 32 kHz came back at
+2.8 dBFS from MP3 and +1.7 dBFS from Vorbis). `encode` only guarantees what it hands the encoder stays within
full scale; `normalize` with its default -1 dBFS ceiling is the headroom for lossy formats.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from musicgen_server.errors import InvalidRequestError

# Keys libsndfile can store at all; which of them survive depends on the container.
_ALL_TAG_KEYS = frozenset(
    {
        "title",
        "artist",
        "album",
        "comment",
        "genre",
        "date",
        "software",
        "copyright",
        "tracknumber",
        "license",
    }
)


@dataclass(frozen=True)
class AudioFormat:
    """One output format: how it is named on the wire and how libsndfile writes it.

    `tag_keys` are the metadata keys that read back from a file in this format; others are
    dropped silently. `tag_limit` is the longest value (UTF-8 bytes) that can be stored without
    losing the tags: libsndfile 1.2.2 writes longer WAV INFO strings but then fails to parse the
    whole LIST chunk, so one long prompt would wipe every tag.
    """

    name: str
    extension: str
    media_type: str
    sf_format: str
    subtype: str
    tag_keys: frozenset[str] = _ALL_TAG_KEYS
    tag_limit: int | None = None


FORMATS: dict[str, AudioFormat] = {
    # RIFF INFO has no licence field.
    "wav": AudioFormat("wav", ".wav", "audio/wav", "WAV", "PCM_16", _ALL_TAG_KEYS - {"license"}, 2000),
    "flac": AudioFormat("flac", ".flac", "audio/flac", "FLAC", "PCM_16"),
    "ogg": AudioFormat("ogg", ".ogg", "audio/ogg", "OGG", "VORBIS"),
    # Tags are written by our own ID3v2.4 tag (see _id3v2_tag); ID3 has no licence text frame.
    "mp3": AudioFormat("mp3", ".mp3", "audio/mpeg", "MP3", "MPEG_LAYER_III", _ALL_TAG_KEYS - {"license"}),
}

NORMALIZE_MODES = ("none", "peak", "loudness")

# MPEG-1/2/2.5 layer III knows only these rates; checked first so the message can list them.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# BS.1770 integrated loudness is gated over 400 ms blocks; shorter audio has no measurement.
_GATE_SECONDS = 0.4
# pyloudnorm only has channel weights for up to five channels.
_MAX_LOUDNESS_CHANNELS = 5
# More channels than this is almost surely a (frames, channels) array passed the wrong way round.
_MAX_CHANNELS = 8

_ID3_FRAMES = {
    "title": "TIT2",
    "artist": "TPE1",
    "album": "TALB",
    "comment": "COMM",
    "software": "TSSE",
    "date": "TDRC",
    "genre": "TCON",
    "copyright": "TCOP",
    "tracknumber": "TRCK",
}


def get_format(name: str) -> AudioFormat:
    """One message for a bad format everywhere (CLI flag, API field, file suffix)."""
    fmt = FORMATS.get(str(name).strip().lower().lstrip("."))
    if fmt is None:
        raise InvalidRequestError(f"format {name!r} is not one of {', '.join(FORMATS)}")
    return fmt


# ---------------------------------------------------------------------------------------------
# Levels


def normalize(
    samples: np.ndarray,
    sample_rate: int,
    mode: str = "none",
    *,
    target_lufs: float = -14.0,
    peak_dbfs: float = -1.0,
) -> np.ndarray:
    """Bring a clip to a predictable level before it is encoded.

    "peak" puts the sample peak at `peak_dbfs`. "loudness" aims at `target_lufs` integrated
    loudness (ITU-R BS.1770), but the peak is a hard ceiling: when reaching the target would push
    the peak above `peak_dbfs`, the gain is reduced and the clip ends up quieter than the target.
    Never clipping wins over the target because clipped audio cannot be repaired later, while a
    quiet clip can.

    Audio the loudness meter cannot measure (shorter than one 400 ms gating block, or gated away
    entirely, e.g. silence, so its loudness is -inf) is not amplified from a guess; it is only made
    peak-safe: attenuated to the ceiling if it is above it, otherwise returned unchanged.
    """
    _check_mode(mode)
    if mode == "none":
        return samples
    _check_levels(target_lufs, peak_dbfs)
    audio = _as_audio(samples)
    peak = _peak(audio)
    if peak == 0.0:
        return audio
    ceiling_gain = _db_to_gain(peak_dbfs) / peak
    if mode == "peak":
        return _apply_gain(audio, ceiling_gain)
    wanted = _loudness_gain(audio, sample_rate, target_lufs)
    if wanted is None:
        wanted = 1.0
    return _apply_gain(audio, min(wanted, ceiling_gain))


def _check_mode(mode: str) -> None:
    if mode not in NORMALIZE_MODES:
        raise InvalidRequestError(f"normalize mode {mode!r} is not one of {', '.join(NORMALIZE_MODES)}")


def _check_levels(target_lufs: float, peak_dbfs: float) -> None:
    """A ceiling above full scale would ask for the clipping this module exists to prevent."""
    if not (math.isfinite(peak_dbfs) and peak_dbfs <= 0.0):
        raise InvalidRequestError(f"peak_dbfs must be a number <= 0, got {peak_dbfs}")
    if not (math.isfinite(target_lufs) and target_lufs <= 0.0):
        raise InvalidRequestError(f"target_lufs must be a number <= 0, got {target_lufs}")


def _loudness_gain(audio: np.ndarray, sample_rate: int, target_lufs: float) -> float | None:
    """None when the clip has no meaningful integrated loudness (see `normalize`)."""
    if audio.shape[1] < _GATE_SECONDS * sample_rate or audio.shape[0] > _MAX_LOUDNESS_CHANNELS:
        return None
    import pyloudnorm  # scipy behind it takes most of a second to import: only when needed

    meter = pyloudnorm.Meter(sample_rate)
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # log10(0) for fully gated audio; -inf is handled below
        lufs = meter.integrated_loudness(audio.T.astype(np.float64))
    if not math.isfinite(lufs):
        return None
    return _db_to_gain(target_lufs - lufs)


def _db_to_gain(db: float) -> float:
    return 10.0 ** (db / 20.0)


def _peak(audio: np.ndarray) -> float:
    return float(np.max(np.abs(audio))) if audio.size else 0.0


def _apply_gain(audio: np.ndarray, gain: float) -> np.ndarray:
    return (audio * np.float32(gain)).astype(np.float32, copy=False)


def _as_audio(samples: np.ndarray) -> np.ndarray:
    """Validated float32 (channels, frames); NaN/inf are refused because no gain can fix them."""
    audio = np.asarray(samples, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    if audio.ndim != 2 or not 1 <= audio.shape[0] <= _MAX_CHANNELS:
        raise InvalidRequestError(
            f"audio must be shaped (channels, frames) with 1 to {_MAX_CHANNELS} channels, got {audio.shape}"
        )
    if not np.isfinite(audio).all():
        raise InvalidRequestError("audio contains NaN or infinite samples")
    return audio


def _within_full_scale(audio: np.ndarray) -> np.ndarray:
    """Scale (never clip) audio whose peak is above 1.0. Dividing by the peak itself is exact in
    IEEE arithmetic, so the loudest sample lands on exactly 1.0 and none goes above."""
    peak = np.float32(_peak(audio))
    return audio / peak if peak > 1.0 else audio


# ---------------------------------------------------------------------------------------------
# Encoding and writing


def encode(
    samples: np.ndarray, sample_rate: int, fmt: str = "wav", *, tags: dict[str, str] | None = None
) -> bytes:
    """The whole file as bytes, so callers can stream it or write it atomically."""
    spec = get_format(fmt)
    audio = _within_full_scale(_as_audio(samples))
    _check_encodable(spec, audio, sample_rate)
    clean = _clean_tags(spec, tags)
    buffer = io.BytesIO()
    try:
        channels = audio.shape[0]
        with sf.SoundFile(buffer, "w", sample_rate, channels, spec.subtype, format=spec.sf_format) as out:
            if spec.name != "mp3":
                _set_tags(out, clean)
            out.write(audio.T)
    except sf.LibsndfileError as err:
        raise InvalidRequestError(f"cannot encode {spec.name}: {err.error_string}") from err
    data = buffer.getvalue()
    return _id3v2_tag(clean) + data if spec.name == "mp3" else data


def _check_encodable(spec: AudioFormat, audio: np.ndarray, sample_rate: int) -> None:
    if audio.shape[1] == 0:
        raise InvalidRequestError("audio is empty")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InvalidRequestError(f"sample rate must be a positive integer, got {sample_rate!r}")
    if spec.name == "mp3" and sample_rate not in MP3_SAMPLE_RATES:
        rates = ", ".join(map(str, MP3_SAMPLE_RATES))
        raise InvalidRequestError(f"mp3 cannot store {sample_rate} Hz; it supports {rates}")
    if spec.name == "mp3" and audio.shape[0] > 2:
        raise InvalidRequestError(f"mp3 holds at most 2 channels, got {audio.shape[0]}")


def _clean_tags(spec: AudioFormat, tags: dict[str, str] | None) -> dict[str, str]:
    """Tags are a courtesy: what a format cannot hold is dropped rather than failing the clip.
    NUL would end the C string early, so it is removed; lone surrogates (which UTF-8 cannot
    encode) become "?"."""
    clean = {}
    for key, value in (tags or {}).items():
        key = str(key).lower()
        text = "" if value is None else str(value).replace("\x00", "")
        text = text.encode("utf-8", errors="replace").decode("utf-8")
        if key in spec.tag_keys and text:
            clean[key] = _truncate_utf8(text, spec.tag_limit)
    return clean


def _truncate_utf8(text: str, limit: int | None) -> str:
    if limit is None:
        return text
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _set_tags(out: sf.SoundFile, tags: dict[str, str]) -> None:
    """libsndfile appends " (libsndfile-<version>)" to "software" itself and caps it at 127 bytes."""
    for key, value in tags.items():
        try:
            setattr(out, key, value)
        except sf.SoundFileError:
            pass


def _id3v2_tag(tags: dict[str, str]) -> bytes:
    """An ID3v2.4 tag in UTF-8 (written by mutagen), put in front of the MP3 stream.

    libsndfile's own MP3 tagging goes through LAME, which stores our UTF-8 bytes in frames
    labelled Latin-1 (any non-ASCII prompt reads back as mojibake), falls back to ID3v1 (30
    characters) for short values, and replaces "software" with LAME's version string. A tag
    written separately avoids all three; libsndfile reads it back, and the LAME gapless header
    after it still works."""
    from mutagen import id3

    tag = id3.ID3()
    for key, text in tags.items():
        frame_id = _ID3_FRAMES.get(key)
        if frame_id == "COMM":
            tag.add(id3.COMM(encoding=id3.Encoding.UTF8, lang="eng", desc="", text=text))
        elif frame_id is not None:
            tag.add(getattr(id3, frame_id)(encoding=id3.Encoding.UTF8, text=text))
    if not tag:
        return b""
    buffer = io.BytesIO()
    tag.save(buffer, v2_version=4, padding=lambda info: 0)
    return buffer.getvalue()


def write(
    path: str | Path,
    samples: np.ndarray,
    sample_rate: int,
    fmt: str | None = None,
    *,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write a file atomically: readers (the HTTP server, a user's player) see either no file or a
    complete one, never a half-written one, even if the process dies mid-write. The temporary
    file sits in the same folder because os.replace is only atomic within one filesystem."""
    target = Path(path)
    spec = _format_for_path(target) if fmt is None else get_format(fmt)
    data = encode(samples, sample_rate, spec.name, tags=tags)
    target.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(target, data)
    return target


def _format_for_path(path: Path) -> AudioFormat:
    for spec in FORMATS.values():
        if path.suffix.lower() == spec.extension:
            return spec
    raise InvalidRequestError(
        f"cannot tell the format from {path.name!r}; use a suffix or a format, one of {', '.join(FORMATS)}"
    )


def _replace_atomically(target: Path, data: bytes) -> None:
    # A dot-name is hidden from listings; O_EXCL with a random name never clobbers another writer.
    # Mode 0o666 lets the umask decide, so the result has the permissions of a normal file.
    temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def _fsync_folder(folder: Path) -> None:
    """Makes the rename itself durable; best effort, as not every platform can open a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Reading


def read(source: str | Path | bytes) -> tuple[np.ndarray, int]:
    """Decode any format libsndfile knows (detected from the content, not the name)."""
    with _open(source) as audio_file:
        data = audio_file.read(dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), audio_file.samplerate


def read_tags(source: str | Path | bytes) -> dict[str, str]:
    """Whatever text metadata libsndfile finds; keys as in `AudioFormat.tag_keys`."""
    with _open(source) as audio_file:
        return dict(audio_file.copy_metadata())


@contextmanager
def _open(source: str | Path | bytes) -> Iterator[sf.SoundFile]:
    """Content libsndfile cannot decode is the caller's to fix, hence InvalidRequestError; a
    missing path stays FileNotFoundError (libsndfile would only say "System error")."""
    is_data = isinstance(source, (bytes, bytearray, memoryview))
    with io.BytesIO(bytes(source)) if is_data else open(source, "rb") as handle:
        try:
            audio_file = sf.SoundFile(handle)
        except sf.LibsndfileError as err:
            raise InvalidRequestError(f"not a readable audio file: {err.error_string}") from err
        with audio_file:
            yield audio_file
