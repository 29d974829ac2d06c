"""The router's balancer: power of two choices inside preference tiers."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from services.router.balancer import PowerOfTwoBalancer, Preference
from voxmesh.discovery import CAPACITY_ON_DEMAND, CAPACITY_PREEMPTIBLE


@dataclass
class Inst:
    """A candidate with a fixed load."""

    instance_id: str
    active: int = 0
    max_streams: int = 4
    region: str = "eu"
    gpu_type: str = "L4"
    capacity_class: str = CAPACITY_ON_DEMAND
    serving: bool = True
    draining_time_left: bool = False

    def accepting(self) -> bool:
        return self.serving

    def last_resort(self) -> bool:
        return not self.serving and self.draining_time_left

    def has_room(self) -> bool:
        return self.active < self.max_streams

    def load(self) -> float:
        return self.active / self.max_streams


def balancer(region: str = "", gpus: tuple[str, ...] = (), seed: int = 7) -> PowerOfTwoBalancer:
    return PowerOfTwoBalancer(Preference(region=region, gpu_types=gpus), random.Random(seed))


def picks(
    b: PowerOfTwoBalancer, cands: list[Inst], realtime: bool = True, n: int = 300
) -> Counter[str]:
    out: Counter[str] = Counter()
    for _ in range(n):
        chosen = b.choose(cands, realtime)
        assert chosen is not None
        out[chosen.instance_id] += 1
    return out


def test_picks_the_less_loaded_of_two() -> None:
    cands = [Inst("busy", active=3), Inst("idle", active=1)]
    assert picks(balancer(), cands) == Counter({"idle": 300})


def test_never_picks_the_most_loaded_of_several() -> None:
    cands = [Inst("a", active=0), Inst("b", active=2), Inst("c", active=3)]
    counts = picks(balancer(), cands)
    assert counts["c"] == 0
    assert counts["a"] > counts["b"] > 0


def test_draining_and_full_instances_are_excluded() -> None:
    cands = [
        Inst("draining", active=0, serving=False),
        Inst("full", active=4),
        Inst("ok", active=3),
    ]
    assert picks(balancer(), cands) == Counter({"ok": 300})


def test_none_when_nobody_has_room() -> None:
    cands = [Inst("full", active=4), Inst("draining", serving=False)]
    assert balancer().choose(cands, realtime=True) is None
    assert balancer().choose([], realtime=True) is None


def test_exclude_skips_instances_that_failed_the_stream() -> None:
    cands = [Inst("failed", active=0), Inst("other", active=3)]
    chosen = balancer().choose(cands, realtime=True, exclude={"failed"})
    assert chosen is not None and chosen.instance_id == "other"


def test_region_preference_with_spill_over() -> None:
    home = Inst("home", region="eu", active=3)
    away = Inst("away", region="us", active=0)
    b = balancer(region="eu")
    assert picks(b, [home, away]) == Counter({"home": 300})
    home.active = 4
    assert picks(b, [home, away]) == Counter({"away": 300})


def test_gpu_preference_order_with_spill_over() -> None:
    h100 = Inst("h100", gpu_type="H100", active=3)
    l4 = Inst("l4", gpu_type="L4", active=0)
    cpu = Inst("cpu", gpu_type="cpu", active=0)
    b = balancer(gpus=("H100", "L4"))
    assert b.tier(h100, True) < b.tier(l4, True) < b.tier(cpu, True)
    assert picks(b, [h100, l4, cpu]) == Counter({"h100": 300})
    h100.active = 4
    assert picks(b, [h100, l4, cpu]) == Counter({"l4": 300})


def test_realtime_prefers_on_demand_and_batch_prefers_preemptible() -> None:
    od = Inst("od", capacity_class=CAPACITY_ON_DEMAND, active=2)
    pre = Inst("pre", capacity_class=CAPACITY_PREEMPTIBLE, active=0)
    b = balancer()
    assert picks(b, [od, pre], realtime=True) == Counter({"od": 300})
    assert picks(b, [od, pre], realtime=False) == Counter({"pre": 300})
    pre.active = 4
    assert picks(b, [od, pre], realtime=False) == Counter({"od": 300})


def test_region_outranks_capacity_class() -> None:
    b = balancer(region="eu")
    local_pre = Inst("local", region="eu", capacity_class=CAPACITY_PREEMPTIBLE)
    remote_od = Inst("remote", region="us", capacity_class=CAPACITY_ON_DEMAND)
    assert picks(b, [local_pre, remote_od], realtime=True) == Counter({"local": 300})


def test_a_draining_instance_is_only_a_last_resort() -> None:
    draining = Inst("draining", serving=False, draining_time_left=True)
    cands = [Inst("full", active=4), draining]
    assert picks(balancer(), cands, n=20) == Counter({"draining": 20})
    cands = [Inst("room", active=3), draining]
    assert picks(balancer(), cands, n=20) == Counter({"room": 20}), "accepting ones first"


def test_a_last_resort_needs_drain_time_left_room_and_no_exclusion() -> None:
    b = balancer()
    full = Inst("full", active=4)
    assert b.choose([full, Inst("ending", serving=False)], True) is None, "drain ending"
    spent = Inst("spent", serving=False, draining_time_left=True, active=4)
    assert b.choose([full, spent], True) is None, "no room"
    failed = Inst("failed", serving=False, draining_time_left=True)
    assert b.choose([full, failed], True, exclude={"failed"}) is None
    least = [
        Inst("a", 3, serving=False, draining_time_left=True),
        Inst("b", 1, serving=False, draining_time_left=True),
    ]
    assert picks(b, [full, *least], n=20) == Counter({"b": 20}), "the less loaded of two"
