"""A peer forwarding its decision: the backoff schedule, what ends the retries, the body it sends, the peer's
own plan, and the forward loop against a real HTTP server on loopback that checks every request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from click.testing import CliRunner

from hecate.adapters import config as config_adapter
from hecate.adapters import peer_client
from hecate.adapters.store import StateStore
from hecate.cli import cli
from hecate.domain import forward, peer
from hecate.domain.config import HecateConfig, Peer, Role, Ups
from hecate.domain.forward import Answer, ForwardRecord, ForwardResult
from hecate.domain.plan import Action, shutdown_plan
from hecate.domain.runs import PEER_FALLBACK, RunKind, RunRecord, RunResult, counts_for_budget
from hecate.domain.trigger import Decision, Reason
from hecate.domain.ups import Flag, Snapshot
from hecate.services import forward as forward_mod

SECRET = b"a-shared-secret-of-enough-length"


def test_backoff_doubles_from_half_a_second_to_five() -> None:
    assert [forward.backoff(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_schedule_uses_the_whole_forwarding_time_and_no_more() -> None:
    # Attempts that each fail at once: the backoff, and one last attempt just before the end.
    assert forward.schedule(10.0, attempt_s=0.0) == [0.0, 0.5, 1.5, 3.5, 7.5, 9.75]
    assert forward.next_wait(5, 0.25) is None
    # Attempts that each time out after 3 s: ten a minute, the last with half a second left.
    assert forward.schedule(60.0) == [0.0, 3.5, 7.5, 12.5, 19.5, 27.5, 35.5, 43.5, 51.5, 59.5]


@pytest.mark.parametrize(("status", "answer"), [
    (200, Answer.accepted), (202, Answer.accepted),
    (None, Answer.retry), (500, Answer.retry), (502, Answer.retry), (503, Answer.retry),
    (409, Answer.retry), (429, Answer.retry), (408, Answer.retry),
    (401, Answer.refused), (400, Answer.refused), (413, Answer.refused), (404, Answer.refused),
    (405, Answer.refused), (302, Answer.refused),
])
def test_what_ends_the_retries(status: int | None, answer: Answer) -> None:
    assert forward.classify(status) is answer


def snap(name: str, **values: object) -> Snapshot:
    return Snapshot(ups=name, at=0.0, status="OB LB", flags=frozenset({Flag.OB, Flag.LB}), **values)  # type: ignore[arg-type]


def test_the_body_carries_the_decision_and_every_readable_ups() -> None:
    decision = Decision(ups="Statera_1", reason=Reason.low_battery, at=5.0, detail="LB " + "x" * 400)
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    body = forward.trigger_body("Tethys", decision, at, [
        snap("Statera_1", runtime_s=42.0, charge_pct=101.0, load_pct=20.0),
        Snapshot(ups="gone", at=0.0, reachable=False, error="refused"),
        snap("-bad-"),
    ])
    assert body.peer == "tethys"
    assert body.reason == "low_battery"
    assert len(body.detail) == 300
    assert body.decided_at == at
    assert body.ups == (peer.UpsReading(name="statera-1", status="OB LB", runtime_s=42.0, charge_pct=100.0,
                                        load_pct=20.0),)
    # It round-trips through the coordinator's strict parser.
    auth = peer.Authenticated(key_id="k", peer="tethys", nonce="n" * 16, timestamp=0.0)
    assert peer.parse_body(peer.encode_body(body), auth) == body
    with pytest.raises(ValueError, match="cannot name a peer"):
        forward.trigger_body("not a name!", decision, at, [])


def test_a_peer_plans_only_its_own_steps() -> None:
    cfg = HecateConfig(role=Role.peer, peer=Peer(coordinator_url="http://c:1", key_id="k",
                                                 secret_file=Path("/s")))
    plan = shutdown_plan(cfg)
    assert [(s.name, [st.action for st in s.steps]) for s in plan.stages] == [
        ("local-poweroff", [Action.local_poweroff])]
    cycled = shutdown_plan(cfg.model_copy(update={"shutdown": cfg.shutdown.model_copy(
        update={"ups_power_cycle": True})}))
    assert [s.name for s in cycled.stages] == ["local-poweroff"]  # no protecting UPS configured: no step
    statera = Ups(name="statera", credentials_file=Path("/c"), set_fsd=True)
    with_fsd = shutdown_plan(cfg.model_copy(update={"ups": [statera]}))
    assert [(s.name, [st.target for st in s.steps]) for s in with_fsd.stages] == [
        ("set-fsd", ["statera"]), ("local-poweroff", ["local"])]  # its own UPS's other machines go down too
    fallback = RunRecord(id="r", kind=RunKind.shutdown, dry_run=False, started_at=datetime.now(UTC), duration_s=0.1,
                         result=RunResult.success, trigger={"source": PEER_FALLBACK})
    assert not counts_for_budget(fallback)  # a peer's own power-off never teaches the cluster's budget


class Coordinator:
    """A real HTTP server on loopback answering ``POST /v1/trigger`` as told, checking each request."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.seen: list[peer.TriggerBody | peer.Refusal] = []
        self.nonces: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        auth = peer.authenticate(request.method, request.path, request.headers, body,
                                 now=datetime.now(UTC).timestamp(), keys={"k1": peer.PeerKey("tethys", SECRET)},
                                 window_s=30)
        if isinstance(auth, peer.Refusal):
            self.seen.append(auth)
            return web.Response(status=auth.status, text=auth.value)
        self.nonces.append(auth.nonce)
        self.seen.append(peer.parse_body(body, auth))
        status = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return web.Response(status=status, text=json.dumps({"status": status}))


@pytest.fixture
async def coordinator() -> AsyncIterator[Coordinator]:
    server = Coordinator([202])
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.port = runner.addresses[0][1]
    try:
        yield server
    finally:
        await runner.cleanup()


def settings(tmp_path: Path, port: int, forward_for_s: float = 3.0, secret: bytes = SECRET) -> Peer:
    path = tmp_path / "peer.secret"
    path.write_bytes(secret + b"\n")
    return Peer(coordinator_url=f"http://127.0.0.1:{port}", key_id="k1", secret_file=path,
                forward_for_s=forward_for_s)


def started(port: int) -> ForwardRecord:
    now = datetime.now(UTC)
    return ForwardRecord(coordinator_url=f"http://127.0.0.1:{port}", peer="tethys", reason="low_battery",
                         decided_at=now, started_at=now)


BODY = peer.TriggerBody(peer="tethys", reason="low_battery", decided_at=datetime(2026, 1, 1, tzinfo=UTC))


async def test_forward_retries_5xx_then_is_accepted_and_remembers_it(tmp_path: Path,
                                                                     coordinator: Coordinator) -> None:
    coordinator.answers = [503, 503, 202]
    store = StateStore(tmp_path / "state")
    forwarder = forward_mod.Forwarder(store)
    record = await forwarder.forward(settings(tmp_path, coordinator.port), BODY, started(coordinator.port))
    assert record.result is ForwardResult.accepted
    assert (record.attempts, record.status) == (3, 202)
    assert record.answer == '{"status": 202}'
    assert coordinator.seen == [BODY, BODY, BODY]
    assert len(set(coordinator.nonces)) == 3  # a fresh nonce per attempt
    assert forwarder.counts == {ForwardResult.accepted: 1}
    assert forward_mod.Forwarder(store).last == record  # survives a restart


async def test_a_refusal_ends_the_retries_at_once(tmp_path: Path, coordinator: Coordinator) -> None:
    forwarder = forward_mod.Forwarder(StateStore(tmp_path / "state"))
    wrong = settings(tmp_path, coordinator.port, forward_for_s=30.0, secret=b"not-the-secret")
    record = await asyncio.wait_for(forwarder.forward(wrong, BODY, started(coordinator.port)), 5)
    assert (record.result, record.attempts, record.status, record.answer) == (
        ForwardResult.refused, 1, 401, "bad_signature")
    assert coordinator.seen == [peer.Refusal.bad_signature]


async def test_no_coordinator_fails_within_the_forwarding_time(tmp_path: Path, coordinator: Coordinator) -> None:
    port = coordinator.port
    forwarder = forward_mod.Forwarder(StateStore(tmp_path / "state"))
    loop = asyncio.get_running_loop()
    begun = loop.time()
    record = await forwarder.forward(settings(tmp_path, 1, forward_for_s=2.0), BODY, started(port))
    assert 2.0 - forward.MIN_ATTEMPT_S <= loop.time() - begun < 2.5
    assert record.result is ForwardResult.failed
    assert record.attempts == len(forward.schedule(2.0, attempt_s=0.0))  # refused connections fail at once
    assert record.status is None
    assert "cannot connect to 127.0.0.1:1" in record.error


async def test_an_unreadable_secret_fails_the_forward_without_a_request(tmp_path: Path,
                                                                        coordinator: Coordinator) -> None:
    forwarder = forward_mod.Forwarder(StateStore(tmp_path / "state"))
    missing = settings(tmp_path, coordinator.port).model_copy(update={"secret_file": tmp_path / "none"})
    record = await forwarder.forward(missing, BODY, started(coordinator.port))
    assert record.result is ForwardResult.failed
    assert "peer.secret_file" in record.error
    assert coordinator.seen == []


def test_a_corrupt_forward_file_is_moved_aside(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state")
    peer_client.forward_path(store).write_text("{not json")
    assert peer_client.load_forward(store) is None
    assert [p.name.split(".corrupt-")[0] for p in store.dir.iterdir() if "corrupt" in p.name] == [
        peer_client.FORWARD_FILE]


REPO = Path(__file__).resolve().parents[2]


def peer_examples() -> list[str]:
    """The peer configurations the docs show: docs/peers.md's and the one commented in the example file."""
    page = (REPO / "docs" / "peers.md").read_text()
    block = next(b for b in (part.split("```", 1)[0] for part in page.split("```yaml\n")[1:]) if "role: peer" in b)
    example = (REPO / "host" / "hecate.example.yaml").read_text().split("# role: peer", 1)[1]
    commented = "role: peer" + "".join(
        line.removeprefix("# ") + "\n" for line in example.split("\n#\n", 1)[0].splitlines())
    return [block, commented]


@pytest.mark.parametrize("text", peer_examples(), ids=["docs-peers", "example-file"])
def test_the_documented_peer_configurations_load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hecate.yaml"
    path.write_text(text)
    cfg = config_adapter.load(path, {})
    assert (cfg.role, cfg.host_name, cfg.peer.key_id) == (Role.peer, "tethys", "tethys-1")


def peer_config(tmp_path: Path, secret: bytes = SECRET) -> Path:
    (tmp_path / "peer.secret").write_bytes(secret)
    (tmp_path / "peer.secret").chmod(0o600)
    path = tmp_path / "hecate.yaml"
    path.write_text(f"role: peer\nhost_name: tethys\nstate_dir: {tmp_path / 'state'}\n"
                    "shutdown:\n  local_poweroff_command: [sh, -c, 'date >> MARKER']\n"
                    f"peer:\n  coordinator_url: http://127.0.0.1:1\n  key_id: k1\n"
                    f"  secret_file: {tmp_path / 'peer.secret'}\n")
    return path


def test_the_command_line_on_a_peer(tmp_path: Path) -> None:
    path = peer_config(tmp_path)
    validated = CliRunner().invoke(cli, ["config", "validate", "--config", str(path)])
    assert validated.exit_code == 0, validated.output
    assert "OK (role peer, forwards to http://127.0.0.1:1 as tethys with key k1" in validated.output
    planned = CliRunner().invoke(cli, ["shutdown", "--config", str(path)])
    assert planned.exit_code == 0, planned.output
    assert "only this host's own steps" in planned.output
    assert "local-poweroff" in planned.output
    assert "drain" not in planned.output
    assert "flux" not in planned.output
    refused = CliRunner().invoke(cli, ["startup", "--config", str(path)])
    assert refused.exit_code == 2
    assert "role peer: a peer starts no cluster" in refused.output
    empty = CliRunner().invoke(cli, ["config", "validate", "--config", str(peer_config(tmp_path, b"\n"))])
    assert empty.exit_code == 2
    assert "peer.secret_file" in empty.output
    assert "empty: it must hold the shared secret" in empty.output
