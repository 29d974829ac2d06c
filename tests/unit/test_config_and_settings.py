"""Config validation and typed settings: no sockets, no model."""

from __future__ import annotations

import dataclasses
from importlib import import_module

import pytest

from services.autoscaler.settings import AutoscalerSettings
from services.router.settings import RouterSettings
from voxmesh.asr.config import check_model, validate_streaming_config
from voxmesh.asr.settings import AsrSettings
from voxmesh.errors import InvalidArgument, NotFound, SettingsError
from voxmesh.settings import load, setting
from voxmesh.stt.v1 import stt_pb2


def _cfg(**kw: object) -> stt_pb2.StreamingRecognitionConfig:
    base: dict[str, object] = {"encoding": 1, "sample_rate_hertz": 8000, "priority": 1}
    base.update(kw)
    return stt_pb2.StreamingRecognitionConfig(config=stt_pb2.RecognitionConfig(**base))  # type: ignore[arg-type]


def test_valid_config_gets_a_stream_id_and_normalised_language() -> None:
    cfg = validate_streaming_config(_cfg(language_code="EN", priority=2))
    assert cfg.language == "en" and not cfg.realtime and len(cfg.stream_id) == 16


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"encoding": 0}, "encoding is required"),
        ({"sample_rate_hertz": 7999}, "out of range"),
        ({"sample_rate_hertz": 48001}, "out of range"),
        ({"priority": 0}, "priority is required"),
        ({"language_code": "english"}, "not an ISO 639-1 code"),
    ],
)
def test_invalid_configs_name_the_field(kw: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_streaming_config(_cfg(**kw))


def test_container_ignores_the_sample_rate_and_missing_config_is_rejected() -> None:
    assert validate_streaming_config(_cfg(encoding=2, sample_rate_hertz=0)).encoding == 2
    with pytest.raises(InvalidArgument, match="config is required"):
        validate_streaming_config(stt_pb2.StreamingRecognitionConfig())
    with pytest.raises(InvalidArgument, match="stream_id"):
        validate_streaming_config(
            stt_pb2.StreamingRecognitionConfig(config=_cfg().config, stream_id="has space")
        )


def test_model_matching() -> None:
    for name in ("", "auto", "asr_small", "tiny.en"):
        check_model(name, pool="asr_small", model="tiny.en")
    with pytest.raises(NotFound, match="not served here"):
        check_model("base", pool="asr_small", model="tiny.en")


def test_settings_precedence_and_errors() -> None:
    s = load(
        AsrSettings,
        prefix="VOXMESH_ASR",
        defaults={"pool": "asr_large", "model": "base"},
        env={"VOXMESH_ASR_MAX_STREAMS": "7", "VOXMESH_ASR_POOL": "asr_x"},
        argv=["--pool", "asr_y", "--adaptive-interims", "false"],
    )
    assert (s.pool, s.model, s.max_streams, s.adaptive_interims) == ("asr_y", "base", 7, False)
    with pytest.raises(SettingsError, match="VOXMESH_ASR_MAX_STREAMS='many'"):
        load(AsrSettings, prefix="VOXMESH_ASR", env={"VOXMESH_ASR_MAX_STREAMS": "many"})
    with pytest.raises(SettingsError, match="max_streams=0"):
        load(AsrSettings, prefix="VOXMESH_ASR", env={"VOXMESH_ASR_MAX_STREAMS": "0"})
    with pytest.raises(SettingsError, match="discovery='etcd'"):
        load(AsrSettings, prefix="VOXMESH_ASR", argv=["--discovery", "etcd"])
    with pytest.raises(SettingsError, match=r"speculative_pause_idle=-0\.1: must be >= 0"):
        load(AsrSettings, prefix="VOXMESH_ASR", argv=["--speculative-pause-idle", "-0.1"])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        # 0 made the session decode empty windows forever without getting anywhere.
        ("--max-utterance", "0", r"max_utterance 1 to 29 s"),
        ("--max-stream-seconds", "0", r"max_stream_seconds=0.0: must be > 0"),
        ("--max-unary-seconds", "-5", r"max_unary_seconds=-5.0: must be > 0"),
        ("--drain-timeout", "-1", r"drain_timeout=-1.0: must be >= 0"),
        ("--retry-after", "-1", r"retry_after=-1.0: must be >= 0"),
        ("--cpu-threads", "-2", r"cpu_threads=-2: must be >= 0"),
    ],
)
def test_limits_that_would_stop_every_stream_are_refused(
    flag: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load(AsrSettings, prefix="VOXMESH_ASR", argv=[flag, value])


def test_a_misspelt_environment_variable_is_an_error_not_ignored() -> None:
    """VOXMESH_ROUTER_QUEUE_MAX_WAIT (a name the router's docs gave) left the setting,
    queue_max_wait_s, at its default without a word."""
    with pytest.raises(
        SettingsError,
        match="VOXMESH_ROUTER_QUEUE_MAX_WAIT is not a setting "
        r"\(did you mean VOXMESH_ROUTER_QUEUE_MAX_WAIT_S\?\)",
    ):
        load(RouterSettings, prefix="VOXMESH_ROUTER", env={"VOXMESH_ROUTER_QUEUE_MAX_WAIT": "7"})
    with pytest.raises(SettingsError, match=r"VOXMESH_ASR_FLUX is not a setting$"):
        load(AsrSettings, prefix="VOXMESH_ASR", env={"VOXMESH_ASR_FLUX": "1"})
    other = {"VOXMESH_ROUTER_PORT": "1", "VOXMESH_MODEL_CACHE": "/m", "PATH": "/bin"}
    assert load(AsrSettings, prefix="VOXMESH_ASR", env=other).port == 0


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]"])
def test_a_wildcard_host_needs_an_advertised_address_for_discovery(host: str) -> None:
    with pytest.raises(SettingsError, match="advertise_host is required"):
        load(AsrSettings, prefix="VOXMESH_ASR", argv=["--host", host, "--discovery", "consul"])
    advertised = load(
        AsrSettings,
        prefix="VOXMESH_ASR",
        argv=["--host", host, "--discovery", "consul", "--advertise-host", "10.0.0.7"],
    )
    assert advertised.advertise_host == "10.0.0.7"
    alone = load(AsrSettings, prefix="VOXMESH_ASR", argv=["--host", host])
    assert alone.discovery == "none"  # nothing published: no address needed


@dataclasses.dataclass(frozen=True)
class _Floats:
    """Float settings in every shape ``load`` converts."""

    plain: float = setting(1.0, "a float")
    maybe: float | None = setting(None, "an optional float")
    several: tuple[float, ...] = setting((), "a list of floats")


@pytest.mark.parametrize("raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999"])
def test_float_settings_must_be_finite(raw: str) -> None:
    """``float()`` takes nan and inf, which would pass every ``> 0`` check as a timeout."""
    with pytest.raises(SettingsError, match=rf"VOXMESH_ASR_DRAIN_TIMEOUT={raw!r}: .*finite"):
        load(AsrSettings, prefix="VOXMESH_ASR", env={"VOXMESH_ASR_DRAIN_TIMEOUT": raw})
    with pytest.raises(SettingsError, match=rf"--interim-interval={raw!r}: .*finite"):
        load(AsrSettings, prefix="VOXMESH_ASR", argv=[f"--interim-interval={raw}"])
    for argv in ([f"--plain={raw}"], [f"--maybe={raw}"], [f"--several=1.5,{raw}"]):
        with pytest.raises(SettingsError, match="finite"):
            load(_Floats, prefix="T", argv=argv)
    fine = load(_Floats, prefix="T", argv=["--plain=1e3", "--maybe=-0.5", "--several=1,2"])
    assert (fine.plain, fine.maybe, fine.several) == (1000.0, -0.5, (1.0, 2.0))


@pytest.mark.parametrize(
    ("module", "pool"),
    [("services.asr_small.__main__", "asr_small"), ("services.asr_large.__main__", "asr_large")],
)
def test_each_asr_service_admits_what_the_autoscaler_assumes_of_its_pool(
    module: str, pool: str
) -> None:
    """The autoscaler sizes a pool by the per-instance limit it assumes until an instance
    reports its own: the two must agree, or the first scale-up of an empty pool is off."""
    defaults = import_module(module).DEFAULTS
    asr = load(AsrSettings, prefix="VOXMESH_ASR", defaults=defaults, argv=[], env={})
    autoscaler = AutoscalerSettings()
    assert asr.pool == pool
    assert asr.max_streams == autoscaler.fallback_max_streams(pool)
