"""fetch.py against a loopback server with dead, slow, HTML and flaky URLs."""
from __future__ import annotations

import json

import pytest

from clipdetect.cli.main import main
from clipdetect.data.fetch import FetchStore, fetch_many, fetch_one, url_key

from helpers.d3 import ROUTES, real_bytes, real_url, serve_reals

QUICK_RETRIES = dict(timeout=(1.0, 0.6), retries=1, backoff=0.01, progress=False)


@pytest.fixture(scope="module")
def server():
    with serve_reals() as srv:
        yield srv


def _urls(srv):
    return [real_url(srv.base_url, i) for i in range(len(ROUTES))]


def test_fetch_many_store_ledger_and_no_refetch(server, tmp_path):
    urls = _urls(server)
    store = FetchStore(tmp_path / "store")
    stats = fetch_many(urls + urls[:2], store=store, workers=4, **QUICK_RETRIES)  # duplicates fetched once
    assert (stats.requested, stats.unique, stats.fetched, stats.failed) == (8, 6, 3, 3)
    assert stats.reasons == {"not_found": 1, "timeout": 1, "not_an_image": 1}
    for i, route in enumerate(ROUTES):
        path = store.get(urls[i])
        if route in ("ok", "flaky"):
            assert path is not None and open(path, "rb").read() == real_bytes(i)
            h = url_key(urls[i])
            assert path.endswith(f"objects/{h[:2]}/{h[2:4]}/{h}")
        else:
            assert path is None
    ledger = [json.loads(line) for line in (tmp_path / "store" / "failures.jsonl").read_text().splitlines()]
    by_url = {r["url"]: r for r in ledger}
    assert set(by_url) == {urls[2], urls[3], urls[4]}
    assert by_url[urls[2]]["status"] == 404 and by_url[urls[2]]["attempts"] == 1  # 404 is not retried
    assert by_url[urls[3]]["reason"] == "timeout" and by_url[urls[3]]["attempts"] == 2  # transient: retried
    assert by_url[urls[4]]["attempts"] == 1 and "time" in by_url[urls[4]]
    flaky = f"/flaky/{urls[5].rsplit('/', 1)[1]}"
    assert server.hits[flaky] == 2  # one 500, then the image

    before = dict(server.hits)
    again = fetch_many(urls, store=FetchStore(tmp_path / "store"), workers=4, **QUICK_RETRIES)
    assert dict(server.hits) == before, "a second run must not touch the network"
    assert (again.cached, again.skipped_failed, again.fetched, again.failed) == (3, 3, 0, 0)

    retried = fetch_many(urls, store=store, workers=4, retry_failed=True, **QUICK_RETRIES)
    assert retried.failed == 3 and retried.cached == 3
    assert server.hits[f"/dead/{urls[2].rsplit('/', 1)[1]}"] == 2


def test_limits_and_bad_urls(server):
    url = real_url(server.base_url, 0)
    res = fetch_one(url, max_bytes=100, **{k: v for k, v in QUICK_RETRIES.items() if k != "progress"})
    assert not res.ok and res.reason == "too_large" and res.attempts == 1
    assert fetch_one("ftp://example.invalid/x.jpg").reason == "bad_url"
    dead_port = fetch_one("http://127.0.0.1:9/x.jpg", timeout=(0.3, 0.3), retries=1, backoff=0.01)
    assert dead_port.reason == "connection" and dead_port.attempts == 2
    good = fetch_one(url, timeout=(1.0, 1.0))
    assert good.ok and good.data == real_bytes(0) and good.status == 200


def test_fetch_many_rejects_bad_workers(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        fetch_many([], store=tmp_path, workers=0)


def test_command_line_parts_share_one_store(server, tmp_path, capsys):
    urls = _urls(server)
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")
    common = ["fetch", "--urls", str(tmp_path / "urls.txt"), "--store", str(tmp_path / "s"), "--timeout", "1", "0.6",
              "--retries", "1", "--backoff", "0.01", "--workers", "3", "--json"]
    for part in ("0/2", "1/2"):  # rows 0,2,4 then 1,3,5: two processes, one store
        assert main(common + ["--part", part]) == 0
    out = [json.loads(chunk) for chunk in capsys.readouterr().out.replace("}\n{", "}\0{").split("\0")]
    assert [(o["fetched"], o["failed"]) for o in out] == [(1, 2), (2, 1)]
    ledgers = sorted(p.name for p in (tmp_path / "s").glob("failures*"))
    assert ledgers == ["failures-0-of-2.jsonl", "failures-1-of-2.jsonl"]
    assert len(FetchStore(tmp_path / "s").failures()) == 3
    with pytest.raises(SystemExit):
        main(common + ["--part", "2/2"])
    assert "K/N" in capsys.readouterr().err


def test_a_fifo_planted_as_a_ledger_is_skipped_on_read_and_refused_on_write(tmp_path):
    import os

    from clipdetect.core.io import WriteError

    store = FetchStore(tmp_path / "s")
    os.mkfifo(tmp_path / "s" / "failures-9-of-9.jsonl")  # another part's ledger: reading it would block
    (tmp_path / "s" / "failures.jsonl").write_text(json.dumps({"url": "u1", "reason": "http"}) + "\n")
    assert set(store.failures()) == {"u1"}
    mine = FetchStore(tmp_path / "s", ledger="failures-9-of-9.jsonl")
    with pytest.raises(WriteError, match="not a regular file"):
        mine.record_failure({"url": "u2", "reason": "http"})
