"""Every ``--method`` end to end on tiny data, the LLM policy's fallbacks, the CLI, and a
run that survives SIGKILL mid-round.

The data have the shape of tests/test_agent_discover.py (32-node cable), so in one
process the physics topologies are compiled once; the hand-designed hybrid, the
expression programs and the neural ODE each add one topology.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from leads_jax.agent import METHODS, Budget, LLMPolicy, OfflinePolicy, discover
from leads_jax.agent._llm import LLMClient
from leads_jax.datasets import make_dataset, save_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.structure import Catalog

CONFIG = FitConfig(steps=30, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
CATALOG = dataclasses.replace(
    Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"),
    closures=(), diffusions=("laplacian",))
TINY = Budget(rounds=2, candidates=3, k=2)


@pytest.fixture(scope="module")
def data():
    return make_dataset("aliev-panfilov", Geometry.cable(32), t_train=36.0, save_every=2.0,
                        noise=0.01, seed=1, dt=0.25, parameters={"a": 0.13, "k": 9.0})


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end(method, data, tmp_path):
    catalog = CATALOG if method not in ("hand-hybrid",) else Catalog.default()
    res = discover(data, method=method, budget=TINY, key=jax.random.key(1),
                   out=tmp_path / method, catalog=catalog, config=CONFIG, progress=False)
    assert res.history, method
    assert len(res.history) <= TINY.candidates
    assert (tmp_path / method / "report.md").exists()
    ds = load_results(tmp_path / method / "results.nc")
    assert ds.sizes["candidate"] == len(res.history)
    if method == "one-round":
        assert res.rounds == 1 and len(res.history) == TINY.candidates
    if method in ("unstructured", "no-structure"):
        assert all(o.reaction is None for o in res.history)
        assert any("random_program" in n for n in res.notes)
    if method == "hand-hybrid":
        assert res.rounds == 1 and res.history[0].closure_rms >= 0
        assert "closure" in res.history[0].origin or "add_closure" in res.history[0].origin
    if res.best is not None:
        assert math.isfinite(res.observation.val_rmse)


class _ScriptedClient(LLMClient):
    """An LLMClient whose replies are scripted (no network: litellm's mock_response)."""

    def __init__(self, replies, **kw):
        super().__init__("openai/gpt-4o-mini", mock_response="{}", **kw)
        self.replies = list(replies)

    def _complete(self, messages, response_model):
        self._mock = self.replies.pop(0) if self.replies else "{}"
        return super()._complete(messages, response_model)


def test_llm_policy_rejects_bad_replies_and_falls_back(data, tmp_path):
    good = json.dumps({"reflection": "try MS", "proposals": [{"parent": None, "actions": [
        {"kind": "set_reaction", "reaction": "mitchell-schaeffer"}]}]})
    replies = ["not json at all",  # round 0: three invalid replies -> offline fallback
               json.dumps({"proposals": [{"actions": [{"kind": "launch_rocket"}]}]}),
               json.dumps({"proposals": [{"parent": None, "actions": [
                   {"kind": "set_reaction", "reaction": "aliev-panfilov"},
                   {"kind": "set_parameter", "name": "a", "mode": "free", "value": 9.0}]}]}),
               json.dumps({"reflection": "AP fits best; try the third cell model"}),
               good]  # round 1: a valid, new proposal
    client = _ScriptedClient(replies, max_invalid=3)
    policy = LLMPolicy(client, fallback=OfflinePolicy())
    res = discover(data, policy=policy, budget=Budget(rounds=2, candidates=3, k=2),
                   key=jax.random.key(0), out=tmp_path / "llm", catalog=CATALOG,
                   config=CONFIG, progress=False)
    events = [t for t in res.transcript if t["event"] in ("rejected", "fallback")]
    assert any(t["event"] == "fallback" and t["round"] == 0 for t in events)
    assert any("parameter-in-bounds" in json.dumps(t) or "strictly inside" in json.dumps(t)
               for t in events)
    assert any(t.get("rule") == "llm-reply" and "JSON" in t["reason"] for t in events)
    assert any("launch_rocket" in json.dumps(t) for t in events)
    assert len(res.history) == 3
    assert res.history[2].reaction == "mitchell-schaeffer"  # the LLM's proposal
    reflections = [t["text"] for t in res.transcript if t["event"] == "reflect"]
    assert reflections[0] == "AP fits best; try the third cell model"
    report = (tmp_path / "llm" / "report.md").read_text()
    assert "fallback" in report


def test_llm_budget_spent_stops_asking(data, tmp_path):
    client = _ScriptedClient([], max_tokens=1)
    client.total_prompt_tokens = 5  # already over budget
    policy = LLMPolicy(client)
    res = discover(data, policy=policy, budget=Budget(rounds=1, candidates=2, k=2),
                   key=jax.random.key(0), catalog=CATALOG, config=CONFIG, progress=False)
    assert policy.stopped and any("budget" in n for n in res.notes)
    assert client.n_requests == 0


def test_cli_discover_and_report(data, tmp_path, capsys):
    from leads_jax.cli import main

    path = save_dataset(data, tmp_path / "data.nc")
    out = tmp_path / "run"
    args = ["discover", "--data", path, "--out", str(out), "--budget-rounds", "1",
            "--budget-candidates", "2", "--per-round", "2", "--steps", "30",
            "--learning-rate", "0.03", "--without", "fenton-karma,bueno-orovio", "--quiet",
            "--no-compile-cache"]
    # Same fitting settings as CONFIG except dt and patience: the CLI uses defaults.
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "selected candidate" in text and "report:" in text
    assert main(["discover", "--data", path, "--out", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["discover", "--data", path, "--out", str(tmp_path / "x"), "--policy",
                 "psychic"]) == 2
    assert main(["discover", "--data", path, "--out", str(tmp_path / "x"),
                 "--budget-rounds", "0"]) == 2
    assert main(["report", str(out)]) == 0


RUN = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from leads_jax.agent import Budget, discover
    from leads_jax.datasets import load_dataset
    from leads_jax.fit import FitConfig
    from leads_jax.structure import Catalog
    cat = dataclasses.replace(Catalog.default().only("aliev-panfilov"), closures=(),
                              diffusions=("laplacian",))
    cfg = FitConfig(steps=60, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
    res = discover(load_dataset(sys.argv[1]), budget=Budget(rounds=3, candidates=5, k=2,
                   patience=None), key=jax.random.key(3), out=sys.argv[2], catalog=cat,
                   config=cfg, resume=len(sys.argv) > 3, progress=False)
    print(json.dumps({"fitted": res.fitted_ids, "resumed": res.resumed_rounds}))
""")


def test_resume_after_sigkill_mid_round(data, tmp_path):
    path = save_dataset(data, tmp_path / "data.nc")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jaxcache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    script = tmp_path / "run.py"
    script.write_text(RUN)
    ref = tmp_path / "ref"
    done = subprocess.run([sys.executable, str(script), path, str(ref)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), path, str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    killed_in = None
    while time.time() < deadline and proc.poll() is None:
        prog = out / "progress.json"
        if prog.exists():
            try:
                p = json.loads(prog.read_text())
            except ValueError:
                p = {}
            if p.get("round") == 1 and p.get("phase") == "fit":
                proc.send_signal(signal.SIGKILL)
                killed_in = p
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_in is not None, "the run ended before round 1 started fitting"
    assert (out / "round_000").is_dir() and not (out / "round_001").is_dir()
    round0 = (out / "round_000" / "metrics.json").read_bytes()
    resumed = subprocess.run([sys.executable, str(script), path, str(out), "resume"], env=env,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    info = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert info["resumed"] == 1 and 0 not in info["fitted"]  # round 0 not refitted
    assert (out / "round_000" / "metrics.json").read_bytes() == round0
    a, b = load_results(ref / "results.nc"), load_results(out / "results.nc")
    for v in ("train_rmse", "val_rmse", "heldout_rmse"):
        np.testing.assert_allclose(b[v].values, a[v].values, rtol=1e-6)
    assert a.attrs["test_rmse_mV"] == pytest.approx(b.attrs["test_rmse_mV"], rel=1e-6)
    assert (ref / "transcript.jsonl").read_text() == (out / "transcript.jsonl").read_text()


class _FakeOpenAI:
    """A local OpenAI-compatible /v1/chat/completions endpoint replaying a script:
    ``{"content": str, "usage": (prompt, completion)}``, ``{"status": 429 | 500}`` or
    ``{"delay": s, ...}``; after the script, 500s."""

    def __init__(self, script):
        import http.server
        import threading

        self.script, self.requests = list(script), []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                fake.requests.append(body)
                step = fake.script.pop(0) if fake.script else {"status": 500}
                time.sleep(step.get("delay", 0))
                status = step.get("status", 200)
                if status != 200:
                    payload = json.dumps({"error": {"message": f"scripted {status}",
                                                    "type": "server_error"}}).encode()
                else:
                    p, c = step.get("usage", (50, 20))
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0,
                        "model": body.get("model", "fake"),
                        "choices": [{"index": 0, "finish_reason": "stop", "message": {
                            "role": "assistant", "content": step["content"]}}],
                        "usage": {"prompt_tokens": p, "completion_tokens": c,
                                  "total_tokens": p + c}}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_llm_discovery_end_to_end_against_a_local_server(data, tmp_path, monkeypatch):
    secret = "sk-LEADS-TEST-SECRET-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    marker = tmp_path / "EXECUTED"
    valid = json.dumps({"reflection": "", "proposals": [{"parent": None, "actions": [
        {"kind": "set_reaction", "reaction": "mitchell-schaeffer"}]}]})
    server = _FakeOpenAI([
        {"content": f"__import__('os').system('touch {marker}') {{oops"},  # malformed JSON
        {"content": json.dumps({"proposals": [{"actions": [{"kind": "exec", "code": "1"}]}]})},
        {"content": json.dumps({"proposals": [{"parent": 7, "actions": [  # no candidate 7
            {"kind": "set_parameter", "name": "a", "mode": "free"}]}]})},
        {"delay": 1.5, "content": "{}"},  # round 0 reflection: times out ...
        {"status": 429}, {"status": 500},  # ... then 429 and 500 ...
        {"content": json.dumps({"reflection": "MS next"})},  # ... then a reflection
        {"content": valid, "usage": (2_000_000, 10)},  # round 1: valid, over the budget
    ])
    try:
        res = discover(data, policy="llm", budget=Budget(rounds=3, candidates=4, k=2,
                                                          max_cost=0.05, patience=None),
                       llm={"model": "openai/gpt-4o-mini", "api_base": server.url,
                            "timeout_s": 0.5, "max_retries": 3, "backoff_s": 0.01},
                       key=jax.random.key(0), out=tmp_path / "run", catalog=CATALOG,
                       config=CONFIG, progress=False)
    finally:
        server.close()
    assert not marker.exists()  # nothing in a reply is executed
    ev = res.transcript
    rejected = [t for t in ev if t["event"] == "rejected"]
    assert any("not valid JSON" in t.get("reason", "") for t in rejected)
    assert any("exec" in json.dumps(t) for t in rejected)
    assert any("no candidate 7" in json.dumps(t) for t in rejected)
    assert any(t["event"] == "fallback" and t["round"] == 0 for t in ev)
    kinds = [t.get("kind") for t in ev if t["event"] == "llm-error"]
    assert {"Timeout", "RateLimitError", "InternalServerError"} <= set(kinds)
    assert [t["text"] for t in ev if t["event"] == "reflect"][0] == "MS next"
    assert any(o.reaction == "mitchell-schaeffer" and o.round == 1 for o in res.history)
    assert any("budget" in n for n in res.notes)  # stopped asking after the costly reply
    assert any(t["event"] == "fallback" and t["round"] == 2 for t in ev)
    n_requests = len(server.requests)
    assert n_requests == 8  # nothing sent once the budget was spent
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md"):
            assert secret not in f.read_text(errors="replace"), f
