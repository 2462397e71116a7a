"""download.max_per_host: a shard's threads hold at most that many requests to one host,
checked by the simulated web's own count of open connections, and the wait stays inside
each image's deadline."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from zhclip.pipeline.core.config import ConfigError, config_from_dict
from zhclip.pipeline.demo.simweb import SimWeb
from zhclip.pipeline.demo.simweb_spec import host_specs, plan, url_path
from zhclip.pipeline.download.errors import classify_error
from zhclip.pipeline.download.fetch import FetchPolicy, make_fetch_function
from zhclip.pipeline.download.host_slots import HostSlots, url_host

LOOPBACK = ("127.0.0.0/8",)
HOSTS = 4
# The web closes a finished connection a moment after the client has its last byte; a new
# request of the same client may arrive in that moment, so its count may run one over.
CLOSE_RACE = 1


@pytest.fixture(scope="module")
def web():
    with SimWeb(hosts=HOSTS, prewarm=False) as w:
        yield w


def _ok_paths(n: int) -> list[str]:
    return [p for p in (url_path(i) for i in range(4000)) if plan(p).outcome == "ok"][:n]


def _fetch_all(fetch_fn, urls: list[str], threads: int) -> list[tuple]:
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda iu: fetch_fn(iu, 10.0, "zhclip", set()), enumerate(urls)))


@pytest.mark.parametrize("limit", [None, 2])
def test_the_slow_host_sees_at_most_max_per_host_connections(web, limit):
    slow = host_specs(HOSTS)[-1]  # 0.6 s median latency, serves 2 at a time
    urls = [f"http://{slow.address}:{web.port}{p}" for p in _ok_paths(8)]
    fetch_fn = make_fetch_function(FetchPolicy(allow_networks=LOOPBACK, max_per_host=limit))
    web.reset()
    results = _fetch_all(fetch_fn, urls, threads=8)
    assert all(err is None for _, _, err in results), results
    host = web.stats()["per_host"][slow.address]
    if limit is None:  # the 8 threads all connect; 6 queue at the host
        assert host["max_open"] > slow.connection_limit
        assert fetch_fn.slots.waits == 0
    else:
        assert host["max_open"] <= limit + CLOSE_RACE
        assert fetch_fn.slots.waits >= len(urls) - limit and fetch_fn.slots.gave_up == 0


def test_each_host_has_its_own_limit(web):
    slow, fast = host_specs(HOSTS)[-1], host_specs(HOSTS)[0]
    paths = _ok_paths(12)
    urls = [f"http://{slow.address}:{web.port}{p}" for p in paths[:6]]
    urls += [f"http://{fast.address}:{web.port}{p}" for p in paths[6:]]
    fetch_fn = make_fetch_function(FetchPolicy(allow_networks=LOOPBACK, max_per_host=1))
    web.reset()
    assert all(err is None for _, _, err in _fetch_all(fetch_fn, urls, threads=12))
    stats = web.stats()["per_host"]
    assert stats[slow.address]["max_open"] <= 1 + CLOSE_RACE
    assert stats[fast.address]["max_open"] <= 1 + CLOSE_RACE
    assert fetch_fn.slots.gave_up == 0


def test_a_request_waits_for_a_slot_no_longer_than_its_deadline(web):
    slow = host_specs(HOSTS)[-1]
    url = f"http://{slow.address}:{web.port}{_ok_paths(1)[0]}"
    fetch_fn = make_fetch_function(
        FetchPolicy(allow_networks=LOOPBACK, max_per_host=1, deadline=0.3))
    with fetch_fn.slots.slot(url, 1.0):  # another thread holds the host's only slot
        started = time.monotonic()
        key, stream, error = fetch_fn((7, url), 10.0, "zhclip", set())
        waited = time.monotonic() - started
    assert key == 7 and stream is None and classify_error(error) == "timeout"
    assert "download.max_per_host" in error and 0.25 <= waited < 1.0
    assert fetch_fn.slots.gave_up == 1


def test_host_slots_count_concurrency_per_host_only():
    slots, active, peak = HostSlots(3), {"a": 0, "b": 0}, {"a": 0, "b": 0}
    lock = threading.Lock()

    def hold(i: int) -> None:
        host = "a" if i % 2 else "b"
        with slots.slot(f"http://{host}.test/{i}.jpg", 5.0) as free:
            assert free
            with lock:
                active[host] += 1
                peak[host] = max(peak[host], active[host])
            time.sleep(0.05)
            with lock:
                active[host] -= 1

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(hold, range(32)))
    assert peak == {"a": 3, "b": 3}
    assert url_host("HTTP://Img.Example.COM:8080/x") == "img.example.com"
    assert url_host(None) is None and url_host("http://[bad/x") is None
    with HostSlots(None).slot("http://a.test/x", 0.0) as free:  # no limit: never waits
        assert free


def test_max_per_host_is_validated():
    assert config_from_dict({"download": {"max_per_host": 4}}).download.max_per_host == 4
    with pytest.raises((ConfigError, ValueError)):
        config_from_dict({"download": {"max_per_host": 0}})
