"""The local server obeys only its user: Host (DNS rebinding), Origin (any page the user visits), JSON bodies only,
objectives by name (never a path), objectives loaded after admission, one job at a time even when a caller leaves."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from pathlib import Path

import httpx
import pytest

from sia_local.core.config import SteerConfig
from sia_local.llama import LM
from sia_local.rewards.reward import OnnxReward
from sia_local.serve.server import Engine, OriginPolicy, create_app
from sia_local.core.steer import Steerer
from servers import _free_port, _Server

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def steerer(tiny_gguf: Path, tiny_reward: Path) -> Steerer:
    return Steerer(LM(tiny_gguf, n_ctx=256), OnnxReward(tiny_reward, provider="cpu"), SteerConfig(tau=1.3, max_tokens=4))


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict]:
    """One HTTP/1.1 request written by hand (httpx would set Host itself); the status and the JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    payload = data.split(b"\r\n\r\n", 1)[1]
    return status, json.loads(payload) if payload.startswith(b"{") else {}


def test_host_headers_that_do_not_name_this_server_are_refused(steerer: Steerer) -> None:
    port = _free_port()
    with _Server(create_app(steerer, model_id="tiny"), port):
        body = json.dumps(CHAT).encode()
        for host, ok in [(f"127.0.0.1:{port}", True), (f"localhost:{port}", True), (f"[::1]:{port}", True), ("app.localhost", True),
                         (f"attacker.example:{port}", False), ("attacker.example", False), (f"127.0.0.1.nip.io:{port}", False),
                         (f"192.168.1.20:{port}", False), (f"LOCALHOST.:{port}", True)]:
            status, out = raw_request(port, f"POST /v1/chat/completions HTTP/1.1\nHost: {host}\nContent-Type: application/json\n"
                                            f"Content-Length: {len(body)}\nConnection: close\n", body)
            assert (status == 200) is ok, (host, status, out)
            if not ok:
                assert status == 403 and out["error"]["code"] == "host_not_allowed" and "--allowed-host" in out["error"]["message"]
        status, _ = raw_request(port, f"GET /v1/sia/settings HTTP/1.1\nHost: rebind.attacker.example:{port}\nConnection: close\n")
        assert status == 403  # reading is refused too: a rebound page learns nothing
    port = _free_port()
    with _Server(create_app(steerer, model_id="tiny", allowed_hosts=["sia.lan"]), port):
        status, _ = raw_request(port, f"GET /health HTTP/1.1\nHost: sia.lan:{port}\nConnection: close\n")
        assert status == 200


def test_the_host_rule(steerer: Steerer) -> None:
    loopback = OriginPolicy("127.0.0.1", [], [])
    assert loopback.host_ok("127.0.0.1:8000") and loopback.host_ok("127.0.0.2") and loopback.host_ok("[::1]:8000")
    assert not loopback.host_ok("10.0.0.5:8000") and not loopback.host_ok("evil.com")
    everywhere = OriginPolicy("0.0.0.0", [], [])
    assert everywhere.host_ok("10.0.0.5:8000") and everywhere.host_ok("[fe80::1]:8000") and not everywhere.host_ok("evil.com:8000")
    assert OriginPolicy("127.0.0.1", ["*"], []).host_ok("anything.example")


def test_cross_origin_pages_cannot_drive_the_server(steerer: Steerer) -> None:
    port = _free_port()
    app = create_app(steerer, model_id="tiny")
    with _Server(app, port) as s:
        own = httpx.post(s.url + "/v1/chat/completions", json=CHAT, headers={"origin": f"http://127.0.0.1:{port}"}, timeout=60)
        assert own.status_code == 200  # the page this server serves itself
        for origin in ("https://evil.example", "null", f"http://localhost:{port + 1}"):
            r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, headers={"origin": origin}, timeout=60)
            assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed" and "--allowed-origin" in r.json()["error"]["message"]
            assert "access-control-allow-origin" not in r.headers
        # a form post needs no CORS preflight: it must not run a generation even without an Origin header
        r = httpx.post(s.url + "/v1/chat/completions", content=json.dumps(CHAT), headers={"content-type": "text/plain"}, timeout=60)
        assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
        r = httpx.post(s.url + "/v1/completions", data={"prompt": "hi"}, timeout=60)  # application/x-www-form-urlencoded
        assert r.status_code == 415
        assert app.state.engine.served == 1
    with _Server(create_app(steerer, model_id="tiny", allow_origins=["http://localhost:3000"]), _free_port()) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3000"}, timeout=60)
        assert r.status_code == 200 and r.headers.get("access-control-allow-origin") == "http://localhost:3000"
        pre = httpx.options(s.url + "/v1/chat/completions", headers={"origin": "http://localhost:3000", "access-control-request-method": "POST",
                                                                     "access-control-request-headers": "content-type"})
        assert pre.status_code == 200
        r = httpx.post(s.url + "/v1/chat/completions", json=CHAT, headers={"origin": "http://localhost:3001"}, timeout=60)
        assert r.status_code == 403


def test_requests_name_objectives_never_paths(steerer: Steerer, tiny_reward: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "id_ed25519").write_text("key")
    with _Server(create_app(steerer, model_id="tiny"), _free_port()) as s:
        messages = set()
        for name in (str(secret / "id_ed25519"), str(secret), str(tmp_path / "missing"), str(tiny_reward), "../../etc", "no-such-objective"):
            r = httpx.post(s.url + "/v1/chat/completions", json={**CHAT, "sia": {"rewards": [{"name": name}]}}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_objective", name
            messages.add(r.json()["error"]["message"].replace(repr(name[:60]), "NAME"))
        assert len(messages) == 1  # the same answer whether a path exists, is a file, a folder, or a real reward folder
    dirs = tmp_path / "objectives"
    dirs.mkdir()
    import shutil

    shutil.copytree(tiny_reward, dirs / "tiny-rm")
    with _Server(create_app(steerer, model_id="tiny", objective_dirs=[str(dirs)]), _free_port()) as s:
        r = httpx.post(s.url + "/v1/chat/completions", json={**CHAT, "sia": {"rewards": [{"name": "tiny-rm"}], "gate": "dense"}}, timeout=60)
        assert r.status_code == 200, r.text
        listed = httpx.get(s.url + "/v1/sia/settings").json()["objectives"]
        assert any(o["name"] == "tiny-rm" for o in listed)


def test_objectives_load_after_admission(steerer: Steerer, tiny_reward: Path, tmp_path: Path) -> None:
    """A full queue refuses a request before its objectives are loaded (loading is work the queue bounds)."""
    app = create_app(steerer, model_id="tiny", max_queue=0, parallel=1, objective_dirs=[str(tiny_reward)])
    engine: Engine = app.state.engine
    loads = []
    original = engine.mixes.get
    engine.mixes.get = lambda specs: (loads.append(specs), original(specs))[1]  # type: ignore[method-assign]
    holding, release = threading.Event(), threading.Event()

    def hold(_: int, piece: object) -> None:  # the one slot's first token waits here: the slot stays taken
        holding.set()
        release.wait()

    async def scenario() -> tuple[int, int]:
        from sia_local.serve.openai_api import ApiError

        blocker = await engine.submit("hello", {"raw": True, "gate": "none", "max_tokens": 4}, threading.Event(), on_piece=hold)
        await asyncio.to_thread(holding.wait)
        try:
            async for _ in engine.run("hi", {"raw": True}, threading.Event(), ((str(tiny_reward), 1.0),)):
                pass
            refused = 0
        except ApiError as exc:
            refused = exc.status
        release.set()
        await blocker
        return refused, len(loads)

    try:
        assert asyncio.run(scenario()) == (503, 0)
    finally:
        engine.slots.close()
