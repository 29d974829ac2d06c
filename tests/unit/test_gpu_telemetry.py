"""GPU telemetry with a fake NVML (no GPU here): which GPUs an instance reports, and
that no figure is ever invented."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from tests.session_fakes import fake_instance
from voxmesh.asr.metrics import AsrMetrics
from voxmesh.telemetry import GpuSampler, known_figure

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}" for i in range(4)]


@dataclass
class _Handle:
    index: int


class FakeNvml:
    """The pynvml calls GpuSampler makes, over four GPUs (index i at 10*i % busy).

    Failures are pynvml's own exceptions: a GPU in ``lost`` answers every call with
    ``GPU is lost``, one in ``unopenable`` has no handle, and a figure named in
    ``unsupported`` (``utilization``, ``memory``, ``temperature``, ``power``) is ``Not
    Supported`` on every GPU.
    """

    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        count: int = 4,
        fail: set[int] | None = None,
        *,
        lost: set[int] | None = None,
        unopenable: set[int] | None = None,
        unsupported: set[str] | None = None,
    ) -> None:
        self.count = count
        self.fail = fail or set()
        self.lost = lost or set()
        self.unopenable = unopenable or set()
        self.unsupported = unsupported or set()

    def _check(self, handle: _Handle, figure: str = "") -> None:
        if handle.index in self.lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        if figure in self.unsupported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        if index in self.unopenable:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        self._check(handle)
        return UUIDS[handle.index]

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        self._check(handle, "utilization")
        if handle.index in self.fail:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu=10 * handle.index)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        self._check(handle, "memory")
        return SimpleNamespace(used=handle.index << 30, total=80 << 30)

    def nvmlDeviceGetName(self, handle: _Handle) -> bytes:
        self._check(handle)
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        self._check(handle, "temperature")
        return 40 + handle.index

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        self._check(handle, "power")
        return 100_000 + handle.index


def _indices(sampler: GpuSampler) -> list[int]:
    return [r.index for r in sampler.read()]


def test_without_restriction_every_gpu_is_read_with_its_figures() -> None:
    sampler = GpuSampler(FakeNvml(), env={})
    readings = sampler.read()
    assert sampler.available and [r.index for r in readings] == [0, 1, 2, 3]
    third = readings[2]
    assert (third.utilization_ratio, third.memory_used_bytes, third.memory_total_bytes) == (
        0.2,
        2 << 30,
        80 << 30,
    )
    assert (third.temperature_celsius, third.power_watts) == (42.0, 100.002)
    assert third.name == "NVIDIA H100 80GB HBM3" and sampler.gpu_type() == "H100"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CUDA_VISIBLE_DEVICES": "2"}, [2]),
        ({"CUDA_VISIBLE_DEVICES": "3,1"}, [3, 1]),
        ({"CUDA_VISIBLE_DEVICES": UUIDS[1][:12]}, [1]),  # a unique UUID prefix
        ({"CUDA_VISIBLE_DEVICES": "1,9"}, [1]),  # no device 9
        ({"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": UUIDS[3]}, [0]),  # CUDA wins
        ({"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[2]},{UUIDS[0]}"}, [2, 0]),  # Nomad's plugin
        ({"NVIDIA_VISIBLE_DEVICES": "1"}, [1]),  # host index, devices not masked
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, [0, 1, 2, 3]),
    ],
)
def test_only_the_gpus_of_this_process_are_read(env: dict[str, str], expected: list[int]) -> None:
    assert _indices(GpuSampler(FakeNvml(), env=env)) == expected


def test_indices_in_nvidia_visible_devices_are_not_renumbered_in_a_masked_container() -> None:
    # The runtime exposed host GPU 3 as the container's only device, NVML index 0.
    assert _indices(GpuSampler(FakeNvml(count=1), env={"NVIDIA_VISIBLE_DEVICES": "3"})) == [0]


@pytest.mark.parametrize("value", ["", "-1", "-1,0"])
def test_an_empty_cuda_visible_devices_means_no_gpu(value: str) -> None:
    sampler = GpuSampler(FakeNvml(), env={"CUDA_VISIBLE_DEVICES": value})
    assert not sampler.available and sampler.read() == [] and sampler.gpu_type() == "cpu"
    assert "no GPU visible to this process" in sampler.reason


def test_no_nvml_is_reported_as_such_and_never_estimated() -> None:
    class Broken(FakeNvml):
        def nvmlInit(self) -> None:
            raise OSError("libnvidia-ml.so.1: cannot open shared object file")

    sampler = GpuSampler(Broken(), env={})
    assert not sampler.available and sampler.read() == []
    assert sampler.reason.startswith("NVML unavailable: libnvidia-ml.so.1")
    none = GpuSampler(FakeNvml(count=0), env={})
    assert (none.available, none.reason) == (False, "NVML found no GPU")


def test_a_gpu_whose_read_fails_is_left_out_not_guessed() -> None:
    sampler = GpuSampler(FakeNvml(fail={1}), env={})
    assert _indices(sampler) == [0, 2, 3]


def test_a_figure_nvml_does_not_support_is_unknown_and_the_gpu_still_listed() -> None:
    # Many GPUs answer "Not Supported" for the power draw; that is no reason to drop them.
    sampler = GpuSampler(FakeNvml(unsupported={"power"}), env={})
    readings = sampler.read()
    assert [r.index for r in readings] == [0, 1, 2, 3]
    assert sampler.available and sampler.reason == ""
    third = readings[2]
    assert third.power_watts is None, "an unsupported figure is unknown, not invented"
    assert (third.utilization_ratio, third.memory_used_bytes, third.temperature_celsius) == (
        0.2,
        2 << 30,
        42.0,
    )
    for figure in ("utilization", "memory", "temperature"):
        (reading, *_) = GpuSampler(FakeNvml(unsupported={figure}), env={}).read()
        assert reading.name == "NVIDIA H100 80GB HBM3"


def test_a_gpu_lost_mid_stream_is_reported_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml(count=2)
    sampler = GpuSampler(nvml, env={})
    assert _indices(sampler) == [0, 1] and sampler.gpu_type() == "H100"
    caplog.set_level(logging.INFO, logger="voxmesh.telemetry.gpu")
    nvml.lost = {1}
    for _ in range(3):
        assert _indices(sampler) == [0]
        assert sampler.available and sampler.reason == "GPU 1 could not be read: GPU is lost"
    nvml.lost = {0, 1}
    for _ in range(3):
        assert sampler.read() == [] and not sampler.available
        assert sampler.reason == (
            "GPU 0 could not be read: GPU is lost; GPU 1 could not be read: GPU is lost"
        )
        assert sampler.gpu_type() == "H100", "a lost GPU does not turn the instance into a CPU"
    nvml.lost = set()
    assert _indices(sampler) == [0, 1] and (sampler.available, sampler.reason) == (True, "")
    logged = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert logged == [
        (logging.WARNING, "GPU 1 could not be read: GPU is lost"),
        (logging.WARNING, "GPU 0 could not be read: GPU is lost"),
        (logging.INFO, "GPU 0 is read again"),
        (logging.INFO, "GPU 1 is read again"),
    ]


@pytest.mark.parametrize(
    ("nvml", "env", "expected", "reason"),
    [
        (FakeNvml(unopenable={1}), {}, [0, 2, 3], "GPU 1 could not be opened: Insufficient"),
        (FakeNvml(unopenable={1}), {"CUDA_VISIBLE_DEVICES": "2,1"}, [2], "GPU 1 could not be"),
        (FakeNvml(unopenable={1}), {"CUDA_VISIBLE_DEVICES": "1"}, [], "GPU 1 could not be opened"),
        (FakeNvml(lost={1}), {"NVIDIA_VISIBLE_DEVICES": f"{UUIDS[2]},{UUIDS[0]}"}, [2, 0], ""),
    ],
    ids=["all", "cuda-indices", "cuda-only-the-broken-one", "uuid-unreadable"],
)
def test_a_gpu_that_fails_at_start_up_leaves_the_others_read(
    nvml: FakeNvml, env: dict[str, str], expected: list[int], reason: str
) -> None:
    sampler = GpuSampler(nvml, env=env)
    assert _indices(sampler) == expected and sampler.available == bool(expected)
    assert sampler.reason.startswith(reason) and bool(sampler.reason) == bool(reason)


async def test_the_snapshot_and_gauges_show_only_the_gpus_and_figures_read() -> None:
    nvml = FakeNvml(count=2)
    metrics = AsrMetrics.create()
    instance = fake_instance(max_streams=1, metrics=metrics, gpu=GpuSampler(nvml, env={}))

    def gauges(name: str) -> list[float | None]:
        sample = metrics.registry.get_sample_value
        return [sample(f"voxmesh_asr_gpu_{name}", {"gpu": str(i)}) for i in range(2)]

    try:
        snap = instance.snapshot()
        assert [g.index for g in snap.gpus] == [0, 1] and snap.gpu_available
        assert gauges("utilization_ratio") == [0.0, 0.1]
        nvml.lost = {1}
        snap = instance.snapshot()
        assert gauges("utilization_ratio") == [0.0, None], "a lost GPU keeps no stale series"
        assert gauges("memory_used_bytes") == [0.0, None]
        assert gauges("memory_total_bytes") == [float(80 << 30), None]
        assert [g.index for g in snap.gpus] == [0] and snap.gpu_available
        assert snap.gpu_unavailable_reason == "GPU 1 could not be read: GPU is lost"
        nvml.lost = {0, 1}
        snap = instance.snapshot()
        assert gauges("utilization_ratio") == [None, None]
        assert not snap.gpus and not snap.gpu_available
        assert snap.gpu_unavailable_reason.startswith("GPU 0 could not be read: GPU is lost")
        assert snap.host.cpu_count >= 1 and snap.host.memory_total_bytes > 0
        nvml.lost = set()
        nvml.unsupported = {"utilization"}
        snap = instance.snapshot()
        assert [g.index for g in snap.gpus] == [0, 1] and snap.gpus[1].power_watts == 100.001
        assert gauges("utilization_ratio") == [None, None], "no series for an unknown figure"
        assert gauges("memory_used_bytes") == [0.0, float(1 << 30)]
        # On the wire the unknown figure is named: consumers read it as unknown, not 0.
        assert [list(g.unknown_figures) for g in snap.gpus] == [["utilization_ratio"]] * 2
        assert known_figure(snap.gpus[1], "utilization_ratio") is None
        assert known_figure(snap.gpus[1], "power_watts") == 100.001
    finally:
        await instance.shutdown()
