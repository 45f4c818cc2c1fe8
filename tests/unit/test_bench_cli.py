"""`rtml bench` as a script sees it: exit codes, one-sentence errors on stderr, `--json` on stdout.

The server is a stdlib HTTP server in a thread (what the CLI does with answers, failures and
closed connections does not need the real runtime); the unreachable case uses a loopback port
that was bound and closed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from rtml.cli import main
from tests.runtime_proc import free_port  # bound, then closed: nothing listens

pytestmark = pytest.mark.unit

JSON_KEYS = {
    "url", "concurrency", "seconds", "requests", "throughput_rps", "p50_ms", "p99_ms", "p999_ms",
    "errors", "error_rate", "statuses", "failures", "degraded", "max_error_rate", "ok",
}  # fmt: skip
TABLE_ROWS = ["concurrency", "requests", "throughput", "p50", "p99", "p99.9", "errors",
              "fallbacks (degraded)"]  # fmt: skip


class PredictServer:
    """Answers POST /predict: every `fail_every`-th request with 503 (0: never), the others 200.

    `protocol` HTTP/1.1 keeps connections alive as the runtime does; HTTP/1.0 closes each one.
    `hang_up`: close the connection without answering (no status line at all).
    """

    def __init__(self, fail_every: int = 0, protocol: str = "HTTP/1.1", hang_up: bool = False):
        self.count = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = protocol
            disable_nagle_algorithm = True  # headers and body are two writes

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if hang_up:
                    self.close_connection = True
                    return
                with lock:
                    server.count += 1
                    n = server.count
                failed = server_fails(n)
                body = b'{"error":"busy"}' if failed else b'{"score":0.1,"degraded":true}'
                self.send_response(503 if failed else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        def server_fails(n: int) -> bool:
            return fail_every > 0 and n % fail_every == 0

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/predict"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def body(tmp_path: Path) -> Path:
    path = tmp_path / "request.json"
    path.write_text('{"features": {"amount": 12.5}}')
    return path


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[PredictServer]:
    s = PredictServer(**getattr(request, "param", {}))
    yield s
    s.close()


def bench(url: str, body: Path, *extra: str) -> Result:
    args = ["bench", "--url", url, "--body", str(body), "-d", "0.5", *extra]
    return CliRunner().invoke(main, args)


def test_nothing_listening_is_one_sentence_and_exit_3(body: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/predict"
    out = bench(url, body)
    assert out.exit_code == 3
    assert out.stdout == ""
    assert "Traceback" not in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"Error: nothing is listening at {url} (connection refused)")
    assert "rtml serve" in out.stderr


def test_nothing_listening_with_json_prints_nothing_on_stdout(body: Path) -> None:
    out = bench(f"http://127.0.0.1:{free_port()}/predict", body, "--json")
    assert out.exit_code == 3
    assert out.stdout == ""


def test_a_healthy_run_prints_the_table_and_exits_0(server: PredictServer, body: Path) -> None:
    out = bench(server.url, body, "-c", "2")
    assert out.exit_code == 0, out.output
    lines = out.stdout.splitlines()
    assert [line.split("  ")[0].rstrip() for line in lines] == TABLE_ROWS
    assert lines[0].endswith("  2")
    assert lines[-2].split()[1] == "0"  # errors
    assert out.stderr == ""


def test_json_is_one_document_with_the_documented_keys(server: PredictServer, body: Path) -> None:
    out = bench(server.url, body, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert set(doc) == JSON_KEYS
    assert doc["ok"] is True
    assert doc["url"] == server.url
    assert doc["requests"] == server.count > 0
    assert doc["statuses"] == {"200": server.count}
    assert doc["degraded"] == doc["requests"]  # the stub answers "degraded":true
    assert doc["errors"] == 0
    assert doc["failures"] == {}
    assert 0 < doc["p50_ms"] <= doc["p99_ms"] <= doc["p999_ms"]


def test_help_documents_every_json_key_and_the_exit_codes() -> None:
    text = CliRunner().invoke(main, ["bench", "--help"]).output
    for key in JSON_KEYS:
        assert key in text, key
    for code in ("0  the run measured", "1  every request failed", "3  the server could not"):
        assert code in text


@pytest.mark.parametrize("server", [{"fail_every": 1}], indirect=True)
def test_every_request_failing_exits_1_with_the_result_on_stdout(
    server: PredictServer, body: Path
) -> None:
    out = bench(server.url, body, "--json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    assert doc["requests"] == 0
    assert doc["p99_ms"] is None
    assert doc["statuses"] == {"503": doc["errors"]}
    assert doc["error_rate"] == 1.0
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith(f"Error: every request to {server.url} failed (HTTP 503: ")


@pytest.mark.parametrize("server", [{"fail_every": 10}], indirect=True)
def test_an_error_share_over_the_threshold_exits_1(server: PredictServer, body: Path) -> None:
    out = bench(server.url, body)
    assert out.exit_code == 1
    assert "Traceback" not in out.output
    assert "requests to" in out.stderr
    assert "over --max-error-rate 1.00%" in out.stderr
    assert out.stdout.splitlines()[0].startswith("concurrency")  # the table is still printed
    lenient = bench(server.url, body, "--json", "--max-error-rate", "0.2")
    assert lenient.exit_code == 0, lenient.output
    doc = json.loads(lenient.stdout)
    assert doc["ok"] is True
    assert doc["max_error_rate"] == 0.2
    assert 0.05 < doc["error_rate"] < 0.15


@pytest.mark.parametrize("server", [{"protocol": "HTTP/1.0"}], indirect=True)
def test_a_server_closing_each_connection_is_reconnected_to(
    server: PredictServer, body: Path
) -> None:
    out = bench(server.url, body, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert doc["requests"] == server.count > 1
    assert doc["failures"] == {}


@pytest.mark.parametrize("server", [{"hang_up": True}], indirect=True)
def test_no_answer_at_all_counts_as_failed_requests(server: PredictServer, body: Path) -> None:
    out = bench(server.url, body, "--json")
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert doc["requests"] == 0
    assert doc["statuses"] == {}
    assert doc["failures"] == {"the server closed the connection": doc["errors"]}
    assert doc["errors"] > 0
    assert "the server closed the connection: " in out.stderr


def test_a_body_that_is_not_json_is_one_sentence(tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text("{not json")
    out = bench(f"http://127.0.0.1:{free_port()}/predict", path)
    assert out.exit_code == 2
    assert f"Invalid value for --body: {path} is not a JSON file" in out.stderr
    assert "Traceback" not in out.output


def test_only_plain_http_urls(body: Path) -> None:
    out = bench("https://127.0.0.1:3000/predict", body)
    assert out.exit_code == 2
    assert "is not an http:// URL" in out.stderr
