#!/usr/bin/env python3
"""Platform timings, measured on real processes on loopback with the release build:

- deploy → Active for 10 members (and, beside it, the workload's own start time);
- a member becoming Active (its agent reports it) → the first request the load balancer routes to it;
- kill -9 of a member's workload, and of its agent → its replacement Active;
- resident memory of the idle server and of one agent.

Every process started here runs in a temporary data directory and is stopped on exit.

    bench/platform.py            (after: cargo build --release -p nubo)
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/nubo-target"))
NUBO = os.path.join(TARGET, "release", "nubo")
WHOAMI = os.path.join(ROOT, "crates", "nubo", "tests", "it", "fixtures", "whoami.py")
PASSWORD = "bench"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nubo-bench-")
        env = dict(os.environ, NUBO_ADMIN_PASSWORD=PASSWORD, NUBO_LOG="warn")
        self.proc = subprocess.Popen(
            [NUBO, "server", "--data-dir", self.dir, "--api-addr", "127.0.0.1:0", "--bus-addr", "127.0.0.1:0", "--insecure-http"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True, start_new_session=True)
        for line in self.proc.stdout:
            if line.startswith("nubo: API listening on "):
                self.url = line.split()[-1]
                break

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method, data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", "Basic " + __import__("base64").b64encode(f"admin:{PASSWORD}".encode()).decode())
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def members(self, app):
        status, view = self.call("GET", f"/api/applications/{app}/runtime")
        if status != 200:
            return []
        out = []
        for inst in view["applicationInstances"]:
            for ci in inst["clusterInstances"]:
                out += ci["member"]
        return out

    def stop(self):
        # The server first (members outlive it by design), then every member of its data directory.
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        subprocess.run([NUBO, "down", "--data-dir", self.dir], capture_output=True)
        subprocess.run(["rm", "-rf", self.dir])


def setup(server, members, proxy, app="bench"):
    arts = [
        ("autoscalingPolicies", {"id": "asp", "loadThresholds": {"requestsInFlight": {"threshold": 100}}}),
        ("networkPartitions", {"id": "np", "provider": "local", "partitions": [{"id": "p1"}]}),
        ("deploymentPolicies", {"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
        ("applicationPolicies", {"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ("cartridges", {"type": "whoami", "category": "framework", "host": "localhost",
                        "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
                        "iaasProvider": [{"type": "local", "imageId": f"exec python3 {WHOAMI}"}]}),
        ("applications", {"applicationId": app, "components": {"cartridges": [
            {"type": "whoami", "cartridgeMin": members, "cartridgeMax": members + 2,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}),
    ]
    for coll, body in arts:
        status, answer = server.call("POST", f"/api/{coll}", body)
        assert status == 201, (coll, answer)


def wait(cond, timeout=60, step=0.002):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError("timed out")


def active_time(server, member_id):
    """When the member's agent reported it Active (from its log), as a UNIX time."""
    log = open(os.path.join(server.dir, "members", member_id, "agent.log")).read()
    m = re.search(r"^(\S+Z)\s+INFO.*member active", re.sub(r"\x1b\[[0-9;]*m", "", log), re.M)
    if not m:
        return None
    return datetime.fromisoformat(m.group(1).replace("Z", "+00:00")).timestamp()


def agent_pid(server, member_id):
    return json.load(open(os.path.join(server.dir, "members", member_id, "supervisor.json")))["pid"]


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def via_lb(proxy):
    s = socket.create_connection(("127.0.0.1", proxy), timeout=2)
    s.sendall(b"GET / HTTP/1.0\r\nHost: bench.web.localhost\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 200") and not data.startswith(b"HTTP/1.0 200"):
        return None
    return data.split(b"\r\n\r\n", 1)[1].split()[0].decode()


def workload_start_time(n=10):
    """How long n copies of the workload alone take until their ports answer (started together)."""
    ports = [free_port() for _ in range(n)]
    t0 = time.time()
    procs = [subprocess.Popen(["python3", WHOAMI], env=dict(os.environ, PORT=str(p)), start_new_session=True) for p in ports]
    for p in ports:
        wait(lambda: socket.socket().connect_ex(("127.0.0.1", p)) == 0)
    t = time.time() - t0
    for pr in procs:
        pr.kill()
        pr.wait()
    return t


def main():
    results = []
    workload = workload_start_time()
    results.append(("workload alone: 10 copies of the Python workload until their ports answer", f"{workload*1000:.0f} ms", ""))

    server = Server()
    try:
        time.sleep(0.5)
        results.append(("resident memory of the idle server", f"{rss_kb(server.proc.pid)/1024:.1f} MB", "target ≤ 64 MB"))
        proxy = free_port()
        setup(server, 10, proxy)
        t0 = time.time()
        status, _ = server.call("POST", "/api/applications/bench/deploy/ap")
        assert status == 202
        wait(lambda: sum(m["status"] == "Active" for m in server.members("bench")) == 10)
        deploy = time.time() - t0
        results.append(("deploy → 10 members Active", f"{deploy*1000:.0f} ms", f"{(deploy-workload)*1000:.0f} ms beyond the workload's own start; target ≤ 1 s + start time"))
        members = server.members("bench")
        agent = agent_pid(server, members[0]["memberId"])
        results.append(("resident memory of one agent", f"{rss_kb(agent)/1024:.1f} MB", "target ≤ 10 MB"))

        # kill -9 of a workload, then of an agent: replacement Active.
        for what in ("workload", "agent"):
            current = server.members("bench")
            before = {m["memberId"] for m in current}
            # A healthy member (the previous victim may still be on its way out).
            victim = sorted(m["memberId"] for m in current if m["status"] == "Active" and not m.get("failure"))[0]
            apid = agent_pid(server, victim)
            pids = [apid] if what == "agent" else [int(p) for p in subprocess.run(["pgrep", "-s", str(apid)], capture_output=True, text=True).stdout.split() if int(p) != apid]
            t0 = time.time()
            for p in pids:
                os.kill(p, signal.SIGKILL)
            try:
                new = wait(lambda: [m for m in server.members("bench") if m["memberId"] not in before and m["status"] == "Active"], timeout=30)
            except TimeoutError:
                now = [(m["memberId"], m["status"], m.get("failure")) for m in server.members("bench")]
                raise TimeoutError(f"no replacement for {victim} after kill -9 of its {what} (pids {pids}); members: {now}")
            t_active = active_time(server, new[0]["memberId"])
            results.append((f"kill -9 of a member's {what} → replacement Active", f"{(t_active - t0)*1000:.0f} ms", "target ≤ 1 s"))
            # Active → first routed request, for that replacement.
            first = wait(lambda: via_lb(proxy) == new[0]["memberId"] and time.time(), timeout=10, step=0.0005)
            results.append((f"replacement Active → its first request through the load balancer ({what})", f"{(first - t_active)*1000:.0f} ms", "target ≤ 100 ms"))
    finally:
        server.stop()

    print("| measure | value | note |")
    print("| --- | ---: | --- |")
    for name, value, note in results:
        print(f"| {name} | {value} | {note} |")


if __name__ == "__main__":
    sys.exit(main())
