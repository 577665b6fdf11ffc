"""The synchronous client against the real daemon: begin, use, end; end on exception; each
refusal's reason code; retries that never leave a credential behind."""

from __future__ import annotations

import logging
import pickle
import time

import grpc
import pytest
from conftest import GRANT
from relay import Relay

import credbroker
from credbroker import Broker, Denied, InsufficientScope, Refused, TokenRejected, Unavailable


def wait_for(check, what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_a_task_is_begun_used_and_ended(socket, token, provider, report):
    broker = Broker(socket)
    with broker.task(token, tool="query", grants=[GRANT]) as task:
        cred = task.credential(GRANT)
        report(secret=cred.secret["password"], lease=cred.lease_id)
        assert task.id and task.state.state == "active"
        assert task.state.principal.owner == "alice@example.com"
        assert [c.grant for c in task.credentials] == [GRANT]
        assert cred.provider == "pg" and cred.kind == "test"
        assert cred.public["username"]
        assert cred.secret["password"].startswith("tp_")
        assert cred.expires_at is not None
        # The credential is live at the provider while the block runs.
        assert provider.issued(cred.lease_id)
    assert task.ended and task.state.state == "ended"
    assert task.state.end_reason == "ended_by_workload"
    assert provider.revoked(cred.lease_id) and not provider.issued(cred.lease_id)
    with pytest.raises(KeyError):
        task.credential("s3-read")


def test_manual_begin_renew_and_end(socket, token, provider, report):
    broker = Broker(socket)
    task = broker.begin(token, tool="query", grants=[GRANT], ttl=60)
    lease = task.credentials[0].lease_id
    report(secret=task.credentials[0].secret["password"], lease=lease)
    renewed = task.renew(token, ttl=120)
    assert renewed.state == "active"
    assert task.end().state == "ended"
    # Ending is idempotent, here and at the daemon.
    assert task.end().state == "ended"
    assert broker._end(task.id).state == "ended"
    assert provider.revoked(lease)
    broker.close()


def test_the_task_ends_when_the_block_raises(socket, token, provider, report):
    broker = Broker(socket)
    seen = {}
    with pytest.raises(RuntimeError, match="the tool failed"):
        with broker.task(token, tool="query", grants=[GRANT]) as task:
            seen["lease"] = task.credentials[0].lease_id
            report(secret=task.credentials[0].secret["password"], lease=seen["lease"])
            assert provider.issued(seen["lease"])
            raise RuntimeError("the tool failed")
    assert task.ended
    assert provider.revoked(seen["lease"])


REFUSALS = [
    # (token fixture, grants, exception class, reason, gRPC code)
    ("token_noscope", [GRANT], InsufficientScope, "insufficient_scope", grpc.StatusCode.PERMISSION_DENIED),
    ("token_wrong_aud", [GRANT], TokenRejected, "audience_mismatch", grpc.StatusCode.UNAUTHENTICATED),
    ("garbage", [GRANT], TokenRejected, "malformed", grpc.StatusCode.UNAUTHENTICATED),
    ("token", ["no-such-grant"], Denied, "unknown_grant", None),
    ("token", ["s3-read"], Denied, "grant_not_allowed", grpc.StatusCode.PERMISSION_DENIED),
]


@pytest.mark.parametrize(("which", "grants", "cls", "reason", "code"), REFUSALS, ids=[r[3] for r in REFUSALS])
def test_each_refusal_raises_its_class_with_the_reason_code(request, socket, provider, which, grants, cls, reason, code):
    token = "not-a-token" if which == "garbage" else request.getfixturevalue(which)
    before = provider.outstanding()
    with pytest.raises(cls) as caught:
        Broker(socket).begin(token, tool="query", grants=grants)
    e = caught.value
    assert isinstance(e, Refused)
    assert e.reason == reason, repr(e)
    if code is not None:
        assert e.code == code
    assert str(e).startswith(f"{reason}:")
    for shown in (str(e), repr(e), str(e.metadata)):
        assert token not in shown
    if reason == "insufficient_scope":
        # It says which grant and which scope.
        assert e.grant == GRANT
        assert "mcp.tool:postgres.read" in e.message
    # Nothing was issued.
    assert provider.outstanding() == before


def test_no_daemon_is_unavailable_after_the_retries(tmp_path, token, caplog):
    caplog.set_level(logging.DEBUG, logger="credbroker")
    broker = Broker(str(tmp_path / "nothing.sock"), retry_for=0.5)
    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        broker.begin(token, tool="query", grants=[GRANT])
    # 50 + 100 + 200 ms of backoff; the next wait would pass the deadline.
    assert time.monotonic() - started >= 0.3
    assert caplog.text.count("retrying") == 3, caplog.text
    assert caught.value.reason is None and caught.value.transport
    assert token not in str(caught.value) and token not in repr(caught.value)


def test_a_daemon_that_comes_up_late_is_waited_for(tmp_path, socket, token, provider, report):
    path = str(tmp_path / "late.sock")
    with Relay(socket, path, listen_after=0.6) as relay:
        with Broker(path).task(token, tool="query", grants=[GRANT]) as task:
            report(secret=task.credentials[0].secret["password"], lease=task.credentials[0].lease_id)
        assert relay.connections >= 1
    assert provider.revoked(task.credentials[0].lease_id)


def test_a_lost_answer_is_replayed_and_leaves_no_credential_behind(tmp_path, socket, token, provider, report):
    """The first answer is lost after the daemon began a task: the retry with the same key gets
    `begin_replayed` (the daemon ended that task), and the client begins afresh."""
    path = str(tmp_path / "lossy.sock")
    before = set(provider.outstanding())
    with Relay(socket, path, lose_first_answer=True) as relay:
        broker = Broker(path)
        task = broker.begin(token, tool="query", grants=[GRANT])
        lease = task.credentials[0].lease_id
        report(secret=task.credentials[0].secret["password"], lease=lease)
        assert relay.answers_lost == 1 and relay.connections >= 2
        # Only the task the client knows about holds a live credential.
        wait_for(lambda: set(provider.outstanding()) - before == {lease}, "the replayed task's lease revoked")
        task.end()
        broker.close()
    assert provider.revoked(lease)


def test_nothing_secret_in_a_repr_or_a_log_line(socket, token, caplog, capsys, report):
    caplog.set_level(logging.DEBUG, logger="credbroker")
    broker = Broker(socket)
    with broker.task(token, tool="query", grants=[GRANT]) as task:
        cred = task.credential(GRANT)
        secret = cred.secret["password"]
        report(secret=secret, lease=cred.lease_id)
        print(task, cred, cred.secret, task.credentials, task.state, broker)
        logging.getLogger("credbroker").info("%s %r", cred, task)
        with pytest.raises(TypeError):
            pickle.dumps(cred.secret)
    out = capsys.readouterr()
    shown = out.out + out.err + caplog.text
    assert cred.lease_id in shown, "the ids are shown"
    assert "password" in shown, "the secret's key is shown"
    assert secret not in shown
    assert token not in shown
    # The values are still there for whoever asks by key.
    assert dict(cred.secret) == {"password": secret}


def test_bad_arguments_are_typed_errors(socket, token):
    broker = Broker(socket)
    with pytest.raises(TypeError):
        broker.begin(token, tool="query", grants=GRANT)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        broker.begin(token, tool="query", grants=[])
    with pytest.raises(ValueError):
        broker.begin(token, tool="query", grants=[GRANT], narrow={"other": {"items": ["x"]}})


def test_the_package_exports_its_api():
    for name in credbroker.__all__:
        assert getattr(credbroker, name) is not None
