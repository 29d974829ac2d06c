"""Model/pool resolution, the auto policies, stream validation and router settings."""

from __future__ import annotations

import pytest

from services.router.routing import PoolResolver, check_chunk
from services.router.settings import RouterSettings, load_settings
from voxmesh.errors import InvalidArgument, NotFound, ResourceExhausted, SettingsError
from voxmesh.stt.v1 import stt_pb2

REALTIME = stt_pb2.PRIORITY_REALTIME
BATCH = stt_pb2.PRIORITY_BATCH


def resolver(policy: str = "priority") -> PoolResolver:
    return PoolResolver(
        pools=["asr_small", "asr_large"],
        aliases={"tiny.en": "asr_small", "base": "asr_large"},
        policy=policy,
        realtime_pool="asr_small",
        batch_pool="asr_large",
        language_pools={"en": "asr_small", "de": "asr_large"},
    )


def config(
    model: str = "", priority: int = REALTIME, language: str = ""
) -> stt_pb2.StreamingRecognitionConfig:
    return stt_pb2.StreamingRecognitionConfig(
        config=stt_pb2.RecognitionConfig(
            model=model,
            language_code=language,
            encoding=stt_pb2.AUDIO_ENCODING_LINEAR16,
            sample_rate_hertz=16000,
            priority=priority,  # type: ignore[arg-type]
        )
    )


@pytest.mark.parametrize(
    ("model", "pool"),
    [
        ("asr_small", "asr_small"),
        ("asr_large", "asr_large"),
        ("tiny.en", "asr_small"),
        ("base", "asr_large"),
        ("custom-v2", "asr_large"),
    ],
)
def test_explicit_models_and_pools(model: str, pool: str) -> None:
    assert resolver().route(config(model), {"custom-v2": "asr_large"}).pool == pool


def test_unknown_model_is_not_found() -> None:
    with pytest.raises(NotFound, match="large-v3"):
        resolver().route(config("large-v3"), {})


def test_discovered_model_of_an_unserved_pool_is_not_found() -> None:
    with pytest.raises(NotFound):
        resolver().route(config("x"), {"x": "asr_other"})


@pytest.mark.parametrize("model", ["", "auto"])
def test_auto_by_priority(model: str) -> None:
    assert resolver().route(config(model, REALTIME), {}).pool == "asr_small"
    assert resolver().route(config(model, BATCH), {}).pool == "asr_large"


def test_auto_by_language_with_priority_fallback() -> None:
    lang = resolver("language")
    assert lang.auto_pool(realtime=True, language_code="de") == "asr_large"
    assert lang.auto_pool(realtime=False, language_code="EN") == "asr_small"
    assert lang.auto_pool(realtime=False, language_code="en-GB") == "asr_small"
    assert lang.auto_pool(realtime=True, language_code="fr") == "asr_small"
    assert lang.auto_pool(realtime=False, language_code="") == "asr_large"


def test_language_wildcard() -> None:
    lang = PoolResolver(
        pools=["a", "b"],
        aliases={},
        policy="language",
        realtime_pool="a",
        batch_pool="a",
        language_pools={"en": "a", "*": "b"},
    )
    assert lang.auto_pool(realtime=True, language_code="ja") == "b"
    assert lang.auto_pool(realtime=True, language_code="en") == "a"


def test_route_fields_and_generated_stream_id() -> None:
    cfg = config("asr_small", BATCH)
    cfg.config.sample_rate_hertz = 8000
    route = resolver().route(cfg, {})
    assert (route.realtime, route.linear16, route.sample_rate) == (False, True, 8000)
    assert route.stream_id
    cfg.stream_id = "mine"
    assert resolver().route(cfg, {}).stream_id == "mine"
    cfg.config.encoding = stt_pb2.AUDIO_ENCODING_CONTAINER
    route = resolver().route(cfg, {})
    assert (route.linear16, route.sample_rate) == (False, 0)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: setattr(c.config, "encoding", stt_pb2.AUDIO_ENCODING_UNSPECIFIED),
        lambda c: setattr(c.config, "sample_rate_hertz", 4000),
        lambda c: setattr(c.config, "sample_rate_hertz", 96000),
        lambda c: setattr(c.config, "priority", stt_pb2.PRIORITY_UNSPECIFIED),
        lambda c: setattr(c, "stream_id", "x" * 129),
    ],
)
def test_bad_configs_are_invalid_arguments(mutate: object) -> None:
    cfg = config("asr_small")
    mutate(cfg)  # type: ignore[operator]
    with pytest.raises(InvalidArgument):
        resolver().route(cfg, {})


def test_chunk_checks() -> None:
    check_chunk(3200, linear16=True, max_chunk_bytes=4096)
    check_chunk(3, linear16=False, max_chunk_bytes=4096)
    with pytest.raises(InvalidArgument, match="odd length"):
        check_chunk(3, linear16=True, max_chunk_bytes=4096)
    with pytest.raises(ResourceExhausted, match="maximum chunk size"):
        check_chunk(4098, linear16=True, max_chunk_bytes=4096)


def test_settings_from_env_and_flags() -> None:
    settings = load_settings(
        ["--queue-max-wait-s", "3.5", "--pools", "asr_small,asr_large"],
        {"VOXMESH_ROUTER_QUEUE_MAX_WAIT_S": "9", "VOXMESH_ROUTER_REGION": "eu"},
    )
    assert settings.queue_max_wait_s == 3.5
    assert settings.region == "eu"
    assert settings.model_aliases() == {"tiny.en": "asr_small", "base": "asr_large"}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"discovery": "zookeeper"}, "discovery"),
        ({"auto_policy": "random"}, "auto_policy"),
        ({"auto_batch_pool": "asr_huge"}, "auto_batch_pool"),
        ({"models": ("tiny.en",)}, "models"),
        ({"queue_max_wait_s": 0.0}, "queue_max_wait_s"),
        ({"telemetry_interval_s": 0.05}, "telemetry_interval_s"),
        ({"failover_context_s": 30.0}, "failover_context_s"),
        ({"failover_context_s": -1.0}, "failover_context_s"),
    ],
)
def test_invalid_settings_name_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        RouterSettings(**overrides).validate()  # type: ignore[arg-type]
