"""An untrusted, budgeted LLM client over litellm: typed replies or precise rejections.

:class:`LLMClient` sends chat messages to any provider litellm knows
(``"openai/gpt-4o-mini"``, ``"anthropic/..."``, ``"ollama/llama3"``, a local
OpenAI-compatible server with ``api_base=...``) and turns the reply into a validated
pydantic object, or into a rejection phrased so that the LLM can correct itself.
Nothing in a reply is ever executed: it is JSON, parsed and validated.

* **Structured output.** Where ``litellm.supports_response_schema(model=...)`` says the
  provider has it, the request carries ``response_format`` with the pydantic model's
  JSON schema; otherwise (and always as a second line of defence) the schema is put in
  the prompt and the first JSON object of the reply is extracted (code fences and prose
  around it are tolerated).
* **Faults.** Each request has a timeout (`timeout_s`). Timeouts, rate limits (429),
  server errors (5xx) and connection errors are retried `max_retries` times with
  exponential backoff (``backoff_s * 2**attempt``, capped; the `sleep` function is
  injectable for tests); then :class:`LLMUnavailable` is raised. Authentication and
  bad-request errors are not retried.
* **Budgets.** Tokens and dollars are accounted per reply (``litellm.completion_cost``;
  0 for a model that is not in litellm's cost map, e.g. a local server, unless
  `cost_per_token` is given). Once `max_cost` dollars or `max_tokens` tokens are spent,
  :attr:`LLMClient.budget_exhausted` is True and :meth:`LLMClient.ask` refuses (raises
  :class:`LLMBudgetExhausted`, a :class:`LLMUnavailable`) without sending anything.
* **Secrets.** API keys come from the environment only (litellm reads e.g.
  ``OPENAI_API_KEY``). A missing key for a provider that needs one is a
  :class:`LLMConfigError` at construction, before any work. The transcript
  (:attr:`LLMClient.transcript`, :meth:`LLMClient.write_transcript`) never stores
  keys: every string is passed through :func:`redact`, which removes the values of
  environment variables whose name contains ``KEY``, ``TOKEN`` or ``SECRET`` and
  anything that looks like a key or an ``Authorization`` header.

A local OpenAI-compatible server (vLLM, llama.cpp, LM Studio, ...) is reached with
``LLMClient("openai/<served-model-name>", api_base="http://127.0.0.1:8000/v1")``;
litellm's OpenAI client still insists on a key, so set a dummy one
(``export OPENAI_API_KEY=sk-local``).

litellm is imported lazily (``import leads_jax`` does not import it). Tests set
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so the cost map is read from the package, not
fetched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat, SupportsIndex

import pydantic

__all__ = [
    "LLMBudgetExhausted",
    "LLMClient",
    "LLMConfigError",
    "LLMReply",
    "LLMUnavailable",
    "Usage",
    "extract_json_object",
    "redact",
]


class LLMUnavailable(RuntimeError):
    """The LLM could not be reached (after retries), or refused by the budget."""


class LLMBudgetExhausted(LLMUnavailable):
    """The token or cost budget is spent; no request was sent."""


class LLMConfigError(ValueError):
    """Bad client configuration (unknown provider, missing API key, bad budget)."""


@dataclasses.dataclass(frozen=True)
class Usage:
    """Tokens and dollars of one reply (zeros when nothing was sent)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclasses.dataclass(frozen=True)
class LLMReply:
    """One reply: `parsed` (a validated instance of the response model, or None),
    `raw` (the reply text), `rejection` (why it was rejected, phrased for the LLM;
    None when valid) and `usage`."""

    parsed: pydantic.BaseModel | None
    raw: str
    rejection: str | None
    usage: Usage

    @property
    def ok(self) -> bool:
        return self.parsed is not None


# ---------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
_KEY_PATTERNS = [
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{6,}"),
    re.compile(r"(?i)(authorization|api[_-]?key|x-api-key|access[_-]?token|secret)"
               r"([\"']?\s*[:=]\s*[\"']?)([^\s\"',}]{4,})"),
    re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_-]{8,}"),
    re.compile(r"\b(ghp|gho|ghs|github_pat|xox[abpr]|hf)_[A-Za-z0-9_]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),
]
REDACTED = "[REDACTED]"


def _secret_values() -> list[str]:
    vals = {v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 6}
    return sorted(vals, key=len, reverse=True)


def redact(obj: Any) -> Any:
    """A copy of `obj` (str / list / dict / tuple, recursively) with secrets removed:
    the values of environment variables whose name contains KEY, TOKEN, SECRET or
    PASSWORD, ``Bearer ...`` / ``Authorization: ...`` / ``api_key=...`` values and
    strings shaped like provider keys (``sk-...``, ``ghp_...``, ``AKIA...``)."""
    secrets = _secret_values()

    def one(s: str) -> str:
        for v in secrets:
            s = s.replace(v, REDACTED)
        s = _KEY_PATTERNS[0].sub(lambda m: f"{m.group(1)} {REDACTED}", s)
        s = _KEY_PATTERNS[1].sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", s)
        for p in _KEY_PATTERNS[2:]:
            s = p.sub(REDACTED, s)
        return s

    def walk(x):
        if isinstance(x, str):
            return one(x)
        if isinstance(x, dict):
            return {str(k): (REDACTED if re.search(r"(?i)authorization|api[_-]?key", str(k))
                             else walk(v)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v) for v in x]
        return x

    return walk(obj)


# ---------------------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------------------
def extract_json_object(text: str) -> dict:
    """The first JSON object in `text` (tolerates prose and ```json fences around it).

    Raises ``ValueError`` with a message for the LLM when there is none."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the reply is empty; reply with one JSON object")
    dec = json.JSONDecoder()
    first_err = None
    for m in re.finditer(r"\{", text):
        try:
            obj, _ = dec.raw_decode(text, m.start())
        except json.JSONDecodeError as e:
            first_err = first_err or e
            continue
        if isinstance(obj, dict):
            return obj
    if first_err is not None:
        raise ValueError(f"the reply is not valid JSON ({first_err.msg} at character "
                         f"{first_err.pos}); reply with exactly one JSON object, no comments "
                         "or trailing commas")
    raise ValueError("the reply contains no JSON object; reply with exactly one JSON object")


def _explain_validation(err: pydantic.ValidationError, model: type[pydantic.BaseModel]) -> str:
    lines = []
    for e in err.errors()[:8]:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "(top level)"
        got = e.get("input")
        got_txt = json.dumps(got, default=str)[:80] if got is not None else "nothing"
        lines.append(f"field {loc}: {e.get('msg')} (got {got_txt})")
    more = len(err.errors()) - 8
    if more > 0:
        lines.append(f"... and {more} more")
    return (f"the JSON does not match the {model.__name__} schema: " + "; ".join(lines)
            + ". Reply again with one corrected JSON object.")


def _schema_prompt(model: type[pydantic.BaseModel]) -> str:
    schema = json.dumps(model.model_json_schema(), separators=(",", ":"))
    return ("Reply with exactly one JSON object and nothing else (no prose, no code). "
            f"It must validate against this JSON schema ({model.__name__}):\n{schema}")


# ---------------------------------------------------------------------------------------
# the client
# ---------------------------------------------------------------------------------------
_RETRYABLE = ("Timeout", "RateLimitError", "InternalServerError", "ServiceUnavailableError",
              "APIConnectionError", "BadGatewayError")


def _litellm():
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with warnings.catch_warnings():  # litellm's own pydantic models warn on import
        warnings.simplefilter("ignore", UserWarning)
        import litellm  # optional dependency (extra "llm"), slow to import

    litellm.suppress_debug_info = True
    return litellm


class LLMClient:
    """A budgeted, retrying, redacting client for one model (module docstring).

    **Arguments:**

    - `model`: a litellm provider string, e.g. ``"openai/gpt-4o-mini"``.
    - `api_base`: endpoint of a local or self-hosted server (``None``: the provider's).
    - `timeout_s`: per-request timeout (s).
    - `max_retries`: retries after a timeout / 429 / 5xx / connection error.
    - `max_invalid`: attempts of :meth:`ask_until_valid` before it gives up.
    - `max_cost` (USD), `max_tokens`: budgets (``None``: unlimited).
    - `temperature`: sampling temperature (0: as deterministic as the provider allows).
    - `structured`: ``None`` (ask litellm whether the model supports response schemas),
      True or False (force).
    - `cost_per_token`: ``(input, output)`` USD per token, for models outside litellm's
      cost map (a local model costs 0 without it).
    - `backoff_s`, `max_backoff_s`, `sleep`: retry backoff; `sleep` is injectable.
    - `mock_response`: passed to ``litellm.completion`` (unit tests; no network).

    Raises :class:`LLMConfigError` for an unknown provider, a missing API key or a
    bad budget, before anything is sent.
    """

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        timeout_s: SupportsFloat = 30,
        max_retries: SupportsIndex = 3,
        max_invalid: SupportsIndex = 3,
        max_cost: SupportsFloat | None = None,
        max_tokens: SupportsIndex | None = None,
        temperature: SupportsFloat = 0.0,
        structured: bool | None = None,
        cost_per_token: tuple[SupportsFloat, SupportsFloat] | None = None,
        backoff_s: SupportsFloat = 1.0,
        max_backoff_s: SupportsFloat = 30.0,
        sleep: Callable[[float], Any] = time.sleep,
        mock_response: str | None = None,
    ):
        if not isinstance(model, str) or not model.strip():
            raise LLMConfigError(f"model must be a litellm provider string such as "
                                 f"'openai/gpt-4o-mini'; got {model!r}")
        for name, v in (("timeout_s", timeout_s), ("backoff_s", backoff_s)):
            if not (float(v) > 0):
                raise LLMConfigError(f"{name} must be > 0; got {v}")
        for name, v in (("max_retries", max_retries), ("max_invalid", max_invalid)):
            if int(v) != v or int(v) < (0 if name == "max_retries" else 1):
                raise LLMConfigError(f"{name} must be an integer >= "
                                     f"{0 if name == 'max_retries' else 1}; got {v}")
        if max_cost is not None and not float(max_cost) > 0:
            raise LLMConfigError(f"max_cost must be a positive number of dollars; got {max_cost}")
        if max_tokens is not None and not (int(max_tokens) == max_tokens and max_tokens > 0):
            raise LLMConfigError(f"max_tokens must be a positive integer; got {max_tokens}")
        self.model = model.strip()
        self.api_base = api_base
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_invalid = int(max_invalid)
        self.max_cost = None if max_cost is None else float(max_cost)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.temperature = float(temperature)
        self.cost_per_token = cost_per_token
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self._sleep = sleep
        self._mock = mock_response
        self.total_prompt_tokens = 0
        self.total_completion_tokens = 0
        self.total_cost = 0.0
        self.n_requests = 0
        self.n_invalid = 0
        self.transcript: list[dict] = []
        litellm = _litellm()
        try:
            _, self.provider, _, _ = litellm.get_llm_provider(model=self.model, api_base=api_base)
        except Exception as e:
            raise LLMConfigError(
                f"unknown LLM provider for model {self.model!r}; use a litellm provider "
                "string 'provider/model' such as 'openai/gpt-4o-mini', "
                "'anthropic/claude-3-5-haiku-latest' or 'ollama/llama3' "
                f"({type(e).__name__})") from None
        if mock_response is None:
            env = litellm.validate_environment(model=self.model, api_base=api_base)
            missing = [k for k in env.get("missing_keys", []) if not (
                api_base and k.endswith("_API_BASE"))]
            if missing:
                local = (" For a local OpenAI-compatible server (api_base) any dummy value "
                         "works, e.g. export OPENAI_API_KEY=sk-local." if api_base else "")
                raise LLMConfigError(
                    f"model {self.model!r} needs {', '.join(missing)} in the environment "
                    f"(API keys are read from the environment only).{local}")
        self.structured = (bool(litellm.supports_response_schema(model=self.model))
                           if structured is None else bool(structured))
        self._log("config", model=self.model, provider=self.provider, api_base=api_base,
                  structured=self.structured, timeout_s=self.timeout_s,
                  max_retries=self.max_retries, max_cost=self.max_cost,
                  max_tokens=self.max_tokens, temperature=self.temperature)

    # -- accounting -------------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return self.total_prompt_tokens + self.total_completion_tokens

    @property
    def budget_exhausted(self) -> bool:
        """True once `max_cost` dollars or `max_tokens` tokens are spent."""
        return bool((self.max_cost is not None and self.total_cost >= self.max_cost)
                    or (self.max_tokens is not None and self.total_tokens >= self.max_tokens))

    def budget_status(self) -> dict:
        """Spent and allowed tokens and dollars (for reports)."""
        return {"tokens": self.total_tokens, "max_tokens": self.max_tokens,
                "cost_usd": self.total_cost, "max_cost_usd": self.max_cost,
                "requests": self.n_requests, "invalid_replies": self.n_invalid,
                "exhausted": self.budget_exhausted}

    def _log(self, event: str, **fields):
        entry = {"event": event, "time": round(time.time(), 3), **fields}
        self.transcript.append(redact(entry))

    def write_transcript(self, path: str | os.PathLike) -> str:
        """Write the (already redacted) transcript as JSON, atomically; returns the path."""
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(redact(self.transcript), f, indent=1, default=str)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    def _usage_of(self, response) -> Usage:
        u = getattr(response, "usage", None)
        pt = int(getattr(u, "prompt_tokens", 0) or 0)
        ct = int(getattr(u, "completion_tokens", 0) or 0)
        if self.cost_per_token is not None:
            cost = pt * float(self.cost_per_token[0]) + ct * float(self.cost_per_token[1])
        else:
            try:
                cost = float(_litellm().completion_cost(completion_response=response) or 0.0)
            except Exception:  # a model outside litellm's cost map costs 0
                cost = 0.0
        return Usage(pt, ct, cost)

    # -- requests ---------------------------------------------------------------------
    def _complete(self, messages: list[dict], response_model: type[pydantic.BaseModel]):
        litellm = _litellm()
        kwargs: dict[str, Any] = dict(
            model=self.model, messages=messages, temperature=self.temperature,
            timeout=self.timeout_s, max_retries=0, num_retries=0, drop_params=True,
        )
        if self.api_base is not None:
            kwargs["api_base"] = self.api_base
        if self.structured:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": response_model.__name__,
                                "schema": response_model.model_json_schema()},
            }
        if self._mock is not None:
            kwargs["mock_response"] = self._mock
        retryable = tuple(getattr(litellm, n) for n in _RETRYABLE if hasattr(litellm, n))
        last = None
        for attempt in range(self.max_retries + 1):
            self.n_requests += 1
            t0 = time.perf_counter()
            try:
                return litellm.completion(**kwargs)
            except retryable as e:
                last = e
                status = getattr(e, "status_code", None)
                self._log("error", attempt=attempt, kind=type(e).__name__, status=status,
                          message=str(e)[:500], seconds=round(time.perf_counter() - t0, 3),
                          retry=attempt < self.max_retries)
                if attempt < self.max_retries:
                    self._sleep(min(self.max_backoff_s, self.backoff_s * 2**attempt))
            except Exception as e:  # auth, bad request, not found: retrying cannot help
                self._log("error", attempt=attempt, kind=type(e).__name__,
                          status=getattr(e, "status_code", None), message=str(e)[:500],
                          retry=False)
                raise LLMUnavailable(redact(f"{self.model}: {type(e).__name__}: "
                                            f"{str(e)[:300]}")) from None
        raise LLMUnavailable(redact(
            f"{self.model}: no reply after {self.max_retries + 1} attempt(s); last error "
            f"{type(last).__name__}: {str(last)[:300]}"))

    def ask(self, messages: list[dict], response_model: type[pydantic.BaseModel]) -> LLMReply:
        """One request; the reply parsed into `response_model` or rejected.

        **Arguments:**

        - `messages`: chat messages ``[{"role": ..., "content": ...}, ...]``.
        - `response_model`: a pydantic model class the reply must validate against.

        **Returns:** an :class:`LLMReply`. Malformed or invalid replies are not errors:
        ``parsed`` is None and ``rejection`` says what to fix (and ``n_invalid`` counts
        them). Raises :class:`LLMBudgetExhausted` (nothing sent) once the budget is
        spent, :class:`LLMUnavailable` when the provider cannot be reached.
        """
        if not (isinstance(response_model, type)
                and issubclass(response_model, pydantic.BaseModel)):
            raise TypeError("response_model must be a pydantic.BaseModel subclass")
        msgs = _check_messages(messages)
        if self.budget_exhausted:
            self._log("refused", reason="budget exhausted", **self.budget_status())
            raise LLMBudgetExhausted(
                f"LLM budget exhausted ({self.total_tokens} tokens, ${self.total_cost:.4f}; "
                f"limits max_tokens={self.max_tokens}, max_cost={self.max_cost}); no request sent")
        # The schema goes into the prompt as well: the plain-JSON fallback needs it,
        # and providers that ignore response_format still know what to write.
        msgs = msgs + [{"role": "system", "content": _schema_prompt(response_model)}]
        self._log("request", messages=msgs, response_model=response_model.__name__,
                  structured=self.structured)
        response = self._complete(msgs, response_model)
        usage = self._usage_of(response)
        self.total_prompt_tokens += usage.prompt_tokens
        self.total_completion_tokens += usage.completion_tokens
        self.total_cost += usage.cost_usd
        try:
            raw = response.choices[0].message.content or ""
        except (AttributeError, IndexError):
            raw = ""
        parsed, rejection = self.parse(raw, response_model)
        if rejection is not None:
            self.n_invalid += 1
        self._log("reply", raw=raw, valid=parsed is not None, rejection=rejection,
                  usage=dataclasses.asdict(usage),
                  budget=self.budget_status())
        if self.budget_exhausted:
            self._log("budget", reason="budget spent by this reply; further requests are "
                      "refused", **self.budget_status())
        return LLMReply(parsed, raw, rejection, usage)

    @staticmethod
    def parse(raw: str, response_model: type[pydantic.BaseModel]):
        """``(instance, None)`` or ``(None, rejection)`` for a reply text."""
        try:
            obj = extract_json_object(raw)
        except ValueError as e:
            return None, str(e)
        try:
            return response_model.model_validate(obj), None
        except pydantic.ValidationError as e:
            return None, _explain_validation(e, response_model)

    def ask_until_valid(
        self,
        messages: list[dict],
        response_model: type[pydantic.BaseModel],
        check: Callable[[Any], str | None] | None = None,
    ) -> LLMReply:
        """Ask up to `max_invalid` times, feeding each rejection back to the LLM.

        `check(parsed)` may reject a schema-valid reply (e.g. an action the grammar
        refuses) by returning a reason; ``None`` accepts. Returns the first accepted
        reply, or the last rejected one (``parsed`` None) after `max_invalid` tries.
        Budget and availability errors propagate (see :meth:`ask`).
        """
        msgs = _check_messages(messages)
        reply = None
        for _ in range(self.max_invalid):
            reply = self.ask(msgs, response_model)
            rejection = reply.rejection
            if reply.parsed is not None and check is not None:
                rejection = check(reply.parsed)
                if rejection is not None:
                    self.n_invalid += 1
                    self._log("rejected", raw=reply.raw, rejection=str(rejection))
                    reply = LLMReply(None, reply.raw, str(rejection), reply.usage)
            if rejection is None:
                return reply
            msgs = msgs + [
                {"role": "assistant", "content": reply.raw},
                {"role": "user", "content": f"Your reply was rejected: {rejection}"},
            ]
        self._log("gave-up", attempts=self.max_invalid, rejection=reply.rejection)
        return reply


def _check_messages(messages: Sequence[dict]) -> list[dict]:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"message {i}: role must be system, user or assistant; "
                             f"got {m['role']!r}")
        out.append({"role": m["role"], "content": str(m["content"])})
    return out
