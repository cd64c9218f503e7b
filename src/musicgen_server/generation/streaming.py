"""Incremental encoders for streamed audio: float chunks in, bytes for an HTTP response out.

An engine's `handle.chunks()` yields float32 audio (channels, frames) as it is generated; these
encoders turn each chunk into the bytes that can be sent at once:

* `wav`: a RIFF/WAVE header, then 16-bit PCM. The final length is known from the requested
  duration, so the header carries the exact sizes and the streamed bytes are a complete, valid
  file; with no length given it carries 0xFFFFFFFF, the usual "unknown size" of streamed WAV.
* `pcm`: raw interleaved signed 16-bit little-endian samples, no header.
* `ogg`: Ogg Vorbis, encoded by libsndfile into a buffer that is drained as pages are produced.

A stream cannot rescale audio it has already sent, so samples beyond full scale are clipped to
[-1, 1] (the file writers in `audio.py` scale the whole clip down instead). Float-to-integer
conversion is the one libsndfile applies when it writes 16-bit files (floor(x * 32768), held
within [-32768, 32767]), so a streamed WAV has exactly the samples of one written by
`audio.encode` for audio within full scale.

    encoder = stream_encoder("wav", sample_rate, channels, total_samples=clip_samples)
    for data in encode_stream(handle.chunks(), encoder):
        send(data)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

import numpy as np
import soundfile as sf

from musicgen_server.errors import InvalidRequestError

STREAM_FORMATS = ("wav", "pcm", "ogg")
_UNKNOWN = 0xFFFFFFFF


def _pcm16(chunk: np.ndarray, channels: int) -> bytes:
    audio = np.asarray(chunk, dtype=np.float32)
    if audio.ndim == 1:
        audio = audio[np.newaxis, :]
    if audio.shape[0] != channels:
        raise ValueError(f"chunk has {audio.shape[0]} channels, the stream {channels}")
    scaled = np.floor(np.clip(audio, -1.0, 1.0).astype(np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).T.astype("<i2").tobytes()


class PcmStream:
    """Raw signed 16-bit little-endian PCM, channels interleaved."""

    format = "pcm"

    def __init__(self, sample_rate: int, channels: int, total_samples: int | None = None):
        self.sample_rate = sample_rate
        self.channels = channels
        self.total_samples = total_samples
        self.samples_written = 0

    @property
    def media_type(self) -> str:
        return "application/octet-stream"

    @property
    def headers(self) -> dict[str, str]:
        """How to read the bytes, for clients of a raw stream."""
        return {
            "X-Audio-Format": "s16le",
            "X-Audio-Sample-Rate": str(self.sample_rate),
            "X-Audio-Channels": str(self.channels),
        }

    def start(self) -> bytes:
        return b""

    def encode(self, chunk: np.ndarray) -> bytes:
        data = _pcm16(chunk, self.channels)
        self.samples_written += len(data) // (2 * self.channels)
        return data

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        """Drop the stream (the client went away); nothing more is sent."""


class WavStream(PcmStream):
    """16-bit PCM WAV whose header is sent before any audio."""

    format = "wav"

    @property
    def media_type(self) -> str:
        return "audio/wav"

    @property
    def headers(self) -> dict[str, str]:
        return {}

    def start(self) -> bytes:
        block = 2 * self.channels
        if self.total_samples is None:
            data_size = riff_size = _UNKNOWN
        else:
            data_size = self.total_samples * block
            riff_size = 36 + data_size
            if riff_size > _UNKNOWN:
                data_size = riff_size = _UNKNOWN
        return (
            b"RIFF"
            + struct.pack("<I", riff_size)
            + b"WAVEfmt "
            + struct.pack(
                "<IHHIIHH", 16, 1, self.channels, self.sample_rate, self.sample_rate * block, block, 16
            )
            + b"data"
            + struct.pack("<I", data_size)
        )

    def finish(self) -> bytes:
        """A stream cut short (fewer samples than announced) is padded with silence so the file
        stays valid; one that ran long has said more than its header: that is a caller error."""
        if self.total_samples is None:
            return b""
        missing = self.total_samples - self.samples_written
        if missing < 0:
            raise ValueError(f"{self.samples_written} samples streamed, {self.total_samples} announced")
        self.samples_written += missing
        return bytes(2 * self.channels * missing)


class _DrainBuffer:
    """A write-only file for libsndfile that hands over what was written so far."""

    def __init__(self):
        self._pending = bytearray()
        self._size = 0
        self._position = 0

    def write(self, data) -> int:
        if self._position != self._size:
            raise OSError("the stream only appends")
        self._pending += bytes(data)
        self._size += len(data)
        self._position = self._size
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        target = {0: offset, 1: self._position + offset, 2: self._size + offset}[whence]
        if target != self._size:
            raise OSError("the stream only appends")
        self._position = target
        return target

    def tell(self) -> int:
        return self._position

    def read(self, size: int = -1) -> bytes:
        return b""

    def drain(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data


class OggStream:
    """Ogg Vorbis pages as libsndfile produces them."""

    format = "ogg"
    media_type = "audio/ogg"

    def __init__(self, sample_rate: int, channels: int, total_samples: int | None = None):
        self.sample_rate = sample_rate
        self.channels = channels
        self.total_samples = total_samples
        self.samples_written = 0
        self.headers: dict[str, str] = {}
        self._buffer = _DrainBuffer()
        self._file = sf.SoundFile(self._buffer, "w", sample_rate, channels, "VORBIS", format="OGG")

    def start(self) -> bytes:
        return self._buffer.drain()

    def encode(self, chunk: np.ndarray) -> bytes:
        audio = np.asarray(chunk, dtype=np.float32)
        if audio.ndim == 1:
            audio = audio[np.newaxis, :]
        if audio.shape[0] != self.channels:
            raise ValueError(f"chunk has {audio.shape[0]} channels, the stream {self.channels}")
        self._file.write(np.clip(audio, -1.0, 1.0).T)
        self.samples_written += audio.shape[1]
        return self._buffer.drain()

    def finish(self) -> bytes:
        self._file.close()
        return self._buffer.drain()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._buffer.drain()


StreamEncoder = PcmStream | WavStream | OggStream


def stream_encoder(
    fmt: str, sample_rate: int, channels: int, total_samples: int | None = None
) -> StreamEncoder:
    """An encoder for `wav`, `pcm` or `ogg`; `total_samples` (per channel) makes the WAV header
    exact."""
    name = fmt.lower().lstrip(".")
    if name == "wav":
        return WavStream(sample_rate, channels, total_samples)
    if name in ("pcm", "raw", "s16le"):
        return PcmStream(sample_rate, channels, total_samples)
    if name in ("ogg", "vorbis"):
        return OggStream(sample_rate, channels, total_samples)
    raise InvalidRequestError(f"cannot stream '{fmt}': choose one of {', '.join(STREAM_FORMATS)}")


def encode_stream(chunks: Iterable[np.ndarray], encoder: StreamEncoder) -> Iterator[bytes]:
    """The bytes of a whole stream, each piece as soon as it can be sent (empty pieces are
    skipped)."""
    finished = False
    try:
        head = encoder.start()
        if head:
            yield head
        for chunk in chunks:
            data = encoder.encode(chunk)
            if data:
                yield data
        tail = encoder.finish()
        finished = True
        if tail:
            yield tail
    finally:
        if not finished:
            encoder.close()
