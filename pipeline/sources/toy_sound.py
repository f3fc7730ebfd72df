"""Sounds of the toy world: one recipe per class, background ambience, and the mix.

Instruments and the General MIDI sound effects (bird tweet, telephone ring,
helicopter, seashore, bells, the drum kit) are real samples: a short random
score is built with pretty_midi and rendered with the TimGM6mb soundfont that
pretty_midi ships (midirenderer). Classes General MIDI lacks (dog, car, siren,
cat, cow, train) are synthesised in numpy. Every recipe takes a numpy
Generator and a length in seconds and returns mono float64 audio at
SAMPLE_RATE with sound in every second of it; `render_sound` scales it to
unit RMS.
"""
from __future__ import annotations

import functools
import io
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import midirenderer
import numpy as np
import pretty_midi

SAMPLE_RATE = 16000  # what the clips stage keeps; the soundfont renders at 48 kHz
MIDI_RATE = 48000
MIDI_TAIL_S = 1.0  # score written past the end, so the cut falls mid-sound, not on a release

# Scales as semitone offsets from a root: melodies stay in key.
SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),
    "pentatonic": (0, 2, 4, 7, 9),
}


# --------------------------------------------------------------------------- soundfont rendering


@functools.cache
def soundfont_bytes() -> bytes:
    return (Path(pretty_midi.__file__).parent / "TimGM6mb.sf2").read_bytes()


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float
    end: float
    velocity: int


def render_notes(notes: list[Note], program: int, is_drum: bool, seconds: float, skip_s: float = 0.0) -> np.ndarray:
    """Render one instrument's notes with the soundfont; return `seconds` of 16 kHz mono from `skip_s` on."""
    total_s = skip_s + seconds + MIDI_TAIL_S
    score = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=120.0)
    instrument = pretty_midi.Instrument(program=program, is_drum=is_drum)
    for note in notes:
        if note.start < total_s:  # the renderer plays to the last event: nothing may run past the end
            velocity = int(np.clip(note.velocity, 1, 127))
            instrument.notes.append(pretty_midi.Note(velocity, int(note.pitch), float(note.start), float(min(note.end, total_s))))
    # A near-silent marker note fixes the score length, so the render always covers `total_s`.
    instrument.notes.append(pretty_midi.Note(1, 0 if is_drum else 21, total_s - 0.01, total_s))
    score.instruments.append(instrument)
    midi = io.BytesIO()
    score.write(midi)
    with wave.open(io.BytesIO(midirenderer.render_wave_from(soundfont_bytes(), midi.getvalue()))) as wav:
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), np.int16)
    if rate != MIDI_RATE:
        raise RuntimeError(f"midirenderer rendered at {rate} Hz, expected {MIDI_RATE}")
    stereo = pcm.reshape(-1, channels).astype(np.float64) / 32768.0
    mono = resample(stereo.mean(axis=1), MIDI_RATE, SAMPLE_RATE)
    start = int(round(skip_s * SAMPLE_RATE))
    return fit_length(mono[start:], seconds)


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by truncating (or zero-padding) the spectrum.

    The signal is zero-padded to whole 100-ms blocks of both rates: FFT sizes
    with large prime factors are many times slower.
    """
    block_in, block_out = rate_in // 10, rate_out // 10
    blocks = -(-len(signal) // block_in)
    spectrum = np.fft.rfft(np.pad(signal, (0, blocks * block_in - len(signal))))
    n_out = blocks * block_out
    resampled = np.fft.irfft(spectrum[: n_out // 2 + 1], n_out) * (block_out / block_in)
    return resampled[: int(round(len(signal) * rate_out / rate_in))]


def fit_length(signal: np.ndarray, seconds: float) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    return np.pad(signal[:n], (0, max(0, n - len(signal))))


def unit_rms(signal: np.ndarray) -> np.ndarray:
    rms = np.sqrt(np.mean(signal**2))
    if rms < 1e-9:
        raise ValueError("toy sound recipe produced silence")
    return signal / rms


# --------------------------------------------------------------------------- scores


def melody(
    rng: np.random.Generator,
    seconds: float,
    programs: tuple[int, ...],
    pitch_range: tuple[int, int],
    chords: bool = False,
    tempo: tuple[float, float] = (70.0, 150.0),
) -> np.ndarray:
    """A random in-key melody: a walk on the scale with varied note lengths and short rests.

    A rest lasts half a beat at most and never follows another rest, so every
    second has a note in it.
    """
    program = int(rng.choice(programs))
    beat = 60.0 / rng.uniform(*tempo)
    low, high = pitch_range
    span = int(rng.integers(min(10, high - low), min(20, high - low) + 1))
    bottom = int(rng.integers(low, high - span + 1))  # this video's register inside the class range
    root = int(rng.integers(12))
    scale = SCALES[str(rng.choice(list(SCALES)))]
    pitches = [p for p in range(bottom, bottom + span + 1) if (p - root) % 12 in scale]
    loudness = int(rng.integers(60, 116))
    legato = rng.uniform(0.7, 1.0)
    notes: list[Note] = []
    step = int(rng.integers(len(pitches)))
    time, rested = float(rng.uniform(0.0, 0.1)), False
    while time < seconds + MIDI_TAIL_S:
        if not rested and rng.random() < 0.12:
            time += 0.5 * beat
            rested = True
            continue
        rested = False
        length = float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.0, 1.5, 2.0])) * beat
        step = int(np.clip(step + rng.integers(-2, 3), 0, len(pitches) - 1))
        velocity = loudness + int(rng.integers(-12, 13))
        notes.append(Note(pitches[step], time, time + length * legato, velocity))
        if chords and rng.random() < 0.3 and step >= 2:
            notes.append(Note(pitches[step - 2], time, time + length * legato, velocity - 10))
        time += length
    return render_notes(notes, program, False, seconds)


def note_groups(
    rng: np.random.Generator,
    seconds: float,
    program: int,
    pitch_range: tuple[int, int],
    note_s: tuple[float, float],
    step_s: tuple[float, float],
    group: tuple[int, int],
    pause_s: tuple[float, float],
    is_drum: bool = False,
    pitch_jitter: int = 3,
    skip_s: float = 0.0,
) -> np.ndarray:
    """Bursts of short notes (chirps, rings, ticks, waves): `group` notes `step_s` apart, then a pause.

    Pauses stay under half a second so that every second has sound.
    """
    center = int(rng.integers(pitch_range[0], pitch_range[1] + 1))
    loudness = int(rng.integers(70, 121))
    note_len = rng.uniform(*note_s)
    step = rng.uniform(*step_s)
    notes: list[Note] = []
    time = float(rng.uniform(0.0, 0.05))
    while time < skip_s + seconds + MIDI_TAIL_S:
        for _ in range(int(rng.integers(group[0], group[1] + 1))):
            pitch = int(np.clip(center + rng.integers(-pitch_jitter, pitch_jitter + 1), 0, 127))
            notes.append(Note(pitch, time, time + note_len * rng.uniform(0.8, 1.2), loudness + int(rng.integers(-10, 11))))
            time += step * rng.uniform(0.85, 1.15)
        time += rng.uniform(*pause_s)
    return render_notes(notes, program, is_drum, seconds, skip_s=skip_s)


def held_note(rng: np.random.Generator, seconds: float, program: int, pitch_range: tuple[int, int], spin_up_s: float) -> np.ndarray:
    """One note held throughout (a helicopter's rotor), cut after `spin_up_s` so it is already at full speed."""
    pitch = int(rng.integers(pitch_range[0], pitch_range[1] + 1))
    note = Note(pitch, 0.0, spin_up_s + seconds + MIDI_TAIL_S, int(rng.integers(80, 121)))
    return render_notes([note], program, False, seconds, skip_s=spin_up_s)


# General MIDI percussion keys (channel 10)
KICK, SNARE, CLAP, CLOSED_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 39, 42, 46, 49, 51
TOMS = (41, 43, 45, 47, 48, 50)


def drum_kit(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A random 16-step rock/pop pattern, varied a little every bar, with a tom fill now and then."""
    sixteenth = 60.0 / rng.uniform(80.0, 160.0) / 4
    kick = rng.random(16) < 0.2
    kick[0] = True
    snare = np.zeros(16, bool)
    snare[[4, 12]] = True
    hat_every = int(rng.choice([1, 2, 2]))
    cymbal = int(rng.choice([CLOSED_HAT, CLOSED_HAT, RIDE]))
    loudness = int(rng.integers(70, 121))
    notes: list[Note] = []
    bar = 0
    while bar * 16 * sixteenth < seconds + MIDI_TAIL_S:
        fill = rng.random() < 0.25
        for step in range(16):
            hits: list[tuple[int, int]] = []  # (key, accent)
            if fill and step >= 12:
                hits.append((int(rng.choice(TOMS)), 5))
            else:
                if kick[step] != (rng.random() < 0.05):  # the bar's kicks, one flipped now and then
                    hits.append((KICK, 10))
                if snare[step]:
                    hits.append((int(rng.choice([SNARE, SNARE, CLAP])), 5))
                elif rng.random() < 0.04:
                    hits.append((SNARE, -25))  # ghost note
                if step % hat_every == 0:
                    hits.append((cymbal, 0 if step % 4 == 0 else -15))
                if step == 0 and bar % 4 == 0 and rng.random() < 0.5:
                    hits.append((CRASH, 0))
            time = (bar * 16 + step) * sixteenth
            for key, accent in hits:
                notes.append(Note(key, time, time + sixteenth, loudness + accent + int(rng.integers(-10, 11))))
        bar += 1
    return render_notes(notes, 0, True, seconds)


# --------------------------------------------------------------------------- synthesised sounds


def tone(frequency: np.ndarray, harmonics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A harmonic tone following a per-sample frequency curve; `harmonics[k]` is the level of partial k+1."""
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    out = np.zeros_like(frequency)
    for k, level in enumerate(harmonics, start=1):
        fade = np.clip((SAMPLE_RATE / 2 - frequency * k) / 1000, 0, 1)  # partials fade out before Nyquist: no aliasing, no clicks
        out += level * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) * fade
    return out


def shaped_noise(rng: np.random.Generator, n: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """White noise coloured by a gain curve over frequency (Hz), unit RMS."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    return unit_rms(np.fft.irfft(spectrum * gain(frequencies), n))


def band(low: float, high: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda f: ((f >= low) & (f <= high)).astype(float)


def smooth_walk(rng: np.random.Generator, n: int, knots_per_s: float) -> np.ndarray:
    """A smooth random curve in [-1, 1] (random knots, linearly interpolated, then eased)."""
    knots = rng.uniform(-1, 1, int(n / SAMPLE_RATE * knots_per_s) + 2)
    curve = np.interp(np.linspace(0, len(knots) - 1, n), np.arange(len(knots)), knots)
    return np.sin(curve * np.pi / 2)


def place_calls(
    rng: np.random.Generator,
    seconds: float,
    make_call: Callable[[], np.ndarray],
    gap_s: tuple[float, float],
) -> np.ndarray:
    """Lay calls (barks, meows, moos) one after another with gaps drawn in `gap_s`."""
    n = int(round(seconds * SAMPLE_RATE))
    out = np.zeros(n + 4 * SAMPLE_RATE)
    at = int(rng.uniform(0.0, 0.1) * SAMPLE_RATE)
    while at < n:
        call = make_call()
        out[at : at + len(call)] += call
        at += len(call) + int(rng.uniform(*gap_s) * SAMPLE_RATE)
    return out[:n]


def envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    rise = np.clip(t / attack_s, 0, 1)
    fall = np.clip((n / SAMPLE_RATE - t) / release_s, 0, 1)
    return rise * fall


def dog(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Barks: short bright bursts with a falling pitch, in groups of one to three."""
    pitch = rng.uniform(250, 650)  # this dog's voice
    bark_s = rng.uniform(0.08, 0.18)
    harmonics = 1 / np.arange(1, 13) ** rng.uniform(0.6, 1.2)

    def bark() -> np.ndarray:
        n = int(bark_s * rng.uniform(0.8, 1.25) * SAMPLE_RATE)
        fall = np.linspace(1.0, rng.uniform(0.55, 0.8), n)
        voiced = unit_rms(tone(pitch * rng.uniform(0.9, 1.1) * fall, harmonics, rng))
        rough = shaped_noise(rng, n, band(500, 4000))
        burst = (voiced + 0.4 * rough) * envelope(n, 0.005, bark_s * 0.6)
        gap = np.zeros(int(rng.uniform(0.08, 0.2) * SAMPLE_RATE))
        return np.concatenate([burst, gap])

    def barks() -> np.ndarray:
        return np.concatenate([bark() for _ in range(int(rng.integers(1, 4)))])

    return place_calls(rng, seconds, barks, (0.1, 0.45))


def car(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Engine hum: firing-rate harmonics following a slowly varying rpm, plus tyre/road noise."""
    n = int(round(seconds * SAMPLE_RATE))
    rpm = rng.uniform(900, 2600) * (1 + 0.3 * smooth_walk(rng, n, 0.7))
    firing = rpm / 60 * 2  # four-stroke, four cylinders: two firings per revolution
    harmonics = 1 / np.arange(1, 16) ** rng.uniform(0.7, 1.3)
    engine = unit_rms(tone(firing, harmonics, rng))
    road = shaped_noise(rng, n, lambda f: 1 / np.maximum(f, 40) ** 0.8 * (f < 3000))
    mix = engine + rng.uniform(0.3, 0.8) * road
    if rng.random() < 0.4:  # a horn honk somewhere
        honk_n = int(rng.uniform(0.3, 0.8) * SAMPLE_RATE)
        at = int(rng.integers(0, max(1, n - honk_n)))
        base = rng.uniform(380, 480)
        honk = tone(np.full(honk_n, base), 1 / np.arange(1, 8), rng) + tone(np.full(honk_n, base * 1.26), 1 / np.arange(1, 8), rng)
        mix[at : at + honk_n] += 1.5 * unit_rms(honk) * envelope(honk_n, 0.01, 0.03)
    return mix


def siren(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Emergency siren: a wail (slow sweep), a yelp (fast sweep) or a two-tone hi-lo."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    low = rng.uniform(550, 800)
    high = low * rng.uniform(1.3, 2.0)
    style = str(rng.choice(["wail", "yelp", "hilo"]))
    if style == "hilo":
        period = rng.uniform(0.8, 1.4)
        frequency = np.where((t / period + rng.random()) % 1 < 0.5, low, high)
    else:
        period = rng.uniform(2.0, 4.5) if style == "wail" else rng.uniform(0.25, 0.45)
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * (t / period + rng.random()))
        frequency = low + (high - low) * sweep
    return tone(frequency, np.array([1.0, 0.0, 0.35, 0.0, 0.2, 0.0, 0.1]), rng)


def cat(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Meows: a rising-then-falling pitch contour whose brightness opens and closes."""
    pitch = rng.uniform(350, 650)

    def meow() -> np.ndarray:
        n = int(rng.uniform(0.4, 0.9) * SAMPLE_RATE)
        arch = np.sin(np.linspace(0, np.pi, n))
        frequency = pitch * (0.8 + 0.45 * arch)
        bright = tone(frequency, 1 / np.arange(1, 9) ** 0.8, rng)
        dull = tone(frequency, np.array([1.0, 0.3]), rng)
        return (dull * (1 - arch) + bright * arch) * envelope(n, 0.04, 0.15)

    return place_calls(rng, seconds, meow, (0.1, 0.45))


def cow(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Moos: a long low harmonic call ("mmm-ooo") that brightens, then fades."""
    pitch = rng.uniform(85, 160)

    def moo() -> np.ndarray:
        n = int(rng.uniform(0.8, 1.6) * SAMPLE_RATE)
        arch = np.sin(np.linspace(0, np.pi, n)) ** 0.5
        frequency = pitch * (0.9 + 0.2 * arch)
        bright = tone(frequency, 1 / np.arange(1, 25) ** 0.9, rng)
        dull = tone(frequency, np.array([1.0, 0.5, 0.2]), rng)
        return (dull * (1 - arch) + bright * arch) * envelope(n, 0.1, 0.3)

    return place_calls(rng, seconds, moo, (0.1, 0.4))


def train(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A steam train: chugs (noise bursts at a steady rate) over a rumble, sometimes a whistle."""
    n = int(round(seconds * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    chug_rate = rng.uniform(2.0, 5.0)
    chugs = (0.5 + 0.5 * np.cos(2 * np.pi * chug_rate * t)) ** 6
    steam = shaped_noise(rng, n, band(300, 5000)) * chugs
    rumble = shaped_noise(rng, n, lambda f: 1 / np.maximum(f, 30) * (f < 400))
    mix = unit_rms(steam) + 0.5 * rumble
    if rng.random() < 0.5:
        whistle_n = int(rng.uniform(0.6, 1.5) * SAMPLE_RATE)
        at = int(rng.integers(0, max(1, n - whistle_n)))
        base = rng.uniform(500, 800)
        chord = sum(tone(np.full(whistle_n, base * ratio), np.array([1.0, 0.3]), rng) for ratio in (1.0, 1.25, 1.5))
        mix[at : at + whistle_n] += 1.2 * unit_rms(chord) * envelope(whistle_n, 0.05, 0.2)
    return mix


def water(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """Waves (General MIDI seashore, overlapping) over a babbling, splashy water noise."""
    waves = note_groups(rng, seconds, 122, (50, 70), note_s=(2.0, 3.0), step_s=(0.7, 1.4), group=(4, 8), pause_s=(0.0, 0.3), skip_s=1.0)
    n = len(waves)
    babble = shaped_noise(rng, n, band(400, 6000)) * (1 + 0.6 * smooth_walk(rng, n, 8.0))
    return unit_rms(waves) + rng.uniform(0.3, 0.7) * babble


# --------------------------------------------------------------------------- the registry

Recipe = Callable[[np.random.Generator, float], np.ndarray]

# Class name -> sound. General MIDI program numbers are 0-based (pretty_midi's).
SOUNDS: dict[str, Recipe] = {
    # instruments (MUSIC)
    "accordion": functools.partial(melody, programs=(21, 23), pitch_range=(53, 84), chords=True),
    "guitar": functools.partial(melody, programs=(24, 25), pitch_range=(40, 76), chords=True),
    "violin": functools.partial(melody, programs=(40,), pitch_range=(55, 93)),
    "saxophone": functools.partial(melody, programs=(64, 65, 66), pitch_range=(46, 80)),
    "trumpet": functools.partial(melody, programs=(56,), pitch_range=(54, 84)),
    "piano": functools.partial(melody, programs=(0, 1), pitch_range=(36, 96), chords=True),
    "drum": drum_kit,
    "banjo": functools.partial(melody, programs=(105,), pitch_range=(48, 84)),
    "flute": functools.partial(melody, programs=(73,), pitch_range=(60, 96)),
    "maracas": functools.partial(
        note_groups, program=0, pitch_range=(69, 70), note_s=(0.05, 0.1), step_s=(0.12, 0.25), group=(4, 16), pause_s=(0.0, 0.3), is_drum=True, pitch_jitter=0
    ),
    # everyday sounds (VGGSound); General MIDI sound effects where they exist
    "bird": functools.partial(note_groups, program=123, pitch_range=(64, 96), note_s=(0.06, 0.2), step_s=(0.08, 0.2), group=(2, 6), pause_s=(0.1, 0.45), pitch_jitter=5),
    "phone": functools.partial(note_groups, program=124, pitch_range=(58, 74), note_s=(0.2, 0.3), step_s=(0.15, 0.25), group=(4, 7), pause_s=(0.2, 0.45), pitch_jitter=0),
    "helicopter": functools.partial(held_note, program=125, pitch_range=(40, 64), spin_up_s=3.0),
    "bell": functools.partial(melody, programs=(14, 112), pitch_range=(55, 84), tempo=(50.0, 110.0)),
    "clock": functools.partial(
        note_groups, program=0, pitch_range=(76, 77), note_s=(0.05, 0.05), step_s=(0.25, 0.5), group=(2, 2), pause_s=(0.25, 0.25), is_drum=True, pitch_jitter=0
    ),
    "dog": dog,
    "car": car,
    "siren": siren,
    "water": water,
    "cat": cat,
    "cow": cow,
    "train": train,
}


def render_sound(name: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """`seconds` of class `name`'s sound at SAMPLE_RATE, unit RMS."""
    if name not in SOUNDS:
        raise KeyError(f"no toy sound for class {name!r} (have: {', '.join(sorted(SOUNDS))})")
    return unit_rms(fit_length(SOUNDS[name](rng, seconds), seconds))


# --------------------------------------------------------------------------- ambience and mixing


def ambience(kind: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Background under every clip, unit RMS. room: low pinkish noise; street: brown noise, wind gusts, distant hum."""
    n = int(round(seconds * SAMPLE_RATE))
    if kind == "room":
        return shaped_noise(rng, n, lambda f: 1 / np.sqrt(np.maximum(f, 20)) / (1 + (f / 2500) ** 2))
    if kind == "street":
        brown = shaped_noise(rng, n, lambda f: 1 / np.maximum(f, 20))
        gusts = 1 + 0.7 * smooth_walk(rng, n, 0.8)
        wind = shaped_noise(rng, n, band(150, 1200)) * gusts
        hum = unit_rms(tone(np.full(n, rng.uniform(45, 120)), np.array([1.0, 0.5, 0.3, 0.2]), rng))
        return unit_rms(brown + 0.5 * wind + 0.25 * hum)
    raise ValueError(f"unknown ambience {kind!r} (room | street)")


@dataclass(frozen=True)
class Soundtrack:
    """A video's audio and its parts, all on the mixture's scale (mixture = sum of sources + ambience)."""

    mixture: np.ndarray
    sources: list[np.ndarray]  # one per sounding class, in label order
    ambience: np.ndarray


def mix_soundtrack(
    labels: list[str],
    seconds: float,
    ambience_kind: str,
    ambience_db: float,
    loudness_ratio_db: float,
    rng: np.random.Generator,
) -> Soundtrack:
    """Render each sounding class, set the level gap of a duet, add ambience, scale to a safe level."""
    sources = [render_sound(label, seconds, rng) for label in labels]
    gaps_db = np.zeros(len(sources))
    if len(sources) > 1:  # one source at full level, the others up to loudness_ratio_db below it
        gaps_db[1:] = rng.uniform(0.0, loudness_ratio_db, len(sources) - 1)
        rng.shuffle(gaps_db)
    sources = [source * 10 ** (-gap / 20) for source, gap in zip(sources, gaps_db)]
    sound = np.sum(sources, axis=0)
    background = ambience(ambience_kind, seconds, rng) * np.sqrt(np.mean(sound**2)) * 10 ** (ambience_db / 20)
    mixture = sound + background
    # About -20 dBFS with a little jitter between videos, never clipping.
    scale = 0.1 * 10 ** (rng.uniform(-4.0, 0.0) / 20) / np.sqrt(np.mean(mixture**2))
    scale = min(scale, 0.98 / np.max(np.abs(mixture)))
    return Soundtrack(mixture * scale, [source * scale for source in sources], background * scale)


def wav_bytes(signal: np.ndarray) -> bytes:
    """16-bit mono WAV at SAMPLE_RATE."""
    pcm = np.clip(np.round(signal * 32767), -32768, 32767).astype("<i2")
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(pcm.tobytes())
    return out.getvalue()
