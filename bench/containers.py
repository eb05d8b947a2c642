#!/usr/bin/env python3
"""Container start to member Active, on Docker and on Podman, beside the same workload as a local
process, with the release build.

The workload is busybox's httpd serving a file on $PORT: as a `local` cartridge (a process under
the node supervisor), and as an image of one static binary (`docker import`, no registry) on each
engine. For each runtime, in an order rotated between rounds, a fresh server deploys an
application of --members members and the time from the deploy call until all are Active (as the
API shows them, polled every 10 ms) is measured; then it is undeployed and the time until no
member is left. Beside it, the engine alone: `docker run -d` of the same image, until its
published port answers (what any tool on that engine pays).

Every process started here runs in its own process group and temporary directory, every container
is labelled and removed, and all is stopped on exit, even on failure.

    cargo build --release -p nubo
    bench/containers.py --docker unix:///var/run/docker.sock --podman unix:///run/podman/podman.sock
"""
import argparse
import base64
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/nubo-target"))
NUBO = os.path.join(TARGET, "release", "nubo")
PASSWORD = "bench"
IMAGE = "nubo-bench/httpd:1"


class Server:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nubo-containers-")
        env = dict(os.environ, NUBO_ADMIN_PASSWORD=PASSWORD, NUBO_LOG=os.environ.get("NUBO_LOG", "warn"))
        cmd = [NUBO, "server", "--data-dir", self.dir, "--api-addr", "127.0.0.1:0", "--insecure-http",
               "--bus-addr", "127.0.0.1:0"]
        self.log = open(os.path.join(self.dir, "server.log"), "a")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True,
                                     start_new_session=True)
        self.url = None
        for line in self.proc.stdout:
            if line.startswith("nubo: API listening on "):
                self.url = line.split()[-1]
                break
        if not self.url:
            raise RuntimeError("the server did not start: see " + self.log.name)
        self.auth = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def docker(host, *args, check=True):
    out = subprocess.run(["docker", "-H", host, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def build_image(host, www):
    with tempfile.TemporaryDirectory(prefix="nubo-image-") as d:
        root = os.path.join(d, "root")
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy("/bin/busybox", os.path.join(root, "bin", "busybox"))
        for link in ("sh", "httpd"):
            os.symlink("busybox", os.path.join(root, "bin", link))
        shutil.copytree(www, os.path.join(root, "www"))
        tar = os.path.join(d, "root.tar")
        subprocess.run(["tar", "-C", root, "-cf", tar, "."], check=True)
        docker(host, "import", "--change", 'CMD ["/bin/sh", "-c", "exec /bin/httpd -f -p $PORT -h /www"]', tar, IMAGE)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def engine_alone(host, n):
    """`docker run -d` of n containers at once until each published port answers: seconds."""
    ports = [free_port() for _ in range(n)]
    names = [f"nubo-bench-alone-{os.getpid()}-{i}" for i in range(n)]
    t0 = time.monotonic()
    try:
        procs = [subprocess.Popen(["docker", "-H", host, "run", "-d", "--name", name, "--label", "io.nubo.bench=1",
                                   "-e", "PORT=8080", "-p", f"127.0.0.1:{port}:8080", IMAGE],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for name, port in zip(names, ports)]
        for p in procs:
            p.wait()
        while not all(answers(p) for p in ports):
            if time.monotonic() - t0 > 60:
                raise RuntimeError("the engine's containers did not answer within 60 s")
            time.sleep(0.005)
        return time.monotonic() - t0
    finally:
        docker(host, "rm", "-f", *names, check=False)


def artifacts(runtime, endpoint, n, www):
    if runtime == "local":
        np = {"id": "np", "provider": "local", "partitions": [{"id": "p1"}]}
        iaas = [{"type": "local", "imageId": f"exec busybox httpd -f -p $PORT -h {www}"}]
    else:
        np = {"id": "np", "provider": "docker",
              "partitions": [{"id": "p1", "property": [{"name": "endpoint", "value": endpoint}]}]}
        iaas = [{"type": "docker", "imageId": IMAGE}]
    return [
        ("networkPartitions", np),
        ("deploymentPolicies", {"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin",
                                                                    "partitions": [{"id": "p1"}]}]}),
        ("applicationPolicies", {"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        ("autoscalingPolicies", {"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 95}}}),
        ("cartridges", {"type": "httpd", "category": "framework", "host": "bench.test",
                        "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
                        "iaasProvider": iaas}),
        ("applications", {"applicationId": "app", "components": {"cartridges": [
            {"type": "httpd", "cartridgeMin": n, "cartridgeMax": n,
             "subscribableInfo": {"alias": "web", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}),
    ]


def active(server):
    status, page = server.call("GET", "/api/applications/app/members")
    if status != 200:
        return 0
    return sum(1 for m in page["members"] if m.get("status") == "Active")


def one_run(runtime, endpoint, n, www):
    """Deploy → n Active, and undeploy → none left: seconds each."""
    server = Server()
    try:
        for kind, body in artifacts(runtime, endpoint, n, www):
            status, answer = server.call("POST", f"/api/{kind}", body)
            if status not in (200, 201):
                raise RuntimeError(f"{kind}: {status} {answer}")
        t0 = time.monotonic()
        status, answer = server.call("POST", "/api/applications/app/deploy/ap", {})
        if status != 202:
            raise RuntimeError(f"deploy: {status} {answer}")
        while active(server) < n:
            if time.monotonic() - t0 > 120:
                raise RuntimeError(f"{runtime}: not Active within 120 s: see {server.log.name}")
            time.sleep(0.01)
        up = time.monotonic() - t0
        t1 = time.monotonic()
        server.call("POST", "/api/applications/app/undeploy", {})
        while server.call("GET", "/api/applications/app/runtime")[0] != 404:
            if time.monotonic() - t1 > 120:
                raise RuntimeError(f"{runtime}: not undeployed within 120 s")
            time.sleep(0.01)
        down = time.monotonic() - t1
        return up, down
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docker", default=os.environ.get("NUBO_TEST_DOCKER_HOST"), help="Docker Engine endpoint")
    ap.add_argument("--podman", default=os.environ.get("NUBO_TEST_PODMAN_HOST"), help="Podman's Docker API endpoint")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not os.path.exists(NUBO):
        sys.exit(f"{NUBO} is missing: cargo build --release -p nubo")
    engines = [("local", None)]
    for name, host in (("docker", args.docker), ("podman", args.podman)):
        if host:
            engines.append((name, host))
        else:
            print(f"(no {name} endpoint given: --{name})")
    www = tempfile.mkdtemp(prefix="nubo-www-")
    with open(os.path.join(www, "index.html"), "w") as f:
        f.write("hello\n")
    results = {name: [] for name, _ in engines}
    alone = {name: [] for name, host in engines if host}
    try:
        for _, host in engines:
            if host:
                build_image(host, www)
        for r in range(args.rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for name, host in order:
                up, down = one_run(name, host, args.members, www)
                results[name].append((up, down))
                line = f"round {r + 1} {name:7} deploy → {args.members} Active {up * 1000:7.0f} ms   undeploy {down * 1000:7.0f} ms"
                if host:
                    a = engine_alone(host, args.members)
                    alone[name].append(a)
                    line += f"   engine alone ({args.members} × docker run → port answers) {a * 1000:6.0f} ms"
                print(line, flush=True)
        print()
        print(f"| runtime | deploy → {args.members} Active (median) | undeploy (median) | the engine alone (median) |")
        print("| --- | ---: | ---: | ---: |")
        for name, _ in engines:
            ups = statistics.median(u for u, _ in results[name]) * 1000
            downs = statistics.median(d for _, d in results[name]) * 1000
            eng = f"{statistics.median(alone[name]) * 1000:.0f} ms" if alone.get(name) else "—"
            print(f"| {name} | {ups:.0f} ms | {downs:.0f} ms | {eng} |")
    finally:
        shutil.rmtree(www, ignore_errors=True)
        for _, host in engines:
            if host:
                ids = docker(host, "ps", "-aq", "--filter", "label=io.nubo.bench=1", check=False).split()
                ids += docker(host, "ps", "-aq", "--filter", "label=io.nubo.application=app", check=False).split()
                if ids:
                    docker(host, "rm", "-f", *ids, check=False)


if __name__ == "__main__":
    main()
