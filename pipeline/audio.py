"""Audio: the log-mel of a waveform (torchaudio), and mixtures of clips.

The log-mel settings travel with the data (`data/features/<ds>/summary.json`, key `logmel`) so that
every later stage that mixes waveforms (synth, stage 1) computes the mixture's log-mel exactly as the
single clips' one was computed: `LogMel(**read_logmel_settings(features_dir))`.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torchaudio
from scipy.signal import lfilter

from pipeline.stage import StageError


class LogMel(torch.nn.Module):
    """int16 or float waveforms (batch, samples) -> log-mel in dB (batch, n_mels, n_frames).

    16 kHz, 64 mels up to 8 kHz, DSOL's 160-sample window and 80-sample hop
    (201 frames per second), zero-padded to n_fft so that no mel filter is empty.
    A clip's log-mel does not depend on the clips it is batched with.
    """

    def __init__(self, sample_rate: int, n_mels: int, f_max: float, win_length: int,
                 hop_length: int, n_fft: int, top_db: float):
        super().__init__()
        self.settings = dict(sample_rate=sample_rate, n_mels=n_mels, f_max=f_max, win_length=win_length,
                             hop_length=hop_length, n_fft=n_fft, top_db=top_db)
        # the complex STFT; its power is taken below as re^2 + im^2, which costs half of torchaudio's
        # |X|.pow(2) (a hypot, then a square) and differs from it by rounding only
        self.spectrogram = torchaudio.transforms.Spectrogram(
            n_fft=n_fft, win_length=win_length, hop_length=hop_length, power=None)
        self.mel_scale = torchaudio.transforms.MelScale(
            n_mels=n_mels, sample_rate=sample_rate, f_min=0.0, f_max=f_max, n_stft=n_fft // 2 + 1)
        self.to_db = torchaudio.transforms.AmplitudeToDB(stype="power", top_db=top_db)

    def forward(self, waveform: torch.Tensor | np.ndarray) -> torch.Tensor:
        waveform = torch.as_tensor(waveform)
        if waveform.dtype == torch.int16:
            waveform = waveform.float() / 32768.0
        squeeze = waveform.dim() == 1
        if squeeze:
            waveform = waveform[None]
        spectrum = self.spectrogram(waveform.float())
        power = self.mel_scale(spectrum.real.square() + spectrum.imag.square())
        # AmplitudeToDB's top_db clamps against the max of each (channel, freq, time) block:
        # a channel axis of 1 makes that block one clip, so a clip's floor ignores its batch.
        log_mel = self.to_db(power[:, None])[:, 0]
        return log_mel[0] if squeeze else log_mel


def logmel_shape(settings: Mapping, clip_samples: int) -> tuple[int, int]:
    """(n_mels, n_frames) of one clip: torch's centred STFT gives 1 + samples // hop frames."""
    return settings["n_mels"], 1 + clip_samples // settings["hop_length"]


def logmel_shape_of(logmel: LogMel, samples: int) -> tuple[int, int]:
    """(n_mels, n_frames) that `logmel` gives for a clip of `samples`, measured on silence."""
    with torch.no_grad():
        n_mels, n_frames = logmel(torch.zeros(1, samples)).shape[1:]
    return int(n_mels), int(n_frames)


def read_logmel_settings(features_dir: str | Path) -> dict:
    """The `LogMel` kwargs the features were computed with (`summary.json`, key `logmel`)."""
    path = Path(features_dir) / "summary.json"
    try:
        settings = json.loads(path.read_text())["logmel"]
    except FileNotFoundError:
        raise StageError(f"{path}: not found (run the features stage first)") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise StageError(f"{path}: no key `logmel` with the LogMel settings") from None
    try:
        LogMel(**settings)
    except TypeError as err:
        raise StageError(f"{path}: logmel: {err}") from None
    return settings


def mixture_logmels(waveforms: torch.Tensor, plan: np.ndarray, logmel: LogMel) -> torch.Tensor:
    """The log-mel of each planned mixture: the average of its members' int16 waveforms.

    waveforms (N, samples) int16; plan (M, members) indices into them -> (M, n_mels, n_frames).
    """
    members_waveforms = waveforms[torch.from_numpy(plan)].float() / 32768.0  # (M, members, samples)
    with torch.no_grad():
        return logmel(members_waveforms.mean(dim=1))


def no_source_logmels(count: int, samples: int, dbfs_range: tuple[float, float], logmel: LogMel,
                      rng: np.random.Generator) -> torch.Tensor:
    """The log-mels of `count` inputs in which nothing sounds: Gaussian noise coloured by a one-pole low-pass
    (coefficient uniform in [0, 0.99): white to nearly brown), scaled to an RMS level uniform in `dbfs_range`
    dBFS. Float waveforms, not int16: near -100 dBFS a quantised one would be digital silence.
    -> (count, n_mels, n_frames)."""
    if count == 0:
        return torch.zeros(0, *logmel_shape_of(logmel, samples))
    white = rng.standard_normal((count, samples))
    pole = rng.uniform(0.0, 0.99, count)
    coloured = np.stack([lfilter([1.0], [1.0, -coefficient], row) for coefficient, row in zip(pole, white)])
    level = 10.0 ** (rng.uniform(*dbfs_range, count) / 20.0)
    coloured *= (level / np.sqrt((coloured ** 2).mean(axis=1)))[:, None]
    with torch.no_grad():
        return logmel(torch.from_numpy(coloured).float())
