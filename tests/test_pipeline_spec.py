"""Pipeline specs: validation with named keys, round trips, every command taking a spec, the
service serving one, and the OpenAI-compatible endpoint backend against a real HTTP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from vistrieve.cli import main
from vistrieve.data.shapes import ShapesWorld
from vistrieve.encoders import create_encoder
from vistrieve.llm import EndpointError, OpenAIChatLLM, create_llm
from vistrieve.pipeline import RetrievalPipeline
from vistrieve.pipeline.spec import SpecError, load_spec, write_spec
from vistrieve.retrievers import DenseRetriever
from vistrieve.types import Query


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("spec")
    corpus = ShapesWorld(seed=0, n_train=0, n_val=0, n_test=20, n_composed=0, n_dialogs=0).corpus(
        "test"
    )
    DenseRetriever.build(create_encoder("shapes-clip", progress=False), corpus,
                         directory=root / "index")  # fmt: skip
    (root / "pipeline.toml").write_text(
        'name = "shapes"\n\n[retriever]\npath = "index"\nk = 10\n\n'
        '[[rerank]]\nkind = "qformer"\npath = "embedded"\nk = 8\nfusion = "weighted"\n'
    )
    return root


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, r"needs a first stage: \[retriever\]"),
        ({"retriever": {"path": "x", "kk": 3}}, r"unknown key retriever.kk \(did you mean 'k'\?\)"),
        ({"retriever": {"path": "x"}, "rerank": [{"kind": "qformer", "fushion": "rrf"}]},
         r"unknown key rerank\[0\].fushion \(did you mean 'fusion'\?\)"),
        ({"retriever": {"path": "x"}, "rerank": [{"kind": "colbert"}]},
         r"rerank\[0\].kind must be one of qformer, blip2, listwise"),
        ({"retriever": {"path": "x"}, "rerank": [{"kind": "qformer", "k": 0}]},
         r"rerank\[0\].k must be a positive integer"),
        ({"retriever": {"path": "x"}, "rerank": [{"kind": "blip2"}]}, "needs path"),
        ({"retriever": {"path": "x"}, "rerank": [{"kind": "qformer"}, {"kind": "qformer"}]},
         "names must be unique"),
        ({"retriever": {"path": "x"}, "llm": {"backend": "openai"}}, "needs base_url and model"),
        ({"retriever": {"path": "x"}, "questioner": "oracle"}, "questioner.kind must be one of"),
        ({"retriever": {"path": "x"}, "rerankers": []}, r"unknown key rerankers \(did you mean"),
    ],
)  # fmt: skip
def test_bad_specs_name_the_bad_key(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(spec)


def test_relative_paths_are_relative_to_the_file(
    workdir: Path, tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    spec = load_spec(workdir / "pipeline.toml")
    assert spec["retriever"]["path"] == str(workdir / "index")
    assert spec["rerank"][0]["path"] == "embedded"
    assert spec["rerank"][0]["weight"] == 0.5  # defaults filled in


def test_from_spec_to_spec_round_trip(workdir: Path, tmp_path: Path) -> None:
    pipe = RetrievalPipeline.from_spec(workdir / "pipeline.toml")
    hits = pipe.retrieve([Query(text="a red circle")], k=5)[0]
    assert set(hits[0].scores) == {"dense", "qformer"}
    assert set(pipe.last_timings) == {"first_stage", "qformer"}
    spec = pipe.to_spec()
    for name in ("again.toml", "again.json"):
        write_spec(spec, tmp_path / name)
        again = RetrievalPipeline.from_spec(tmp_path / name)
        assert again.to_spec() == spec
        assert [h.id for h in again.retrieve([Query(text="a red circle")], k=5)[0]] == [
            h.id for h in hits
        ]
    with pytest.raises(ValueError, match="assembled in Python"):
        RetrievalPipeline(pipe.retriever).to_spec()


def test_pipeline_check_and_search_commands(workdir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = str(workdir / "pipeline.toml")
    assert main(["pipeline", "check", spec, "--query", "a red circle"]) == 0
    out = capsys.readouterr().out
    assert "is valid" in out and "QFormerReranker" in out and "fusion=weighted" in out
    assert "stage seconds" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[retriever]\npath = "x"\nkay = 3\n')
    assert main(["pipeline", "check", str(bad)]) == 2
    assert "unknown key retriever.kay" in capsys.readouterr().err

    assert main(["search", "--pipeline", spec, "a red circle", "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and set(hits[0]["scores"]) == {"dense", "qformer"}

    queries = tmp_path / "q.jsonl"
    queries.write_text('a red circle\n{"text": "a blue square", "id": "q2"}\n\n')
    out_file = tmp_path / "hits.jsonl"
    argv = ["search", "--pipeline", spec, "--queries", str(queries), "--output", str(out_file)]
    assert main([*argv, "-k", "4"]) == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["query"] for r in rows] == ["1", "q2"]
    assert all(len(r["hits"]) == 4 for r in rows) and "qformer" in rows[0]["batch_seconds"]


def test_interactive_search_loads_once(workdir: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import io

    import vistrieve.retrievers as retrievers

    loads = {"n": 0}
    real = retrievers.load_retriever

    def counting(*a: Any, **k: Any) -> Any:
        loads["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(retrievers, "load_retriever", counting)
    monkeypatch.setattr("sys.stdin", io.StringIO("a red circle\n{bad json\na blue square\n"))
    assert main(["search", str(workdir / "index"), "--interactive", "-k", "2"]) == 0
    captured = capsys.readouterr()
    assert loads["n"] == 1 and captured.out.count("text query -> top 2") == 2
    assert "error: query line 2" in captured.err


def test_eval_takes_a_pipeline(workdir: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from vistrieve.data.manifest import write_manifest
    from vistrieve.retrievers import load_retriever

    # The index's own items (their images are stored with it) as the evaluation set.
    write_manifest(load_retriever(workdir / "index").corpus, tmp_path / "eval.jsonl")
    argv = ["eval", "--dataset", "manifest", "--data", str(tmp_path / "eval.jsonl")]
    argv += ["--pipeline", str(workdir / "pipeline.toml"), "--out", str(tmp_path / "ev")]
    assert main(argv) == 0
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    name = next(n for n in report["methods"] if n.startswith("pipeline:shapes"))
    metrics = report["methods"][name]["metrics"]
    assert any(k.endswith("text_to_image_R@1") for k in metrics)


def test_the_service_serves_a_pipeline_with_scores_timings_and_metrics(workdir: Path) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vistrieve.service.app import create_app

    pipe = RetrievalPipeline.from_spec(workdir / "pipeline.toml")
    with TestClient(create_app(pipe)) as c:
        body = c.post("/search/text", json={"text": "a red circle", "k": 5}).json()
        assert set(body["hits"][0]["scores"]) == {"dense", "qformer"}
        assert {"first_stage", "qformer", "total"} <= set(body["timings"])
        sid = c.post("/sessions").json()["session_id"]
        reply = c.post(f"/sessions/{sid}/messages", json={"text": "a red circle"}).json()
        assert "qformer" in reply["hits"][0]["scores"] and "qformer" in reply["timings"]
        metrics = c.get("/metrics").text
    assert 'vistrieve_stage_seconds_count{stage="qformer"}' in metrics
    assert 'vistrieve_stage_seconds_bucket{le="0.001",stage="first_stage"}' in metrics
    assert 'vistrieve_requests_total{route="search",status="200"}' in metrics


# ----------------------------------------------------------------------------- endpoint
class _Endpoint(BaseHTTPRequestHandler):
    """An OpenAI-compatible chat-completions server with scripted failures."""

    script: list[tuple[int, str, float]] = []
    seen: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "body": body,
                                "auth": self.headers.get("Authorization")})  # fmt: skip
        status, text, delay = type(self).script.pop(0) if type(self).script else (200, "ok", 0)
        time.sleep(delay)
        if status == 200 and not text.startswith("!"):
            text = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]})
        payload = text.lstrip("!").encode()
        try:
            self.send_response(status)
            if status == 429:
                self.send_header("Retry-After", "0")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[str]:
    _Endpoint.script, _Endpoint.seen = [], []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadingHTTPServer(("127.0.0.1", port), _Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}/v1"
    server.shutdown()
    server.server_close()


MSG = [{"role": "user", "content": "caption: a dog. instruction: make it a cat"}]


def test_endpoint_answers_and_sends_the_key_from_the_environment(endpoint, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test")
    _Endpoint.script = [(200, "Edited Description: a cat", 0)]
    llm = create_llm({"name": "openai", "base_url": endpoint, "model": "tiny",
                      "api_key_env": "TEST_LLM_KEY"})  # fmt: skip
    assert llm.complete(MSG) == "Edited Description: a cat"
    seen = _Endpoint.seen[0]
    assert seen["path"] == "/v1/chat/completions" and seen["auth"] == "Bearer sk-test"
    assert seen["body"]["model"] == "tiny" and seen["body"]["messages"] == MSG
    assert "sk-test" not in llm.name  # the key never reaches names, specs or caches


def test_endpoint_retries_429_and_5xx_with_backoff(endpoint) -> None:  # type: ignore[no-untyped-def]
    _Endpoint.script = [(429, "{}", 0), (503, "busy", 0), (200, "fine", 0)]
    llm = OpenAIChatLLM(endpoint, "m", api_key_env=None, backoff=0.01, max_retries=3)
    assert llm.complete(MSG) == "fine" and llm.cost()["endpoint_retries"] == 2
    _Endpoint.script = [(500, "boom", 0)] * 3
    llm = OpenAIChatLLM(endpoint, "m", api_key_env=None, backoff=0.01, max_retries=2)
    with pytest.raises(EndpointError, match="HTTP 500: 'boom'"):
        llm.complete(MSG)
    assert llm.cost()["endpoint_failures"] == 1


def test_endpoint_timeouts_client_errors_and_malformed_json(endpoint) -> None:  # type: ignore[no-untyped-def]
    _Endpoint.script = [(200, "late", 1.0), (200, "in time", 0)]
    llm = OpenAIChatLLM(endpoint, "m", api_key_env=None, timeout=0.2, backoff=0.01)
    assert llm.complete(MSG) == "in time" and llm.retries == 1
    _Endpoint.script = [(400, '{"error": "bad model"}', 0)]
    with pytest.raises(EndpointError, match="HTTP 400"):
        OpenAIChatLLM(endpoint, "m", api_key_env=None, backoff=0.01).complete(MSG)
    assert len(_Endpoint.seen) == 3  # a client error is not retried
    _Endpoint.script = [(200, "!{not json", 0)]
    with pytest.raises(EndpointError, match="no chat completion .*not json"):
        OpenAIChatLLM(endpoint, "m", api_key_env=None).complete(MSG)
    _Endpoint.script = [(200, '!{"choices": []}', 0)]
    with pytest.raises(EndpointError, match="IndexError"):
        OpenAIChatLLM(endpoint, "m", api_key_env=None).complete(MSG)


def test_a_spec_can_point_the_rewriter_at_an_endpoint(endpoint, workdir: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    _Endpoint.script = [(200, "Edited Description: a small green triangle", 0)]
    spec = {
        "retriever": {"path": str(workdir / "index")},
        "rewriter": {"kind": "cirevl"},
        "llm": {"backend": "openai", "base_url": endpoint, "model": "m", "api_key_env": None},
        "cache": {"dir": str(tmp_path / "cache")},
    }
    pipe = RetrievalPipeline.from_spec(spec)
    ref = Image.new("RGB", (64, 64), (200, 30, 30))
    hits = pipe.retrieve([Query(image=ref, text="make it a green triangle")], k=3)[0]
    assert len(hits) == 3 and _Endpoint.seen[0]["body"]["model"] == "m"
    # The replay cache answers the same request without the endpoint.
    again = RetrievalPipeline.from_spec(spec).retrieve(
        [Query(image=ref, text="make it a green triangle")], k=3
    )[0]
    assert [h.id for h in again] == [h.id for h in hits] and len(_Endpoint.seen) == 1
