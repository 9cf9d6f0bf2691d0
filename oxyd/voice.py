"""Voice notes: any audio in, Ogg/Opus mono out, with duration and waveform (as WhatsApp
shows a push-to-talk message). PyAV bundles FFmpeg in its wheel, so no ffmpeg binary has to
be on PATH (neonize's own audio builders need one, and most servers lack it).

CPU-bound: call it in a thread.
"""

from __future__ import annotations

import io
from array import array
from dataclasses import dataclass

import av

MIME = "audio/ogg; codecs=opus"
RATE_HZ = 48_000
BITRATE = 32_000
WAVEFORM_POINTS = 64
MAX_DURATION_S = 30 * 60


class NotAudio(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class VoiceNote:
    data: bytes
    duration_s: int
    waveform: bytes  # WAVEFORM_POINTS values 0..100


def to_voice_note(data: bytes) -> VoiceNote:
    try:
        src = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as e:
        raise NotAudio(_short(e)) from None
    samples = array("h")
    buf = io.BytesIO()
    try:
        with src:
            if not src.streams.audio:
                raise NotAudio("no audio stream")
            dst = av.open(buf, mode="w", format="ogg")
            with dst:
                stream = dst.add_stream("libopus", rate=RATE_HZ, layout="mono")
                stream.bit_rate = BITRATE
                to_mono = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
                for frame in src.decode(src.streams.audio[0]):
                    for mono in to_mono.resample(frame):
                        _take(samples, mono)
                        dst.mux(stream.encode(mono))
                    if len(samples) > MAX_DURATION_S * RATE_HZ:
                        raise NotAudio(f"longer than {MAX_DURATION_S} s")
                for mono in to_mono.resample(None):
                    _take(samples, mono)
                    dst.mux(stream.encode(mono))
                dst.mux(stream.encode(None))
    except av.FFmpegError as e:
        raise NotAudio(_short(e)) from None
    if not samples:
        raise NotAudio("no audio samples")
    return VoiceNote(buf.getvalue(), max(1, round(len(samples) / RATE_HZ)), _waveform(samples))


def _take(samples: array, frame: av.AudioFrame) -> None:
    chunk = array("h")
    chunk.frombytes(bytes(frame.planes[0])[: frame.samples * 2])
    samples.extend(chunk)


def _waveform(samples: array) -> bytes:
    """Peak level per slice, scaled to 0..100 against the loudest slice."""
    step = max(1, len(samples) // WAVEFORM_POINTS)
    peaks = []
    for i in range(WAVEFORM_POINTS):
        part = samples[i * step : (i + 1) * step]
        peaks.append(max(max(part), -min(part)) if part else 0)
    top = max(peaks) or 1
    return bytes(min(100, p * 100 // top) for p in peaks)


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
