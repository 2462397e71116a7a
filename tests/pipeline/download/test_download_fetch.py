"""The guarded fetch path against the real loopback server (no Beam).

Only loopback is ever connected to: the non-public targets named here
(10.0.0.1, 169.254.169.254) must be refused before any connection is made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from zhclip.pipeline.core.reasons import (
    CONNECTION,
    DISALLOWED_BY_HEADER,
    PRIVATE_ADDRESS,
    SCHEME_NOT_ALLOWED,
)
from zhclip.pipeline.demo.imageserver import ImageServer, render_image
from zhclip.pipeline.download.errors import classify_error
from zhclip.pipeline.download.fetch import (
    FetchPolicy,
    guarded_fetch_installed,
    make_fetch_function,
    robots_tag_disallows,
)

LOOPBACK = ("127.0.0.0/8",)
DIRECTIVES = {"noai", "noimageai"}


@pytest.fixture(scope="module")
def server():
    with ImageServer(slow_seconds=1.0) as srv:
        yield srv


def fetch(policy: FetchPolicy, url: str, timeout: float = 2.0):
    _, stream, err = make_fetch_function(policy)((7, url), timeout, "zhclip", DIRECTIVES)
    return stream, err


def test_loopback_is_blocked_directly_and_through_dns_by_default(server):
    before = server.request_count("/img/a.jpg")
    for url in (server.image_url("a"), server.image_url("a").replace("127.0.0.1", "localhost")):
        stream, err = fetch(FetchPolicy(), url)
        assert stream is None and classify_error(err) == PRIVATE_ADDRESS, err
    assert server.request_count("/img/a.jpg") == before  # nothing reached the server


def test_allow_networks_lifts_the_guard_directly_and_through_dns(server):
    policy = FetchPolicy(allow_networks=LOOPBACK)
    for url in (server.image_url("a"), server.image_url("a").replace("127.0.0.1", "localhost")):
        stream, err = fetch(policy, url)
        assert err is None and stream.getvalue() == render_image("a", "jpg")


@pytest.mark.parametrize("kind", ["redirect_private", "redirect_metadata"])
def test_redirect_to_private_address_is_blocked(server, kind):
    stream, err = fetch(FetchPolicy(allow_networks=LOOPBACK), server.fault_url(kind))
    assert stream is None and classify_error(err) == PRIVATE_ADDRESS, err


def test_redirect_guard_follows_allow_networks(server):
    # 127.0.0.2 is loopback but outside 127.0.0.1/32: refused without connecting.
    target = f"http://127.0.0.2:{server.port}/img/a.jpg"
    _, err = fetch(FetchPolicy(allow_networks=("127.0.0.1/32",)), server.redirect_url(target))
    assert classify_error(err) == PRIVATE_ADDRESS, err
    # With 127.0.0.0/8 allowed the redirect is followed; nobody listens there, so the
    # connection itself is refused: the guard was lifted, and traffic stayed on loopback.
    _, err = fetch(FetchPolicy(allow_networks=LOOPBACK), server.redirect_url(target))
    assert classify_error(err) == CONNECTION, err
    # A redirect back to the server itself works.
    stream, err = fetch(FetchPolicy(allow_networks=LOOPBACK), server.redirect_url(server.image_url("b")))
    assert err is None and stream.getvalue() == render_image("b", "jpg")


def test_redirect_to_file_scheme_is_refused(server):
    policy = FetchPolicy(schemes=("http", "https", "file"), allow_networks=LOOPBACK)
    _, err = fetch(policy, server.redirect_url("file:///etc/hostname"))
    assert classify_error(err) == SCHEME_NOT_ALLOWED, err


def test_file_urls_only_when_the_scheme_is_listed(tmp_path: Path):
    image = tmp_path / "local image.jpg"
    image.write_bytes(render_image("local", "jpg"))
    url = image.as_uri()
    stream, err = fetch(FetchPolicy(schemes=("http", "https", "file")), url)
    assert err is None and stream.getvalue() == image.read_bytes()
    stream, err = fetch(FetchPolicy(), url)
    assert stream is None and classify_error(err) == SCHEME_NOT_ALLOWED


def test_file_urls_read_only_under_a_sources_image_root(tmp_path: Path):
    """A listed file scheme is not a licence to read the machine: only image_root folders."""
    from zhclip.pipeline.core.config import config_from_dict

    root = tmp_path / "coco" / "images"
    root.mkdir(parents=True)
    inside = root / "a.jpg"
    inside.write_bytes(render_image("in", "jpg"))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(render_image("out", "jpg"))
    (root / "link.jpg").symlink_to(secret)
    cfg = config_from_dict({
        "output": str(tmp_path / "out"),
        "sources": [{"name": "coco", "kind": "coco", "paths": [str(tmp_path / "c.json")],
                     "image_root": str(root)}],
        "filters": {"urls": {"schemes": ["http", "https", "file"]}},
    })
    policy = FetchPolicy.from_config(cfg)
    assert policy.file_roots == (str(root.resolve()),)
    stream, err = fetch(policy, inside.as_uri())
    assert err is None and stream.getvalue() == inside.read_bytes()
    for url in (secret.as_uri(), (root / "link.jpg").as_uri(), f"file://{root}/../../secret.jpg",
                "file:///etc/hostname", f"file://{str(root)[:-1]}"):
        stream, err = fetch(policy, url)
        assert stream is None and classify_error(err) == SCHEME_NOT_ALLOWED, (url, err)
        assert "outside every source's image_root" in err


def test_robots_tag_parsing():
    from email.message import Message

    def headers(*values):
        m = Message()
        for v in values:
            m["X-Robots-Tag"] = v
        return m

    assert robots_tag_disallows(headers("noai"), "zhclip", DIRECTIVES)
    assert robots_tag_disallows(headers("zhclip: noimageai, nofollow"), "zhclip", DIRECTIVES)
    assert not robots_tag_disallows(headers("otherbot: noai"), "zhclip", DIRECTIVES)
    assert not robots_tag_disallows(headers("nofollow"), "zhclip", DIRECTIVES)
    assert not robots_tag_disallows(headers("noai"), "zhclip", set())


def test_noai_header_is_respected(server):
    _, err = fetch(FetchPolicy(allow_networks=LOOPBACK), server.fault_url("robots_noai"))
    assert classify_error(err) == DISALLOWED_BY_HEADER


def test_installing_into_img2dataset_is_scoped():
    from zhclip.pipeline.download.img2dataset_glue import img2dataset_module

    d = img2dataset_module("downloader")

    original = d.download_image
    with guarded_fetch_installed(FetchPolicy()):
        assert d.download_image is not original
        with guarded_fetch_installed(FetchPolicy()):  # same policy nests
            pass
        assert d.download_image is not original
    assert d.download_image is original


def test_responses_over_the_size_cap_are_refused(server):
    from zhclip.pipeline.core.reasons import RESPONSE_TOO_LARGE

    policy = FetchPolicy(allow_networks=LOOPBACK, max_response_bytes=200)
    stream, err = fetch(policy, server.image_url("big", "jpg", 300, 300))
    assert stream is None and classify_error(err) == RESPONSE_TOO_LARGE
    stream, err = fetch(FetchPolicy(allow_networks=LOOPBACK), server.image_url("big", "jpg", 300, 300))
    assert err is None and len(stream.getvalue()) > 200


# --- one lookup per host per shard, every address still checked ----------------------


def test_a_host_is_resolved_once_per_shard_and_checked_on_every_connection(server, monkeypatch):
    import socket

    from zhclip.pipeline.download import guard

    asked: list[str] = []
    blocked_name = "metadata.test"

    def resolve(host, port, *rest):
        asked.append(host)
        if host == blocked_name:  # a name that answers with the cloud metadata address
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]
        if host == "nowhere.test":
            raise socket.gaierror(socket.EAI_NONAME, "no such host")
        return socket.getaddrinfo("127.0.0.1", port, *rest)

    monkeypatch.setattr(guard, "resolve", resolve)
    fetch_fn = make_fetch_function(FetchPolicy(allow_networks=LOOPBACK))
    port = server.port
    for i in range(4):
        _, stream, err = fetch_fn((i, f"http://images.test:{port}/img/h{i}.jpg"), 2.0, "z", set())
        assert err is None and stream is not None, err
    for i in range(3):  # the cached answer is refused each time, never connected to
        _, stream, err = fetch_fn((i, f"http://{blocked_name}:{port}/a{i}.jpg"), 2.0, "z", set())
        assert stream is None and classify_error(err) == PRIVATE_ADDRESS, err
    for i in range(2):  # a failed lookup is remembered too
        _, stream, err = fetch_fn((i, f"http://nowhere.test:{port}/a{i}.jpg"), 2.0, "z", set())
        assert stream is None and err
    assert sorted(asked) == sorted(["images.test", blocked_name, "nowhere.test"])
    assert fetch_fn.answers.lookups == 3 and fetch_fn.answers.connections == 9


def test_the_answer_table_stays_bounded_and_expires(monkeypatch):
    import socket

    from zhclip.pipeline.download import guard

    calls: list[str] = []

    def resolve(host, port, *rest):
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(guard, "resolve", resolve)
    answers = guard.HostAnswers(max_entries=3, max_age=60.0)
    for i in range(10):
        answers.addresses(f"h{i}.test", 80)
    assert len(answers._answers) <= 3 and answers.lookups == 10
    answers.addresses("h9.test", 80)
    assert answers.lookups == 10  # fresh: from the table
    expired = guard.HostAnswers(max_age=0.0)
    expired.addresses("a.test", 80)
    expired.addresses("a.test", 80)
    assert expired.lookups == 2


def test_a_temporary_lookup_failure_is_asked_again(monkeypatch):
    import socket

    import pytest
    from zhclip.pipeline.download import guard

    failures = [socket.gaierror(socket.EAI_AGAIN, "try again")]

    def resolve(host, port, *rest):
        if failures:
            raise failures.pop()
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(guard, "resolve", resolve)
    answers = guard.HostAnswers()
    with pytest.raises(socket.gaierror):
        answers.addresses("flaky.test", 80)
    assert answers.addresses("flaky.test", 80)[0][4][0] == "127.0.0.1"
    assert answers.lookups == 2


def test_threads_asking_one_name_at_once_share_one_lookup(monkeypatch):
    import socket
    import time
    from concurrent.futures import ThreadPoolExecutor

    from zhclip.pipeline.download import guard

    def slow_resolve(host, port, *rest):
        time.sleep(0.2)  # a real resolver's round trip: the other threads arrive meanwhile
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(guard, "resolve", slow_resolve)
    answers = guard.HostAnswers()
    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(lambda i: answers.addresses(f"h{i % 2}.test", 80), range(32)))
    assert all(a[0][4][0] == "127.0.0.1" for a in got)
    assert answers.lookups == 2 and answers.connections == 32
