"""The LLM client: litellm mock_response units, and end to end through litellm against a
local fake OpenAI-compatible server on 127.0.0.1 replaying scripted (bad) replies."""

import http.server
import json
import pathlib
import subprocess
import sys
import threading
import time
from typing import Literal

import pydantic
import pytest

pytest.importorskip("litellm")
# litellm's own pydantic models warn about ReadOnly TypedDict items; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:pydantic.*")

from leads_jax.agent._llm import (  # noqa: E402
    LLMBudgetExhausted,
    LLMClient,
    LLMConfigError,
    LLMUnavailable,
    extract_json_object,
    redact,
)

FAKE_KEY = "sk-test-FAKEKEY-0123456789abcdef"


class Action(pydantic.BaseModel):
    """A small stand-in for the agent's typed actions."""

    kind: Literal["swap_reaction", "stop"]
    reaction: str | None = None


CATALOG = {"aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"}


def check_action(a: Action):
    if a.kind == "swap_reaction" and a.reaction not in CATALOG:
        return (f"rule unknown-reaction, field reaction: {a.reaction!r} is not in the catalog "
                f"{sorted(CATALOG)}")
    return None


# -- unit cases with litellm's mock_response ---------------------------------------------
def test_mock_reply_parsed_with_prose_and_fences(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    raw = 'Sure! Here it is:\n```json\n{"kind": "swap_reaction", "reaction": "aliev-panfilov"}\n```'
    c = LLMClient("openai/gpt-4o-mini", mock_response=raw)
    r = c.ask([{"role": "user", "content": "propose"}], Action)
    assert r.ok and r.parsed == Action(kind="swap_reaction", reaction="aliev-panfilov")
    assert r.rejection is None and r.raw == raw
    assert r.usage.prompt_tokens > 0 and r.usage.cost_usd > 0  # gpt-4o-mini is priced
    assert c.total_tokens == r.usage.total_tokens and c.total_cost == r.usage.cost_usd


def test_mock_invalid_replies_are_rejected_with_reasons(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    c = LLMClient("openai/gpt-4o-mini", mock_response='{"kind": "teleport", "reaction": 3}')
    r = c.ask([{"role": "user", "content": "x"}], Action)
    assert r.parsed is None and "field kind" in r.rejection and "field reaction" in r.rejection
    assert c.n_invalid == 1
    c = LLMClient("openai/gpt-4o-mini", mock_response="{'kind': 'stop',}")
    r = c.ask([{"role": "user", "content": "x"}], Action)
    assert r.parsed is None and "not valid JSON" in r.rejection


def test_mock_token_budget_refuses_without_sending(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    c = LLMClient("openai/gpt-4o-mini", mock_response='{"kind": "stop"}', max_tokens=1)
    assert c.ask([{"role": "user", "content": "x"}], Action).ok
    assert c.budget_exhausted
    sent = c.n_requests
    with pytest.raises(LLMBudgetExhausted):
        c.ask([{"role": "user", "content": "x"}], Action)
    assert c.n_requests == sent and c.transcript[-1]["event"] == "refused"
    assert isinstance(LLMBudgetExhausted("x"), LLMUnavailable)


def test_configuration_errors_before_any_work(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(LLMConfigError, match="OPENAI_API_KEY"):
        LLMClient("openai/gpt-4o-mini")
    with pytest.raises(LLMConfigError, match="dummy"):
        LLMClient("openai/local", api_base="http://127.0.0.1:9/v1")
    with pytest.raises(LLMConfigError, match="provider"):
        LLMClient("no-such-provider-model-xyz")
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    for bad in ({"max_cost": 0}, {"max_tokens": -5}, {"max_retries": -1}, {"timeout_s": 0}):
        with pytest.raises(LLMConfigError):
            LLMClient("openai/gpt-4o-mini", **bad)


def test_redact_and_extract(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-very-secret-value")
    text = ("Authorization: Bearer abcdef123456 api_key=zzz-999-yyy sk-proj-ABCDEFGH12345 "
            "ghp_abcdefghijk12345 token tok-very-secret-value")
    out = redact({"headers": {"Authorization": "Bearer x"}, "msg": [text]})
    flat = json.dumps(out)
    for secret in ("abcdef123456", "zzz-999-yyy", "sk-proj-ABCDEFGH12345", "ghp_abcdefghijk12345",
                   "tok-very-secret-value", "Bearer x"):
        assert secret not in flat
    assert extract_json_object('noise {"a": {"b": [1, 2]}} tail {"c": 1}') == {"a": {"b": [1, 2]}}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json_object("[1, 2]")


def test_import_leads_jax_does_not_import_litellm():
    code = ("import sys, leads_jax, leads_jax.agent, leads_jax.agent._llm, leads_jax.agent._expr; "
            "assert 'litellm' not in sys.modules, 'litellm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- end to end against a fake OpenAI-compatible server -----------------------------------
class FakeOpenAI:
    """A local /v1/chat/completions endpoint replaying a script of replies:
    ``{"content": str, "usage": (prompt, completion)}``, ``{"status": 429|500}`` or
    ``{"delay": seconds, ...}``. Records every request (body and headers)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                fake.requests.append({"path": self.path, "body": body,
                                      "headers": dict(self.headers)})
                step = fake.script.pop(0) if fake.script else {"status": 500}
                if step.get("delay"):
                    time.sleep(step["delay"])
                status = step.get("status", 200)
                if status != 200:
                    msg = {"error": {"message": step.get("message", f"scripted {status}"),
                                     "type": "server_error", "code": status}}
                    payload = json.dumps(msg).encode()
                else:
                    p, c = step.get("usage", (50, 20))
                    payload = json.dumps({
                        "id": f"chatcmpl-{len(fake.requests)}", "object": "chat.completion",
                        "created": int(time.time()), "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": step["content"]}}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c,
                                  "total_tokens": p + c},
                    }).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # client timed out
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def make(script):
        s = FakeOpenAI(script)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


PAYLOAD = "__import__('os').system('touch {marker}')"


def test_end_to_end_scripted_faults(fake_server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    marker = tmp_path / "EXECUTED"
    script = [
        {"content": "I think we should " + PAYLOAD.format(marker=marker) + " {oops"},  # bad JSON
        {"content": '{"kind": "teleport", "reaction": "aliev-panfilov"}'},  # unknown action
        {"content": '{"kind": "swap_reaction", "reaction": "hodgkin-huxley-9000"}'},  # invalid
        {"delay": 1.5, "content": '{"kind": "stop"}'},  # times out
        {"status": 429, "message": "slow down"},
        {"status": 500, "message": f"internal error; Incorrect API key provided: {FAKE_KEY}"},
        # valid, but its usage (1M prompt tokens of gpt-4o-mini) exceeds the cost budget
        {"content": '{"kind": "swap_reaction", "reaction": "fitzhugh-nagumo"}',
         "usage": (1_000_000, 10)},
    ]
    server = fake_server(script)
    sleeps, checked = [], []

    def check(a):
        checked.append(a)
        return check_action(a)

    c = LLMClient("openai/gpt-4o-mini", api_base=server.url, timeout_s=0.5, max_retries=3,
                  max_invalid=4, max_cost=0.01, sleep=sleeps.append)
    assert c.structured  # litellm says gpt-4o-mini supports response schemas
    reply = c.ask_until_valid([{"role": "user", "content": "propose one action"}], Action, check)
    assert reply.parsed == Action(kind="swap_reaction", reaction="fitzhugh-nagumo")
    assert sleeps == [1.0, 2.0, 4.0]  # exponential backoff over timeout, 429, 500
    assert c.n_invalid == 3
    assert c.total_cost > 0.01 and c.budget_exhausted
    assert all(isinstance(a, Action) for a in checked) and len(checked) == 2
    assert not marker.exists()  # nothing in a reply is executed

    # every bad reply is in the transcript with its rejection reason
    replies = [e for e in c.transcript if e["event"] in ("reply", "rejected")]
    reasons = [e["rejection"] for e in replies if e.get("rejection")]
    assert any("not valid JSON" in r for r in reasons)
    assert any("field kind" in r for r in reasons)
    assert any("unknown-reaction" in r for r in reasons)
    errors = [e["kind"] for e in c.transcript if e["event"] == "error"]
    assert errors == ["Timeout", "RateLimitError", "InternalServerError"]
    assert any(e["event"] == "budget" for e in c.transcript)

    # the budget is spent: refused, and no request reaches the server
    n = len(server.requests)
    with pytest.raises(LLMBudgetExhausted):
        c.ask([{"role": "user", "content": "again"}], Action)
    assert len(server.requests) == n

    # the request used the key and the schema; the written files never contain the key
    headers = {k.lower(): v for k, v in server.requests[0]["headers"].items()}
    assert headers.get("authorization") == f"Bearer {FAKE_KEY}"
    assert "response_format" in server.requests[0]["body"]
    path = c.write_transcript(tmp_path / "run" / "transcript.json")
    assert json.loads(pathlib.Path(path).read_text())
    for f in tmp_path.rglob("*"):
        if f.is_file():
            text = f.read_text(errors="replace")
            assert FAKE_KEY not in text and "FAKEKEY" not in text, f


def test_end_to_end_plain_json_fallback_and_unavailable(fake_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local")
    server = fake_server([
        {"content": 'Here you go: {"kind": "stop"} -- done'},
        {"status": 500}, {"status": 500}, {"status": 500},
    ])
    sleeps = []
    c = LLMClient("openai/my-local-model", api_base=server.url, timeout_s=2, max_retries=2,
                  sleep=sleeps.append)
    assert not c.structured
    r = c.ask([{"role": "user", "content": "stop?"}], Action)
    assert r.parsed == Action(kind="stop") and r.usage.cost_usd == 0.0  # not in the cost map
    body = server.requests[0]["body"]
    assert "response_format" not in body
    assert "JSON schema" in body["messages"][-1]["content"]
    with pytest.raises(LLMUnavailable, match="3 attempt"):
        c.ask([{"role": "user", "content": "again"}], Action)
    assert sleeps == [1.0, 2.0]


def test_end_to_end_with_the_agents_actions(fake_server, monkeypatch, tmp_path):
    """The agent's real reply schema and grammar check: bad replies are rejected with the
    rule that broke, the structure-level rejection comes from apply_proposal."""
    from leads_jax.agent._actions import ActionRejected, PolicyReply, apply_proposal

    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    good = {"reflection": "start simple", "proposals": [
        {"parent": None, "actions": [{"kind": "set_reaction", "reaction": "aliev-panfilov"}]}]}
    bad_structure = {"reflection": "", "proposals": [
        {"parent": None, "actions": [{"kind": "set_reaction", "reaction": "hodgkin-huxley-9000"}]}]}
    unknown_kind = {"reflection": "", "proposals": [
        {"parent": None, "actions": [{"kind": "teleport"}]}]}
    server = fake_server([{"content": "```json\n{\"reflection\": \"x\", \"proposals\": [}\n```"},
                          {"content": json.dumps(unknown_kind)},
                          {"content": json.dumps(bad_structure)},
                          {"content": json.dumps(good)}])

    def check(reply):
        try:
            for p in reply.proposals:
                apply_proposal(p, {})
        except ActionRejected as e:
            return str(e)
        return None

    c = LLMClient("openai/local-model", api_base=server.url, timeout_s=2, max_invalid=4,
                  sleep=lambda s: None)
    r = c.ask_until_valid([{"role": "user", "content": "propose"}], PolicyReply, check)
    assert r.parsed is not None and r.parsed.proposals[0].actions[0].reaction == "aliev-panfilov"
    reasons = [e["rejection"] for e in c.transcript if e.get("rejection")]
    assert len(reasons) == 3 and c.n_invalid == 3
    assert "not valid JSON" in reasons[0] and "teleport" in reasons[1]
    assert "hodgkin-huxley-9000" in reasons[2]
    # each rejection was fed back to the LLM in the next request
    assert "rejected" in server.requests[-1]["body"]["messages"][-2]["content"]
    c.write_transcript(tmp_path / "t.json")
    assert FAKE_KEY not in (tmp_path / "t.json").read_text()
