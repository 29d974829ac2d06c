"""GPU telemetry with a fake NVML (no GPU here): which GPUs an instance reports, and
that no figure is ever invented."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from voxmesh.telemetry import GpuSampler

UUIDS = [f"GPU-{i}{i}{i}{i}aaaa-0000-0000-0000-00000000000{i}" for i in range(4)]


@dataclass
class _Handle:
    index: int


class FakeNvml:
    """The pynvml calls GpuSampler makes, over four GPUs (index i at 10*i % busy)."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, count: int = 4, fail: set[int] | None = None) -> None:
        self.count = count
        self.fail = fail or set()

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return UUIDS[handle.index]

    def nvmlDeviceGetUtilizationRates(self, handle: _Handle) -> Any:
        if handle.index in self.fail:
            raise RuntimeError("GPU is lost")
        return SimpleNamespace(gpu=10 * handle.index)

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> Any:
        return SimpleNamespace(used=handle.index << 30, total=80 << 30)

    def nvmlDeviceGetName(self, handle: _Handle) -> bytes:
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return 40 + handle.index

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
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
