"""Loading the model with settings this machine cannot honour fails at start with a
settings error that names them, not a CTranslate2 traceback."""

from __future__ import annotations

import ctranslate2
import pytest

from voxmesh.asr.decoder import WhisperDecoder, WhisperOptions
from voxmesh.asr.models import resolve_model
from voxmesh.errors import SettingsError

pytestmark = pytest.mark.model


def test_an_unknown_compute_type_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match=r"compute type bogus.*compute_type"):
        WhisperDecoder(
            resolve_model("tiny.en"), "tiny.en", WhisperOptions(device="cpu", compute_type="bogus")
        )


@pytest.mark.skipif(
    ctranslate2.get_cuda_device_count() > 0, reason="this machine has a CUDA device"
)
def test_cuda_without_a_usable_gpu_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="on device cuda"):
        WhisperDecoder(resolve_model("tiny.en"), "tiny.en", WhisperOptions(device="cuda"))
