"""Runtime helpers and model inputs: the device error names the caller's key, the progress bar writes one line in a
log, and a model file's input normalisation is what evaluation prepares its inputs with."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import Model
from pipeline.models.files import Trained, model_config
from pipeline.models.inputs import DEFAULT_NORMALISATION, Normalisation, prepare_images, prepare_logmel
from pipeline.runtime import autocast, native_cpu_bf16, pick_device
from pipeline.stage import StageError
from tests.helpers.params import load_repo_params


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("key", ["stage1.device", "cmr.device", "evaluate.device", "pretrain.device"])
def test_cuda_without_cuda_names_the_callers_key(key):
    with pytest.raises(StageError, match=f"^{key}: cuda asked but torch sees no CUDA device$"):
        pick_device("cuda", key)


@pytest.mark.parametrize("precision", ["bf16", "fp32", "auto"])
def test_cpu_precision_sets_what_a_convolution_computes_in_and_repeats_to_the_bit(precision):
    torch.manual_seed(0)
    convolution, image = torch.nn.Conv2d(3, 8, 3), torch.randn(2, 3, 16, 16)
    bf16 = precision == "bf16" or (precision == "auto" and native_cpu_bf16())
    outputs = []
    for _ in range(2):
        with autocast(torch.device("cpu"), precision):
            outputs.append(convolution(image))
    assert outputs[0].dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert torch.equal(outputs[0], outputs[1])
    with autocast(torch.device("cpu")):  # the default, as the pretrain stage runs: fp32
        assert convolution(image).dtype == torch.float32


def test_progress_writes_one_line_when_stderr_is_not_a_terminal():
    code = ("from pipeline.progress import progress\n"
            "for _ in progress(range(500), desc='steps', unit='step', leave=False): pass\n"
            "with progress(total=3, desc='mosaics') as bar:\n    bar.update(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and "\r" not in result.stderr
    assert lines[0].startswith("steps: 100% 500/500") and lines[1].startswith("mosaics: 100% 3/3")


def test_a_model_files_normalisation_is_read_back_and_used():
    params = load_repo_params()
    model_params = Model(**params["model"])
    other = Normalisation((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 20.0, 10.0)
    config = model_config(model_params, 4, True, other)
    assert Trained(None, None, None, [], config).normalisation == other
    # a file written before the normalisation was recorded reads as the defaults
    old = {key: value for key, value in config.items() if key not in other.to_config()}
    assert Trained(None, None, None, [], old).normalisation == DEFAULT_NORMALISATION
    images = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    prepared = prepare_images(images, 4, torch.device("cpu"), False, normalisation=other)
    torch.testing.assert_close(prepared, torch.full((1, 3, 4, 4), 2.0))  # (1 - 0.5) / 0.25
    log_mel = prepare_logmel(torch.full((1, 2, 3), -20.0), torch.device("cpu"), False, other)
    np.testing.assert_allclose(log_mel.numpy(), 0.0)  # (-20 + 20) / 10


def test_model_files_that_normalise_otherwise_stop_evaluation_naming_both():
    from pipeline.evaluate import same_normalisation

    model_params = Model(**load_repo_params()["model"])
    ier = Trained(None, None, None, [], model_config(model_params, 4, True, DEFAULT_NORMALISATION))
    old = Trained(None, None, None, [], model_config(model_params, 4, True, Normalisation(logmel_offset=20.0)))
    assert same_normalisation({Path("stage2.pt"): ier, Path("stage1.pt"): ier}) == DEFAULT_NORMALISATION
    with pytest.raises(StageError, match=r"^the model files normalise their inputs differently \(stage2.pt: .*; "
                                         r"stage1.pt: .*logmel_offset=20.0.*\); rerun stage 1 and stage 2$"):
        same_normalisation({Path("stage2.pt"): ier, Path("stage1.pt"): old})
