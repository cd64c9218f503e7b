"""EnCodec decoding, whole clips and streamed in chunks while the codes are generated.

EnCodec's decoder (32 kHz, as in every MusicGen checkpoint) is: the quantizer's codebook lookup
(per frame), a non-causal convolution (kernel 7: 3 frames each side, reflect-padded at the clip's
ends), a unidirectional LSTM with a residual connection, then upsampling convolutions with a few
frames of receptive field each side. A windowed decode with left context would have to replay
the LSTM for a long stretch to forget its start state (its memory depends on the weights), so the
stream decodes in the model's own order instead:

* `conv1` on exactly the frames whose 7-frame neighbourhood is available, windows cut so every
  kept output sees true neighbours (or the clip's real end, where the one-shot decode reflects);
* the LSTM over those frames with its state carried from the previous chunk: the same recurrence
  as over the whole clip;
* the upsampling stack on the LSTM outputs with `UPSAMPLE_CONTEXT` frames of context each side,
  keeping only the samples whose receptive field lies inside the window.

So the joined chunks equal the one-shot decode up to float rounding (differently sized
convolutions and matrix products): the largest difference measured on musicgen-small's codec
(random weights, 237 frames) is 1e-7 for audio of RMS 3e-2, on tiny 1.2e-7; the tests assert
1e-5 on tiny and tiny-stereo.

Chunks: the first after `FIRST_CHUNK_FRAMES` frames (0.5 s: first audio comes quickly), then
every `CHUNK_FRAMES` frames (1 s: fewer, larger decodes); the last chunk when the clip is done,
trimmed so the chunks join to exactly the requested number of samples.
"""

from __future__ import annotations

import numpy as np
import torch

# Chunk sizes in codec frames (50 per second).
FIRST_CHUNK_FRAMES = 25
CHUNK_FRAMES = 50
# Frames of context each side of an upsampling window. The stack's receptive field is under two
# frames each side (a transposed convolution with kernel 2*stride reaches one input sample each
# way, a kernel-3 residual convolution one, the final kernel-7 convolution three samples). The
# error against the one-shot decode measured on musicgen-small's codec: 3e-2 with no context,
# 1e-7 (float rounding) from 1 frame on; 2 keeps a frame of margin.
UPSAMPLE_CONTEXT = 2


def decode(model, codes: torch.Tensor) -> np.ndarray:
    """One-shot decode of a whole clip, (codebooks, frames) -> float32 (channels, samples), as
    transformers' generate() decodes it (stereo: even codebooks left, odd right)."""
    codec = model.model.audio_encoder
    with torch.inference_mode():
        codes = codes.to(model.device)
        if model.channels == 1:
            audio = codec.decode(codes[None, None], [None]).audio_values[0]
        else:
            left = codec.decode(codes[None, None, 0::2], [None]).audio_values[0]
            right = codec.decode(codes[None, None, 1::2], [None]).audio_values[0]
            audio = torch.cat([left, right], dim=0)
    return audio.float().cpu().numpy()


def streamable(codec) -> bool:
    """Whether the codec decoder has EnCodec's layout: a convolution, the LSTM, then the
    upsampling stack (every MusicGen checkpoint)."""
    layers = list(codec.decoder.layers)
    return (
        len(layers) > 2
        and type(layers[0]).__name__ == "EncodecConv1d"
        and type(layers[1]).__name__ == "EncodecLSTM"
        and not getattr(layers[0], "causal", False)
        and int(layers[0].stride) == 1
    )


class _Channel:
    """The stream state of one audio channel: LSTM state and the LSTM outputs so far."""

    def __init__(self, hidden: int, frames: int, device, dtype):
        self.state: tuple[torch.Tensor, torch.Tensor] | None = None
        self.lstm_out = torch.zeros((1, hidden, frames), dtype=dtype, device=device)


class StreamDecoder:
    """Turns the codes of one request, as their frames complete, into audio chunks."""

    def __init__(
        self, model, frames: int, samples: int, *, first: int = FIRST_CHUNK_FRAMES, every: int = CHUNK_FRAMES
    ):
        codec = model.model.audio_encoder
        self.model = model
        self.codec = codec
        self.frames = frames
        self.samples = samples
        self.hop = model.hop_length
        self.first = first
        self.every = every
        self.streaming = streamable(codec)
        self.emitted_frames = 0
        self.emitted_samples = 0
        self.computed = 0  # LSTM outputs are exact for frames [0, computed)
        if self.streaming:
            conv = codec.decoder.layers[0]
            total = int(conv.padding_total)
            self.conv_right = total // 2
            self.conv_left = total - self.conv_right
            hidden = conv.conv.out_channels
            dtype = next(codec.parameters()).dtype
            self.channels = [_Channel(hidden, frames, model.device, dtype) for _ in range(model.channels)]

    @property
    def done(self) -> bool:
        return self.emitted_samples >= self.samples

    def push(self, codes_for, available: int) -> np.ndarray | None:
        """Audio for the frames that became decodable, if a chunk is due. `codes_for(start, end)`
        returns frames [start, end) as (codebooks, n); `available` frames are complete (all of
        them: the clip is done)."""
        final = available >= self.frames
        if self.done:
            return None
        if not self.streaming:
            return self._trim(decode(self.model, codes_for(0, self.frames))) if final else None
        if final:
            target = self.frames
        else:
            target = available - self.conv_right - UPSAMPLE_CONTEXT
            due = self.first if self.emitted_frames == 0 else self.every
            if target - self.emitted_frames < due:
                return None
        with torch.inference_mode():
            lstm_end = self.frames if final else available - self.conv_right
            self._advance_lstm(codes_for, lstm_end)
            audio = self._upsample(self.emitted_frames, target)
        self.emitted_frames = target
        return self._trim(audio)

    def _trim(self, audio: np.ndarray) -> np.ndarray | None:
        keep = min(audio.shape[1], self.samples - self.emitted_samples)
        self.emitted_samples += keep
        return np.ascontiguousarray(audio[:, :keep], dtype=np.float32) if keep > 0 else None

    def _advance_lstm(self, codes_for, end: int) -> None:
        start = self.computed
        if end <= start:
            return
        window_start = max(0, start - self.conv_left)
        window_end = min(self.frames, end + self.conv_right)
        codes = codes_for(window_start, window_end)
        layers = self.codec.decoder.layers
        conv, lstm = layers[0], layers[1]
        channels = len(self.channels)
        for index, channel in enumerate(self.channels):
            channel_codes = codes[index::channels] if channels > 1 else codes
            embeddings = self.codec.quantizer.decode(channel_codes.unsqueeze(1))  # (1, D, n)
            hidden = conv(embeddings)[..., start - window_start : end - window_start]
            steps = hidden.permute(2, 0, 1)  # (n, 1, D), as EncodecLSTM feeds nn.LSTM
            out, channel.state = lstm.lstm(steps, channel.state)
            channel.lstm_out[..., start:end] = (out + steps).permute(1, 2, 0)
        self.computed = end

    def _upsample(self, start: int, end: int) -> np.ndarray:
        window_start = max(0, start - UPSAMPLE_CONTEXT)
        window_end = self.frames if end >= self.frames else min(self.computed, end + UPSAMPLE_CONTEXT)
        stack = list(self.codec.decoder.layers)[2:]
        pieces = []
        for channel in self.channels:
            hidden = channel.lstm_out[..., window_start:window_end]
            for layer in stack:
                hidden = layer(hidden)
            first = (start - window_start) * self.hop
            pieces.append(hidden[0, :, first : first + (end - start) * self.hop])
        return torch.cat(pieces, dim=0).float().cpu().numpy()
