"""`cluster/local.sh ui` stops on SIGTERM even while a browser stalls mid-download (uvicorn's graceful shutdown
used to wait for that response forever, so the UI needed SIGKILL)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ui_stops_on_sigterm_with_a_stalled_download(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    client = mlflow.MlflowClient(f"sqlite:///{runs / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * 2**20))  # far more than the socket buffers: the response cannot finish
    client.log_artifact(run.info.run_id, str(big))
    port = _free_port()
    env = {**os.environ, "RUN_DIR": str(runs), "SPKLIP_UI_PORT": str(port), "VENV": str(Path(sys.executable).parents[1])}
    ui = subprocess.Popen(["bash", "cluster/local.sh", "ui"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, start_new_session=True)
    stalled = None
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "the UI did not come up"
                time.sleep(0.5)
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(f"GET /get-artifact?path=big.bin&run_uuid={run.info.run_id} HTTP/1.1\r\n"
                        f"Host: 127.0.0.1:{port}\r\n\r\n".encode())
        assert stalled.recv(64).startswith(b"HTTP/1.1 200")  # the download started and is never read
        time.sleep(1)
        t0 = time.monotonic()
        ui.send_signal(signal.SIGTERM)  # bash exec'd into `mlflow ui`, which forwards it to uvicorn
        ui.wait(timeout=20)
        assert time.monotonic() - t0 < 15
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the server (uvicorn) is gone too
    finally:
        if stalled is not None:
            stalled.close()
        try:  # the whole group: the mlflow CLI and its uvicorn child, whatever the test got to
            os.killpg(ui.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        ui.wait()
