"""Book chapter 7, section 7.8: scoring fine-tuned answers with a larger local model, through Ollama's REST API.

Ollama (https://ollama.com) serves open models on this machine: `ollama serve`, then `ollama pull
llama3`. For each test entry the judge is asked the book's question, "score the model response on a
scale from 0 to 100", and the first integer of its reply is the score. Only the standard library's
urllib is used; the requests go to `url` and nowhere else.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

from tqdm.auto import tqdm

from tinygrad_llm.finetune.instruct import format_input

DEFAULT_URL = "http://localhost:11434"
DEFAULT_MODEL = "llama3"


class JudgeUnavailableError(ConnectionError):
    """The judge's server cannot be reached, answers with an HTTP error, or lacks the model."""


def judge_prompt(entry) -> str:
    """The book's scoring prompt for an entry holding the expected "output" and the "model_response"."""
    return (
        f"Given the input `{format_input(entry)}` "
        f"and correct output `{entry['output']}`, "
        f"score the model response `{entry['model_response']}`"
        f" on a scale from 0 to 100, where 100 is the best score. "
        f"Respond with the integer number only."
    )


def _request(url, payload=None, timeout=30.0):
    """The decoded body of a GET (payload None) or a JSON POST to `url`; JudgeUnavailableError when the
    server cannot be reached or answers with an error."""
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        raise JudgeUnavailableError(f"the judge at {url} answered HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise JudgeUnavailableError(f"cannot reach the judge at {url} ({reason}); is Ollama running "
                                    f"(`ollama serve`)?") from None


def check_judge(url=DEFAULT_URL, model=DEFAULT_MODEL, timeout=10.0):
    """Raise JudgeUnavailableError unless the server at `url` answers and lists `model` (GET /api/tags):
    checked before a run, not after its training."""
    body = _request(f"{url.rstrip('/')}/api/tags", timeout=timeout)
    try:
        names = {m["name"] for m in json.loads(body)["models"]}
    except (ValueError, KeyError, TypeError):
        raise JudgeUnavailableError(f"{url} does not answer as Ollama does (GET /api/tags)") from None
    if model not in names and f"{model}:latest" not in names:
        raise JudgeUnavailableError(f"the judge at {url} has no model {model!r} (it has: "
                                    f"{', '.join(sorted(names)) or 'none'}); run `ollama pull {model}`")


def query_model(prompt, model=DEFAULT_MODEL, url=DEFAULT_URL, seed=123, num_ctx=2048, timeout=300.0) -> str:
    """The judge's reply to one user message: the book's query_model, deterministic (seed, temperature 0).
    The reply is read as JSON lines, so a streamed answer (one line per piece) and a whole one both work."""
    payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
               "options": {"seed": seed, "temperature": 0, "num_ctx": num_ctx}, "stream": False}
    body = _request(f"{url.rstrip('/')}/api/chat", payload, timeout=timeout)
    try:
        return "".join(json.loads(line)["message"]["content"] for line in body.splitlines() if line.strip())
    except (ValueError, KeyError, TypeError):
        raise JudgeUnavailableError(f"the judge at {url} answered something other than Ollama's chat "
                                    f"JSON: {body[:80]!r}") from None


def parse_score(reply) -> int | None:
    """The first integer in `reply` if it lies in 0..100 ('85' -> 85, 'Score: 90.' -> 90), else None."""
    found = re.search(r"\d+", reply)
    score = int(found.group()) if found else None
    return score if score is not None and 0 <= score <= 100 else None


def score_responses(entries, model=DEFAULT_MODEL, url=DEFAULT_URL, progress=True) -> list:
    """One score (int 0..100, or None when the reply holds none) per entry with a "model_response"."""
    return [parse_score(query_model(judge_prompt(entry), model, url))
            for entry in tqdm(entries, desc="scoring", unit="entry", disable=not progress)]


__all__ = ["DEFAULT_URL", "DEFAULT_MODEL", "JudgeUnavailableError", "judge_prompt", "check_judge",
           "query_model", "parse_score", "score_responses"]
