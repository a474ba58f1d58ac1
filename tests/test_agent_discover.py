"""The discovery loop end to end on a 32-node cable (acceptance of the agent issue).

One process, one fitting configuration, one data shape: the three ground truths
(Aliev-Panfilov, FitzHugh-Nagumo, Mitchell-Schaeffer, each at parameters away from the
catalog defaults) share the compiled programs of the three physics topologies, so the
model-selection runs, the determinism check, the report rebuild, the grammar methods
and ablations, the LLM policy (scripted replies and a local fake OpenAI-compatible
server) and the CLI pay for compilation once (every run pads its groups to the same
bucket, K = 3). So does the SIGKILL/resume test: its uninterrupted reference and its
resumption run in this process on the same programs; only the killed run, a subprocess,
compiles. The catalog has no closures here; the methods that compile topologies of their
own (hand-hybrid, unstructured, neural) are in tests/test_agent_methods.py.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from _kill import kill_during

from leads_jax.agent import (
    Budget,
    LLMPolicy,
    Observation,
    OfflinePolicy,
    Selection,
    discover,
    select,
    write_report,
)
from leads_jax.agent._actions import Proposal, SetParameter, SetReaction
from leads_jax.agent._llm import LLMClient
from leads_jax.agent._loop import ENGINE_PROGRAMS
from leads_jax.agent._offline import FixedPolicy
from leads_jax.datasets import make_dataset, save_dataset
from leads_jax.fit import FitConfig, load_results
from leads_jax.geometry import Geometry
from leads_jax.structure import Catalog

TRUTHS = {
    "aliev-panfilov": {"a": 0.13, "k": 9.0},
    "fitzhugh-nagumo": {"a": 0.15, "c1": 0.24},
    "mitchell-schaeffer": {"tau_in": 0.33, "tau_out": 5.5},
}
CONFIG = FitConfig(steps=30, learning_rate=0.03, eval_every=10, patience=None, dt=0.25)
CATALOG = dataclasses.replace(
    Catalog.default().only("aliev-panfilov", "fitzhugh-nagumo", "mitchell-schaeffer"),
    closures=(), diffusions=("laplacian",))
BUDGET = Budget(rounds=2, candidates=5, k=3)


def make(truth):
    return make_dataset(truth, Geometry.cable(32), t_train=36.0, save_every=2.0, noise=0.01,
                        seed=1, dt=0.25, parameters=TRUTHS[truth])


@pytest.fixture(scope="module")
def data():
    return {t: make(t) for t in TRUTHS}


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    out = {}
    for t in TRUTHS:
        folder = tmp_path_factory.mktemp(t)
        out[t] = discover(data[t], budget=BUDGET, key=jax.random.key(0), out=folder,
                          catalog=CATALOG, config=CONFIG, progress=False)
    return out


def test_offline_discovery_selects_the_true_reaction_model(runs):
    for truth, res in runs.items():
        assert res.best is not None, truth
        assert res.best.canonical().reaction == truth, (truth, res.observation.formula)
        assert math.isfinite(res.test_rmse) and res.test_rmse < 10.0, (truth, res.test_rmse)
        assert res.observation.val_rmse < 10.0
        # the held-out score is on the test sites, never seen during the search
        assert all(o.round <= 1 for o in res.history)


def test_compilations_equal_topology_groups_and_repeat_rounds_compile_nothing(runs):
    first = runs["aliev-panfilov"].timings
    # round 0: one training program per topology (3 reaction models), and the engine's
    # other programs (counted by name, see ENGINE_PROGRAMS; jit(_values_any) may already
    # have compiled while the datasets were made)
    assert first[0]["fit_n_train_programs"] == 3, first[0]["fit_programs"]
    fit_names = set(ENGINE_PROGRAMS) - {"jit(_rollout)", "jit(_values_any)"}
    assert fit_names <= set(first[0]["fit_programs"]) <= set(ENGINE_PROGRAMS)
    assert set(first[0]["observe_programs"]) == {"jit(_rollout)"}
    # round 1 only frees parameters (data, not topology): no engine program compiles
    for res in runs.values():
        assert res.timings[1]["fit_programs"] == [], res.timings[1]
        assert res.timings[1]["observe_programs"] == [], res.timings[1]
        assert res.timings[1]["fit_n_programs"] == res.timings[1]["fit_n_train_programs"] == 0
    for res in list(runs.values())[1:]:  # the other truths reuse every program
        assert res.timings[0]["fit_programs"] == [], res.timings[0]
    # round 0 compiles its 3 topologies in 2 threads: the compile wall time is the union
    # of their intervals, at most their sum and at most the fit's wall time
    t0 = first[0]
    assert 0.0 < t0["fit_compile_wall_seconds"] <= t0["fit_compile_seconds"] + 1e-6
    assert t0["fit_compile_wall_seconds"] <= t0["fit_seconds"]
    assert t0["train_seconds"] == pytest.approx(t0["fit_seconds"]
                                                - t0["fit_compile_wall_seconds"])
    report = (runs["aliev-panfilov"].out / "report.md").read_text()
    assert "compile" in report and "train s" in report and "summed over the" in report


def test_compile_wall_time_is_the_union_of_the_compilations():
    from leads_jax.agent._loop import CompileLog

    log = CompileLog()
    log.intervals = [(0.0, 2.0), (1.0, 3.0), (5.0, 6.0), (5.5, 5.8)]  # two threads
    log.events = [("f", 2.0), ("g", 2.0), ("h", 1.0), ("i", 0.3)]
    assert log.wall_seconds == pytest.approx(4.0) and log.seconds == pytest.approx(5.3)
    assert CompileLog().wall_seconds == 0.0
    import jax
    import jax.numpy as jnp

    with CompileLog() as real:
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
    assert len(real.events) >= 1
    assert 0.0 < real.wall_seconds <= real.seconds + 1e-9
    assert real.summary()["compile_wall_seconds"] == real.wall_seconds


def test_memory_topk_reflection_and_transcript(runs):
    res = runs["fitzhugh-nagumo"]
    keys = [json.dumps(o.spec) for o in res.history]
    assert len(keys) == len(set(keys))  # nothing fitted twice
    events = [t["event"] for t in res.transcript]
    assert events.count("reflect") == 2 and "best" in events
    reflect = [t for t in res.transcript if t["event"] == "reflect"][0]["text"]
    assert "plan:" in reflect and "Best so far" in reflect
    o = res.history[0]
    assert o.verdict in ("generalises", "degrades", "fails-to-extrapolate", "unstable")
    assert set(o.rmse_by_phase) == {"upstroke", "plateau", "repolarisation", "rest"}
    assert o.rmse_by_region is not None and len(o.rmse_by_region) == 2
    assert math.isfinite(o.cv_model) and math.isfinite(o.cv_data)


def test_same_seed_same_transcript_and_results(runs, data, tmp_path):
    again = discover(data["aliev-panfilov"], budget=BUDGET, key=jax.random.key(0),
                     out=tmp_path / "again", catalog=CATALOG, config=CONFIG, progress=False)
    first = runs["aliev-panfilov"]
    assert (first.out / "transcript.jsonl").read_text() == \
        (tmp_path / "again" / "transcript.jsonl").read_text()
    a, b = (load_results(p / "results.nc") for p in (first.out, tmp_path / "again"))
    for v in ("train_rmse", "val_rmse", "heldout_rmse", "n_params", "selected"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert again.test_rmse == first.test_rmse


def test_report_rebuilds_identically(runs):
    out = runs["mitchell-schaeffer"].out
    before = (out / "report.md").read_bytes()
    (out / "report.md").unlink()
    from leads_jax.cli import main

    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_bytes() == before
    paths = write_report(out)
    for name in ("search_tree", "best_traces", "activation_map"):
        assert paths[name].exists()


def _obs(i, val, n_params, closure=0.0):
    return Observation(id=i, round=0, spec="{}", formula="", n_params=n_params,
                       closure_rms=closure, stable=True, train_rmse=val, val_rmse=val,
                       heldout_rmse=val, ratio=1.0, verdict="generalises")


def test_simpler_model_wins_within_noise():
    physics, hybrid = _obs(0, 1.02, 4), _obs(1, 1.00, 600, closure=0.01)
    winner, table = select([physics, hybrid], noise=1.0)
    assert winner == 0  # 0.02 mV better is within noise (margin 0.25 mV)
    assert [row["within_noise"] for row in table] == [True, True]
    winner, _ = select([physics, _obs(1, 0.60, 600, closure=0.01)], noise=1.0)
    assert winner == 1  # clearly better: the hybrid wins
    winner, _ = select([physics, hybrid], noise=0.0, selection=Selection(rel_tol=0.0,
                                                                         noise_tol=0.0))
    assert winner == 1  # no penalty: the lowest validation error wins
    unstable = _obs(2, 0.1, 1).model_copy(update={"stable": False})
    assert select([unstable], noise=1.0) == (None, [])


def test_bad_inputs_fail_before_work(data, tmp_path):
    ds = data["aliev-panfilov"]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="missing variable"):
        discover(ds.drop_vars("stim_sites"), key=key, catalog=CATALOG)
    with pytest.raises(ValueError, match="Budget.rounds"):
        Budget(rounds=0)
    with pytest.raises(ValueError, match="Budget.candidates"):
        Budget(candidates=0)
    with pytest.raises(ValueError, match="unknown policy"):
        discover(ds, policy="genius", key=key)
    with pytest.raises(ValueError, match="unknown method"):
        discover(ds, method="magic", key=key)
    with pytest.raises(ValueError, match="PRNG key"):
        discover(ds, key=0)
    with pytest.raises(ValueError, match="unknown LLM provider"):
        discover(ds, policy="llm", llm={"model": "no-such-provider-xyz/model"}, key=key)
    with pytest.raises(ValueError, match="needs llm="):
        discover(ds, policy="llm", key=key)
    no_val = ds.isel(sample=np.flatnonzero(ds["split"].values != "val"))
    with pytest.raises(ValueError, match="no validation split"):
        discover(no_val, key=key)


def test_missing_api_key_is_an_error(data, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        discover(data["aliev-panfilov"], policy="llm", llm={"model": "openai/gpt-4o-mini"},
                 key=jax.random.key(0))


@pytest.mark.parametrize("method", ["leads", "random", "one-round", "no-memory",
                                    "no-reflection"])
def test_methods_sharing_the_physics_programs(method, data, tmp_path):
    """The grammar methods on the same programs (the other methods, each compiling a
    topology of its own: tests/test_agent_methods.py)."""
    budget = Budget(rounds=2, candidates=3, k=3) if method == "one-round" else BUDGET
    res = discover(data["aliev-panfilov"], method=method, budget=budget,
                   key=jax.random.key(1), out=tmp_path / method, catalog=CATALOG,
                   config=CONFIG, progress=False)
    assert res.history and len(res.history) <= budget.candidates
    assert (tmp_path / method / "report.md").exists()
    assert load_results(tmp_path / method / "results.nc").sizes["candidate"] == len(
        res.history)
    assert sum(t["fit_n_train_programs"] for t in res.timings) == 0  # all reused
    if method == "one-round":
        assert res.rounds == 1 and len(res.history) == 3
    if method == "no-reflection":
        assert not any(t["event"] == "reflect" for t in res.transcript)
    if method == "no-memory":
        assert len({o.spec for o in res.history}) <= len(res.history)


def test_unpaced_sample_and_a_step_above_the_stable_step_are_recorded(data, tmp_path):
    """Accepted but suspicious: a sample whose pacing sites are all zero (the data's
    reader records it) and a candidate whose conductivity makes the fitting step
    0.25 ms exceed its stable step (0.145 ms; ``fit`` checks it): both in the run's
    notes and report, the step also in the round's fit event. Same programs as above."""
    ds = data["aliev-panfilov"].copy(deep=True)
    ds["stim_sites"][2] = 0.0  # the test site's sample
    fast = FixedPolicy([Proposal(parent=None, actions=[
        SetReaction(reaction="aliev-panfilov"),
        SetParameter(name="D", mode="free", value=0.003)], rationale="fast conduction")])
    with pytest.warns(UserWarning, match="stable step"):
        res = discover(ds, policy=fast, budget=Budget(rounds=1, candidates=1, k=3),
                       key=jax.random.key(0), out=tmp_path / "w", catalog=CATALOG,
                       config=CONFIG, progress=False)
    assert len(res.history) == 1
    zero = [n for n in res.notes if "zero everywhere" in n]
    assert zero == ["data: sample 2 (center): the stimulus is zero everywhere (all-zero "
                    "pacing sites or amplitude)"], res.notes
    step = [n for n in res.notes if "stable step" in n]
    assert len(step) == 1 and step[0].startswith("fit, round 0: candidate #0: dt = 0.25 ms")
    [fit_event] = [t for t in res.transcript if t["event"] == "fit"]
    assert len(fit_event["warnings"]) == 1 and "0.145 ms" in fit_event["warnings"][0]
    report = (tmp_path / "w" / "report.md").read_text()
    assert "zero everywhere" in report and "stable step" in report


class _ScriptedClient(LLMClient):
    """An LLMClient whose replies are scripted (no network: litellm's mock_response)."""

    def __init__(self, replies, **kw):
        super().__init__("openai/gpt-4o-mini", mock_response="{}", **kw)
        self.replies = list(replies)

    def _complete(self, messages, response_model):
        self._mock = self.replies.pop(0) if self.replies else "{}"
        return super()._complete(messages, response_model)


def test_llm_policy_rejects_bad_replies_and_falls_back(data, tmp_path):
    good = json.dumps({"reflection": "free k", "proposals": [{"parent": 0, "actions": [
        {"kind": "set_parameter", "name": "k", "mode": "free"},
        {"kind": "refine", "candidate": 0}]}]})
    replies = ["not json at all",  # round 0: three invalid replies -> offline fallback
               json.dumps({"proposals": [{"actions": [{"kind": "launch_rocket"}]}]}),
               json.dumps({"proposals": [{"parent": None, "actions": [
                   {"kind": "set_reaction", "reaction": "aliev-panfilov"},
                   {"kind": "set_parameter", "name": "a", "mode": "free", "value": 9.0}]}]}),
               json.dumps({"reflection": "AP fits best; try the third cell model"}),
               good]  # round 1: a valid, new proposal
    client = _ScriptedClient(replies, max_invalid=3)
    policy = LLMPolicy(client, fallback=OfflinePolicy())
    res = discover(data["aliev-panfilov"], policy=policy,
                   budget=Budget(rounds=2, candidates=4, k=3), key=jax.random.key(0),
                   out=tmp_path / "llm", catalog=CATALOG, config=CONFIG, progress=False)
    events = [t for t in res.transcript if t["event"] in ("rejected", "fallback")]
    assert any(t["event"] == "fallback" and t["round"] == 0 for t in events)
    assert any("parameter-in-bounds" in json.dumps(t) or "strictly inside" in json.dumps(t)
               for t in events)
    assert any(t.get("rule") == "llm-reply" and "JSON" in t["reason"] for t in events)
    assert any("launch_rocket" in json.dumps(t) for t in events)
    assert len(res.history) == 4
    assert "set_parameter(name=k" in res.history[3].origin  # the LLM's proposal
    reflections = [t["text"] for t in res.transcript if t["event"] == "reflect"]
    assert reflections[0] == "AP fits best; try the third cell model"
    report = (tmp_path / "llm" / "report.md").read_text()
    assert "fallback" in report


def test_llm_budget_spent_stops_asking(data, tmp_path):
    client = _ScriptedClient([], max_tokens=1)
    client.total_prompt_tokens = 5  # already over budget
    policy = LLMPolicy(client)
    res = discover(data["aliev-panfilov"], policy=policy,
                   budget=Budget(rounds=1, candidates=3, k=3), key=jax.random.key(0),
                   catalog=CATALOG, config=CONFIG, progress=False)
    assert policy.stopped and any("budget" in n for n in res.notes)
    assert client.n_requests == 0


def test_cli_discover_and_report(data, tmp_path, capsys):
    from leads_jax.cli import main

    path = save_dataset(data["aliev-panfilov"], tmp_path / "data.nc")
    out = tmp_path / "run"
    args = ["discover", "--data", path, "--out", str(out), "--budget-rounds", "1",
            "--budget-candidates", "3", "--per-round", "3", "--steps", "30",
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
    valid = json.dumps({"reflection": "", "proposals": [{"parent": 0, "actions": [
        {"kind": "set_parameter", "name": "k", "mode": "free"}]}]})
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
        res = discover(data["aliev-panfilov"], policy="llm",
                       budget=Budget(rounds=3, candidates=5, k=3, max_cost=0.05,
                                     patience=None),
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
    assert [o.round for o in res.history] == [0, 0, 0, 1, 2]
    assert "set_parameter(name=k" in res.history[3].origin  # the LLM's proposal
    assert any("budget" in n for n in res.notes)  # stopped asking after the costly reply
    assert any(t["event"] == "fallback" and t["round"] == 2 for t in ev)
    n_requests = len(server.requests)
    assert n_requests == 8  # nothing sent once the budget was spent
    assert (tmp_path / "run" / "round_001" / "llm_transcript.json").exists()
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md"):
            assert secret not in f.read_text(errors="replace"), f


# ---------------------------------------------------------------------------------------
# SIGKILL in the middle of a round, then resume
# ---------------------------------------------------------------------------------------
ONE_TOPOLOGY = dataclasses.replace(Catalog.default().only("aliev-panfilov"), closures=(),
                                   diffusions=("laplacian",))
RESUME_CONFIG = dataclasses.replace(CONFIG, audit=False)
RESUME_BUDGET = Budget(rounds=3, candidates=5, k=3, patience=None)
KILLED_RUN = textwrap.dedent("""
    import dataclasses, json, sys
    import jax
    from leads_jax.agent import Budget, discover
    from leads_jax.fit import FitConfig
    from leads_jax.structure import Catalog
    data, out, config, budget = sys.argv[1], sys.argv[2], *map(json.loads, sys.argv[3:5])
    catalog = dataclasses.replace(Catalog.default().only("aliev-panfilov"), closures=(),
                                  diffusions=("laplacian",))
    discover(data, budget=Budget(**budget), key=jax.random.key(3), out=out, catalog=catalog,
             config=FitConfig(**config), progress=False)
""")


def _discover_resumable(path, out, resume=False):
    return discover(path, budget=RESUME_BUDGET, key=jax.random.key(3), out=out,
                    catalog=ONE_TOPOLOGY, config=RESUME_CONFIG, resume=resume, progress=False)


def test_resume_after_sigkill_mid_round(data, tmp_path):
    """One topology (Aliev-Panfilov physics), rounds 0 and 1. A subprocess is killed
    with SIGKILL while it fits round 1; resuming continues from round 0 without refitting
    it and ends with the results of an uninterrupted run (rtol 1e-6). The reference and
    the resumption run here, on this file's compiled programs; the full three-process
    version (resumed in a fresh process through the persistent compilation cache) is
    tests/test_agent_methods.py::test_resume_in_a_fresh_process (slow tier)."""
    path = save_dataset(data["aliev-panfilov"], tmp_path / "data.nc")
    ref = _discover_resumable(path, tmp_path / "ref")
    assert ref.rounds >= 2 and len({o.round for o in ref.history}) >= 2
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(KILLED_RUN)
    cfg = json.dumps(RESUME_CONFIG.to_dict())
    errors = tmp_path / "stderr.txt"
    with open(errors, "w") as err_file:  # a file, not a pipe: a full pipe would block it
        proc = subprocess.Popen([sys.executable, str(script), path, str(out), cfg,
                                 json.dumps(RESUME_BUDGET.to_dict())],
                                stdout=subprocess.DEVNULL, stderr=err_file)
    killed_in = kill_during(proc, out)
    err = errors.read_text()
    assert killed_in is not None, f"the run ended before round 1 fitted: {err[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert (out / "round_000").is_dir() and not (out / "round_001").is_dir()
    round0 = {f.name: f.read_bytes() for f in (out / "round_000").rglob("*") if f.is_file()}
    res = _discover_resumable(path, out, resume=True)
    assert res.resumed_rounds == 1  # round 0 read back ...
    round0_ids = [o.id for o in res.history if o.round == 0]
    assert round0_ids and not set(round0_ids) & set(res.fitted_ids)  # ... not refitted
    assert set(res.fitted_ids) == {o.id for o in res.history if o.round >= 1}
    assert {f.name: f.read_bytes() for f in (out / "round_000").rglob("*")
            if f.is_file()} == round0
    assert not list(out.glob("*.partial"))
    a, b = load_results(tmp_path / "ref" / "results.nc"), load_results(out / "results.nc")
    np.testing.assert_array_equal(a["candidate"].values, b["candidate"].values)
    for v in ("train_rmse", "val_rmse", "heldout_rmse"):
        np.testing.assert_allclose(b[v].values, a[v].values, rtol=1e-6)
    np.testing.assert_array_equal(b["selected"].values, a["selected"].values)
    assert res.test_rmse == pytest.approx(ref.test_rmse, rel=1e-6)
    assert (tmp_path / "ref" / "transcript.jsonl").read_text() == \
        (out / "transcript.jsonl").read_text()
