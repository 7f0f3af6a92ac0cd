"""The LocalCluster a run starts: who can reach it, and scripts without a ``__main__`` guard."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

import dedupdask
from dedupdask.cli import _options, build_parser
from dedupdask.config import RunConfig
from dedupdask.localcluster import _guarded, _module_frame, local_cluster
from dedupdask.scheduler import resolve

REPO = str(Path(dedupdask.__file__).resolve().parents[1])


def _listening(pid: int) -> set[tuple[str, int]]:
    conns = psutil.Process(pid).net_connections(kind="inet")
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


def _cluster_sockets(client, before: set[tuple[str, int]]) -> dict[str, set[tuple[str, int]]]:
    """Listening sockets of a LocalCluster: opened in this process (scheduler, its HTTP server,
    the nannies) since ``before``, and those of each worker process."""
    out = {"this process": _listening(os.getpid()) - before}
    for addr, pid in client.run(os.getpid).items():
        assert pid != os.getpid()
        out[f"worker {addr} (pid {pid})"] = _listening(pid)
    return out


def _http(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_local_run_cluster_listens_on_loopback_only():
    """The cluster ``ddk.run`` starts without a client: scheduler, dashboard, nannies and
    workers all listen on 127.0.0.1 (Dask's ``dashboard_address=":0"`` meant every interface)."""
    before = _listening(os.getpid())
    with resolve(None) as run:
        client = run.processes(2)
        sockets = _cluster_sockets(client, before)
        dashboard = client.cluster.scheduler.http_server.port
        scheduler = int(client.scheduler.address.rsplit(":", 1)[1])
        assert _http(dashboard, "status") == 200  # the dashboard is there, for this machine
    ours = sockets.pop("this process")
    assert {("127.0.0.1", scheduler), ("127.0.0.1", dashboard)} <= ours
    assert len(ours) >= 2 + 2  # scheduler, its HTTP server, one nanny per worker
    assert len(sockets) == 2 and all(sockets.values())
    assert {ip for socks in [ours, *sockets.values()] for ip, _ in socks} == {"127.0.0.1"}, sockets | {"here": ours}


def test_dashboard_address_option():
    """``dashboard_address`` moves the dashboard only (here to every interface, as a user may
    ask); None or "" leaves no dashboard: the HTTP server Dask always starts answers /health
    and nothing else, on 127.0.0.1 and a free port (not 8787, which another cluster may hold)."""
    address = RunConfig.from_kwargs(dashboard_address="0.0.0.0:0").dashboard_address
    before = _listening(os.getpid())
    with resolve(None, dashboard_address=address) as run:
        client = run.processes(1)
        dashboard = client.cluster.scheduler.http_server.port
        sockets = _cluster_sockets(client, before)
    ours = sockets.pop("this process")
    assert ("0.0.0.0", dashboard) in ours
    assert {ip for ip, port in ours if port != dashboard} == {"127.0.0.1"}
    assert {ip for socks in sockets.values() for ip, _ in socks} == {"127.0.0.1"}

    assert RunConfig.from_kwargs(dashboard_address=None).dashboard_address is None
    assert RunConfig.from_kwargs(dashboard_address="").dashboard_address is None
    before = _listening(os.getpid())
    with local_cluster(1, dashboard_address=None) as client:
        port = client.cluster.scheduler.http_server.port
        assert port != 8787
        assert [_http(port, p) for p in ("health", "status", "info/main/workers.html")] == [200, 404, 404]
        sockets = _cluster_sockets(client, before)
    assert {ip for socks in sockets.values() for ip, _ in socks} == {"127.0.0.1"}


def test_dashboard_address_flag_and_validation():
    parse = build_parser().parse_args
    assert RunConfig().dashboard_address == "127.0.0.1:0"
    for flag, expected in (([], "127.0.0.1:0"), (["--dashboard-address", ""], None),
                           (["--dashboard-address", "0.0.0.0:8787"], "0.0.0.0:8787")):
        ns = parse(["run", "in/", "work/", *flag])
        assert RunConfig.from_kwargs(**_options(ns)).dashboard_address == expected
    for bad in ("8787", "localhost", "127.0.0.1:99999", "127.0.0.1:x"):
        with pytest.raises(ValueError, match="dashboard_address must be HOST:PORT"):
            RunConfig.from_kwargs(dashboard_address=bad)
    from dedupdask.cli import main

    assert main(["run", "in/", "work/", "--dashboard-address", "8787"]) == 2


def _guarded_at_probe(tmp_path: Path, source: str) -> bool | None:
    """Run ``source`` as a ``__main__`` script file; whether its call of probe() is guarded."""
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(source))
    seen = []

    def probe():
        frame = _module_frame("__main__")
        assert frame is not None and frame.f_code.co_filename == str(path)
        seen.append(_guarded(frame))

    exec(compile(path.read_text(), str(path), "exec"), {"__name__": "__main__", "probe": probe})
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize(
    "source, guarded",
    [
        ("import os\nprobe()\n", False),
        ("def main():\n    probe()\n\n\nmain()\n", False),
        ("if __name__ == '__main__':\n    probe()\n", True),
        ("def main():\n    probe()\n\n\nif __name__ == \"__main__\":\n    x = 1\n    main(\n    )\n", True),
        ("if True:\n    probe()\n", False),
    ],
)
def test_main_guard_detection(tmp_path, source, guarded):
    assert _guarded_at_probe(tmp_path, source) is guarded


UNGUARDED = textwrap.dedent("""
    import dedupdask as ddk

    print("top level runs")
    ddk.extract({shards!r}, {work!r}, model_path="dct", progress=False)
    print("never here")
""")


def _run_script(path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(path)], env=env, cwd=path.parent, capture_output=True,
                          text=True, timeout=300)


def test_script_without_main_guard_gets_one_clear_line(tmp_path, sample_shards):
    """Dask's spawned workers re-import the script: instead of pages of "Nanny failed to start",
    one error line naming the script and line, before any worker process starts."""
    script = tmp_path / "job.py"
    script.write_text(UNGUARDED.format(shards=sample_shards.root, work=str(tmp_path / "work")))
    out = _run_script(script)
    assert out.returncode == 1
    assert out.stdout == "top level runs\n"  # no worker process re-ran the script
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"RuntimeError: {script} (line 5) calls dedupdask at top level")
    assert "'if __name__ == \"__main__\":'" in last and 'client="threads"' in last
    assert "Nanny" not in out.stderr and out.stderr.count("calls dedupdask at top level") == 1
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())


@pytest.mark.slow
def test_unreadable_script_without_main_guard_still_says_what_to_do(tmp_path, sample_shards):
    """When the script's source cannot be read (only its .pyc), the workers are started; each
    one exits with the one line instead of starting a cluster of its own, and the error the
    script gets says what to do."""
    import py_compile

    src = tmp_path / "job.py"
    src.write_text(UNGUARDED.format(shards=sample_shards.root, work=str(tmp_path / "work")))
    pyc = tmp_path / "job.pyc"
    py_compile.compile(str(src), cfile=str(pyc))
    src.unlink()
    out = _run_script(pyc)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: the local Dask cluster did not start; if ")
    assert "'if __name__ == \"__main__\":'" in last
    workers = [ln for ln in out.stderr.splitlines() if ln.startswith("dedupdask: error: ")]
    assert workers and all("calls dedupdask at top level" in ln for ln in workers)
    assert "bootstrapping phase" not in out.stderr
