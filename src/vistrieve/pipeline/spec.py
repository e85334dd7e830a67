"""The pipeline spec: one file that names every stage, read by Python, the CLI, the service
and the LangChain adapter alike.

A spec is TOML (or JSON) with these sections; relative paths are relative to the file::

    name = "photos"

    [retriever]              # the first stage: any saved retriever directory
    path = "index"           # dense, FAISS, hash (with float re-scoring), GRACE ...
    k = 100                  # candidates passed on (default 128)

    [[rerank]]               # zero or more, in order
    kind = "qformer"         # qformer | blip2 | listwise
    path = "embedded"        # a Q-Former directory / a BLIP-2 checkpoint
    k = 32                   # candidates it re-scores
    fusion = "replace"       # replace | weighted | rrf (weight = 0.5 for weighted)

    [rewriter]               # optional: applied to every query
    kind = "cirevl"          # cirevl (composed queries) | dialog-summary
    captioner = "embedded"   # cirevl: a captioner directory, "embedded", or a table

    [feedback]               # optional: relevant-marked hits rewrite the query (EIIRwQR)
    captioner = "embedded"

    [questioner]             # optional: the chat agent's questions
    kind = "llm"             # generic | llm

    [llm]                    # the LLM of the rewriter, feedback loop and questioner
    backend = "openai"       # smollm2 | hf | langchain | openai
    base_url = "http://127.0.0.1:8080/v1"
    model = "qwen2.5-7b-instruct"
    api_key_env = "OPENAI_API_KEY"

    [cache]                  # replay cache of LLM answers and captions
    dir = "llm-cache"

:func:`load_spec` validates a spec (an unknown key is an error that names it and suggests
the closest known key) and returns it normalised; :func:`build_parts` builds the stages.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class SpecError(ValueError):
    """A pipeline spec that cannot be used; the message names the offending key."""


_TOP = {"name", "retriever", "rerank", "rewriter", "feedback", "questioner", "llm", "cache"}
_RETRIEVER = {"path", "k", "device", "batch_size", "num_beams"}
_RERANK = {"kind", "path", "k", "fusion", "weight", "name", "mode", "batch_size", "llm",
           "window", "n_permutations", "device"}  # fmt: skip
_REWRITER = {"kind", "captioner"}
_FEEDBACK = {"captioner", "rounds", "show"}
_QUESTIONER = {"kind"}
_LLM = {"backend", "directory", "name_or_path", "gguf_file", "model", "kwargs", "base_url",
        "api_key_env", "timeout", "max_retries", "max_tokens", "temperature", "adapter",
        "max_new_tokens", "name"}  # fmt: skip
_CACHE = {"dir", "mode"}
_PATH_KEYS = {"path", "directory", "name_or_path", "adapter", "dir"}

RERANK_KINDS = ("qformer", "blip2", "listwise")
REWRITER_KINDS = ("cirevl", "dialog-summary")
QUESTIONER_KINDS = ("generic", "llm")
LLM_BACKENDS = ("smollm2", "hf", "langchain", "openai")
FUSIONS = ("replace", "weighted", "rrf")


def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(
                f"unknown key {where + '.' if where else ''}{key}{hint}; known keys: "
                f"{', '.join(sorted(known))}"
            )


def _table(spec: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, str) and key in ("rewriter", "questioner"):
        return {"kind": value}
    if not isinstance(value, Mapping):
        raise SpecError(f"{key} must be a table, got {type(value).__name__}")
    return dict(value)


def _choice(table: Mapping[str, Any], key: str, choices: tuple[str, ...], where: str) -> str:
    value = table.get(key)
    if value not in choices:
        raise SpecError(f"{where}.{key} must be one of {', '.join(choices)}; got {value!r}")
    return str(value)


def _positive_int(table: Mapping[str, Any], key: str, where: str) -> None:
    value = table.get(key)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise SpecError(f"{where}.{key} must be a positive integer, got {value!r}")


def _resolve(value: Any, base: Path | None) -> Any:
    """Relative local paths -> absolute (relative to the spec's folder)."""
    if not isinstance(value, str) or base is None or value == "embedded":
        return value
    if value.startswith(("hf-hub:", "http://", "https://")):
        return value
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    candidate = (base / p).resolve()
    # A hub-style name ("org/model") that is no local path stays as it is.
    return (
        str(candidate) if candidate.exists() or "/" not in value or value.startswith(".") else value
    )


def _resolve_paths(table: dict[str, Any], base: Path | None) -> dict[str, Any]:
    out = dict(table)
    for key in _PATH_KEYS & set(out):
        out[key] = _resolve(out[key], base)
    if isinstance(out.get("captioner"), str):
        out["captioner"] = _resolve(out["captioner"], base)
    elif isinstance(out.get("captioner"), Mapping):
        out["captioner"] = _resolve_paths(dict(out["captioner"]), base)
    if isinstance(out.get("llm"), Mapping):
        out["llm"] = _resolve_paths(dict(out["llm"]), base)
    return out


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse a TOML (``.toml``) or JSON (``.json``) spec file.

    Raises:
        FileNotFoundError: no such file.
        SpecError: it does not parse.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pipeline spec not found: {p}")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError(f"{p} is not a valid {p.suffix.lstrip('.') or 'TOML'} file: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{p} must hold a table of sections")
    return data


def load_spec(
    source: str | os.PathLike[str] | Mapping[str, Any], *, base_dir: Path | None = None
) -> dict[str, Any]:
    """A validated, normalised spec (paths absolute, defaults filled in).

    Args:
        source: A spec file (``.toml`` / ``.json``) or a mapping.
        base_dir: Folder relative paths of a mapping are taken from (a file's own folder
            for a file; the working directory when None).

    Raises:
        SpecError: a malformed spec; the message names the bad key.
        FileNotFoundError: a spec file that does not exist.
    """
    if isinstance(source, Mapping):
        raw = dict(source)
        base = base_dir or Path.cwd()
    else:
        raw = read_spec_file(source)
        base = Path(source).resolve().parent
    _check_keys(raw, _TOP, "")
    out: dict[str, Any] = {"name": str(raw.get("name", "pipeline"))}

    retriever = _table(raw, "retriever")
    if retriever is None or not retriever.get("path"):
        raise SpecError("the spec needs a first stage: [retriever] with path = <saved directory>")
    _check_keys(retriever, _RETRIEVER, "retriever")
    _positive_int(retriever, "k", "retriever")
    out["retriever"] = _resolve_paths({"k": 128, **retriever}, base)

    stages = raw.get("rerank", [])
    if isinstance(stages, Mapping):
        stages = [stages]
    if not isinstance(stages, list):
        raise SpecError("rerank must be a list of tables ([[rerank]] in TOML)")
    out["rerank"] = []
    for i, st in enumerate(stages):
        where = f"rerank[{i}]"
        if not isinstance(st, Mapping):
            raise SpecError(f"{where} must be a table")
        st = dict(st)
        _check_keys(st, _RERANK, where)
        _choice(st, "kind", RERANK_KINDS, where)
        _positive_int(st, "k", where)
        st.setdefault("k", 32)
        st.setdefault("fusion", "replace")
        _choice(st, "fusion", FUSIONS, where)
        weight = st.setdefault("weight", 0.5)
        if not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
            raise SpecError(f"{where}.weight must be a number in [0, 1], got {weight!r}")
        if st["kind"] in ("qformer", "blip2"):
            if st["kind"] == "blip2" and not st.get("path"):
                raise SpecError(f"{where}: a blip2 reranker needs path = <checkpoint>")
            st.setdefault("path", "embedded")
        if st["kind"] == "blip2":
            mode = st.setdefault("mode", "itm+itc")
            if mode not in ("itm", "itc", "itm+itc"):
                raise SpecError(f"{where}.mode must be itm, itc or itm+itc; got {mode!r}")
        out["rerank"].append(_resolve_paths(st, base))
    names = [st.get("name") or st["kind"] for st in out["rerank"]]
    if len(set(names)) != len(names):
        raise SpecError(f"rerank stage names must be unique, got {names}; set name = ...")

    for key, known, kinds in (
        ("rewriter", _REWRITER, REWRITER_KINDS),
        ("questioner", _QUESTIONER, QUESTIONER_KINDS),
    ):
        table = _table(raw, key)
        if table is not None:
            _check_keys(table, known, key)
            _choice(table, "kind", kinds, key)
            out[key] = _resolve_paths(table, base)
    feedback = _table(raw, "feedback")
    if feedback is not None:
        _check_keys(feedback, _FEEDBACK, "feedback")
        _positive_int(feedback, "show", "feedback")
        out["feedback"] = _resolve_paths({"captioner": "embedded", **feedback}, base)
    if out.get("rewriter", {}).get("kind") == "cirevl":
        out["rewriter"].setdefault("captioner", "embedded")

    llm = _table(raw, "llm")
    needs_llm = (
        "feedback" in out or "rewriter" in out or out.get("questioner", {}).get("kind") == "llm"
    )
    if llm is None and needs_llm:
        llm = {"backend": "smollm2"}
    if llm is not None:
        _check_keys(llm, _LLM, "llm")
        _choice(llm, "backend", LLM_BACKENDS, "llm")
        if llm["backend"] == "openai" and not (llm.get("base_url") and llm.get("model")):
            raise SpecError("llm: the openai backend needs base_url and model")
        if llm["backend"] == "hf" and not llm.get("name_or_path"):
            raise SpecError("llm: the hf backend needs name_or_path")
        if llm["backend"] == "langchain" and not llm.get("model"):
            raise SpecError("llm: the langchain backend needs model = 'package.module:Class'")
        out["llm"] = _resolve_paths(llm, base)
    cache = _table(raw, "cache")
    if cache is not None:
        _check_keys(cache, _CACHE, "cache")
        if not cache.get("dir"):
            raise SpecError("cache needs dir = <folder>")
        mode = cache.setdefault("mode", "readwrite")
        if mode not in ("readwrite", "read", "write"):
            raise SpecError(f"cache.mode must be readwrite, read or write; got {mode!r}")
        out["cache"] = _resolve_paths(cache, base)
    return out


def write_spec(spec: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a spec as TOML (``.toml``) or JSON (any other suffix), atomically."""
    from vistrieve.utils.io import atomic_write_bytes

    p = Path(path)
    if p.suffix.lower() == ".toml":
        import tomli_w

        data = tomli_w.dumps(_drop_none(dict(spec))).encode("utf-8")
    else:
        data = (json.dumps(spec, indent=2) + "\n").encode("utf-8")
    atomic_write_bytes(p, data)


def _drop_none(value: Any) -> Any:
    # TOML has no null: an absent key means the default.
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


@dataclass
class PipelineParts:
    """The components a spec builds (see :meth:`RetrievalPipeline.from_spec`)."""

    spec: dict[str, Any]
    name: str
    retriever: Any
    k_retrieve: int
    rerankers: list[tuple[Any, dict[str, Any]]] = field(default_factory=list)
    rewriter: Any = None
    llm: Any = None
    questioner: Any = None
    feedback: Any = None
    cache: Any = None

    def describe(self) -> list[dict[str, Any]]:
        """One row per stage: its role, kind and model, for ``vistrieve pipeline check``."""
        rows: list[dict[str, Any]] = []
        r = self.retriever
        rows.append(
            {
                "stage": "first stage",
                "kind": type(r).__name__,
                "model": getattr(getattr(r, "encoder", None), "name", None),
                "items": len(getattr(r, "corpus", ()) or ()) or None,
                "k": self.k_retrieve,
            }
        )
        for reranker, opts in self.rerankers:
            rows.append(
                {
                    "stage": f"rerank ({opts.get('name') or getattr(reranker, 'name', '')})",
                    "kind": type(reranker).__name__,
                    "k": opts["k"],
                    "fusion": opts["fusion"],
                }
            )
        for role, obj in (
            ("rewriter", self.rewriter),
            ("feedback", self.feedback),
            ("questioner", self.questioner),
        ):
            if obj is not None:
                rows.append({"stage": role, "kind": type(obj).__name__})
        if self.llm is not None:
            rows.append({"stage": "llm", "kind": type(self.llm).__name__,
                         "model": getattr(self.llm, "name", None)})  # fmt: skip
        return rows


def _llm_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    opts = {k: v for k, v in spec.items() if k != "backend"}
    return {"name": spec["backend"], **opts}


def build_parts(
    source: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any
) -> PipelineParts:
    """Validate a spec and build its components (the retriever, rerankers, rewriter, LLM,
    questioner, feedback loop, replay cache).

    Args:
        source: A spec file or mapping (see :func:`load_spec`).
        **overrides: Encoder runtime options for the first stage (``device``, ...).
    """
    from vistrieve.llm import CachedLLM, ReplayCache, create_llm
    from vistrieve.query_rewriting import create_rewriter, load_captioner
    from vistrieve.query_rewriting.cirevl import CachedCaptioner
    from vistrieve.rerankers import load_reranker
    from vistrieve.retrievers import load_retriever

    spec = load_spec(source)
    r = dict(spec["retriever"])
    path, k_retrieve = r.pop("path"), int(r.pop("k"))
    retriever: Any = load_retriever(path, **{**r, **overrides})
    corpus = getattr(retriever, "corpus", None)
    parts = PipelineParts(spec=spec, name=spec["name"], retriever=retriever,
                          k_retrieve=k_retrieve)  # fmt: skip
    cache = None
    if "cache" in spec:
        cache = ReplayCache(spec["cache"]["dir"], mode=spec["cache"]["mode"])
    parts.cache = cache
    for st in spec["rerank"]:
        if corpus is None:
            raise SpecError("rerank stages need a first stage with a corpus (items by id)")
        stage = {k: st[k] for k in ("k", "fusion", "weight")}
        stage["name"] = st.get("name")
        options = {k: v for k, v in st.items() if k not in ("k", "fusion", "weight")}
        if options.get("name") is None:
            options.pop("name", None)
        parts.rerankers.append((load_reranker(options, corpus), stage))
    if "llm" in spec:
        llm = create_llm(_llm_spec(spec["llm"]))
        parts.llm = CachedLLM(llm, cache)
    if "rewriter" in spec:
        rw = dict(spec["rewriter"])
        if rw["kind"] == "cirevl":
            captioner = CachedCaptioner(load_captioner(rw.pop("captioner")), cache)
            parts.rewriter = create_rewriter(rw, captioner=captioner, llm=parts.llm)
        else:
            parts.rewriter = create_rewriter(rw, llm=parts.llm)
    if "feedback" in spec:
        from vistrieve.query_rewriting.chat import FeedbackLoop

        fb = dict(spec["feedback"])
        captioner = CachedCaptioner(load_captioner(fb.pop("captioner")), cache)
        parts.feedback = FeedbackLoop(retriever, captioner, parts.llm, **fb)
    if "questioner" in spec:
        from vistrieve.query_rewriting.chat import GenericQuestioner, LLMQuestioner

        kind = spec["questioner"]["kind"]
        parts.questioner = LLMQuestioner(parts.llm) if kind == "llm" else GenericQuestioner()
    return parts


__all__ = [
    "FUSIONS",
    "LLM_BACKENDS",
    "PipelineParts",
    "SpecError",
    "build_parts",
    "load_spec",
    "read_spec_file",
    "write_spec",
]
