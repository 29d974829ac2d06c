"""The router in front of a real ASR instance (tiny.en): same statuses, same transcripts."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.asr_server import AsrServerThread
from tests.integration.router_harness import mesh
from tests.integration.test_router_bad_input import CASES, final_code
from tests.speech import espeak_pcm, silence_pcm, wer
from tests.streaming import config_request, run_stream
from voxmesh.discovery import InstanceInfo

pytestmark = pytest.mark.usefixtures("router_data_path")

pytestmark = pytest.mark.model

SENTENCES = ["the quick brown fox jumps over the lazy dog", "please call me back tomorrow"]


@pytest.fixture(scope="module")
def instance() -> Iterator[AsrServerThread]:
    with AsrServerThread(max_streams=4, max_stream_seconds=2.0) as server:
        yield server


def info(server: AsrServerThread) -> InstanceInfo:
    return InstanceInfo(
        instance_id=server.ready["instance_id"],
        pool=server.ready["pool"],
        model=server.ready["model"],
        address="127.0.0.1",
        port=server.ready["port"],
        max_streams=server.settings.max_streams,
    )


async def test_bad_input_statuses_match_the_real_instance(instance: AsrServerThread) -> None:
    async with mesh() as m:
        m.discovery.put(info(instance))
        await m.known(instance.ready["instance_id"])
        for case, requests in CASES.items():
            direct = await final_code(instance.target, requests)
            routed = await final_code(m.router.target, requests)
            assert routed == direct, case


async def test_speech_through_the_router_is_transcribed() -> None:
    audio = b"".join(espeak_pcm(s) + silence_pcm(0.8) for s in SENTENCES)
    reference = " ".join(SENTENCES)
    with AsrServerThread(max_streams=2) as instance:
        async with mesh() as m:
            m.discovery.put(info(instance))
            await m.known(instance.ready["instance_id"])
            routed = await run_stream(m.channel, audio, first=config_request(model="tiny.en"))
            async with grpc.aio.insecure_channel(instance.target) as channel:
                direct = await run_stream(channel, audio, first=config_request(model="tiny.en"))
    assert routed.error is None and direct.error is None
    assert routed.text == direct.text
    assert routed.summary is not None
    assert routed.summary.instance_id == instance.ready["instance_id"]
    assert routed.summary.final_results == len(routed.finals) >= 2
    assert wer(reference, routed.text) <= 0.4, routed.text  # tiny.en on synthetic speech
    assert routed.interims, "interim results are relayed"
