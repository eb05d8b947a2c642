#!/usr/bin/env python3
"""The control plane at scale, on the mock IaaS, with the release build.

For each size N: one application of 10 clusters (min = max = N/10 members each) on the `mock`
provider, deployed on a fresh server. Measured:

- the time from the deploy call until N members are Active (and placements per second);
- the server process's CPU time during the deploy, and per second at steady state over a hold
  period (health statistics from every member every --stats-interval seconds);
- its resident memory; the bytes it wrote to disk per second at steady state (/proc/PID/io,
  the store's writes for SQLite);
- members ended without a real fault (none is injected: every lost member is a false fault);
- the latency of the runtime view of one cluster's application (`GET .../runtime`).

The server runs all in one (embedded broker, SQLite) unless --store or --bus say otherwise.
Every process started here runs in its own process group and temporary directory, and is stopped
on exit, even on failure.

    cargo build --release -p nubo
    bench/scale.py                                  # 1,000 and 10,000 members, statistics every 1 s
    bench/scale.py --members 100000 --stats-interval 5 --fault-timeout 15
    bench/scale.py --members 1000 --store postgres://USER@HOST:PORT/DB --bus nats://HOST:PORT
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
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
TICKS = os.sysconf("SC_CLK_TCK")
CLUSTERS = 10


class Server:
    def __init__(self, args, extra=(), data_dir=None):
        self.dir = data_dir or tempfile.mkdtemp(prefix="nubo-scale-")
        env = dict(os.environ, NUBO_ADMIN_PASSWORD=PASSWORD, NUBO_LOG=os.environ.get("NUBO_LOG", "warn"))
        cmd = [NUBO, "server", "--data-dir", self.dir, "--api-addr", "127.0.0.1:0", "--insecure-http",
               "--mock-iaas", "-", "--mock-stats-interval", str(args.stats_interval),
               "--fault-timeout", str(args.fault_timeout)]
        if args.bus:
            cmd += ["--bus", args.bus]
        else:
            cmd += ["--bus-addr", "127.0.0.1:0"]
        if args.store:
            cmd += ["--store", args.store]
        cmd += list(extra)
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

    def call(self, method, path, body=None, timeout=120):
        req = urllib.request.Request(self.url + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None)
        req.add_header("Authorization", self.auth)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def metrics(self):
        status, body = self.call("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("#") or " " not in line:
                continue
            k, v = line.rsplit(" ", 1)
            try:
                out[k] = float(v)
            except ValueError:
                pass
        return out

    def cpu(self):
        """CPU seconds (user + system) of the server process."""
        f = open(f"/proc/{self.proc.pid}/stat").read()
        rest = f[f.rfind(")") + 2:].split()
        return (int(rest[11]) + int(rest[12])) / TICKS

    def rss_mib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def written(self):
        for line in open(f"/proc/{self.proc.pid}/io"):
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
        return 0

    def kill9(self):
        """kill -9 of the server (its data directory stays)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def stop(self):
        self.kill9()
        shutil.rmtree(self.dir, ignore_errors=True)


def artifacts(n):
    per = max(1, n // CLUSTERS)
    arts = [
        ("networkPartitions", {"id": "np", "provider": "mock", "partitions": [{"id": "p1"}, {"id": "p2"}]}),
        ("deploymentPolicies", {"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin",
                                                                    "partitions": [{"id": "p1"}, {"id": "p2"}]}]}),
        ("applicationPolicies", {"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
        # Thresholds far above the mock's statistics: nothing scales, the size stays N.
        ("autoscalingPolicies", {"id": "asp", "loadThresholds": {"memoryConsumption": {"threshold": 95},
                                                                  "loadAverage": {"threshold": 95}}}),
        ("cartridges", {"type": "svc", "category": "framework", "host": "scale.test",
                        "portMapping": [{"name": "http", "protocol": "http", "port": 8080}],
                        "iaasProvider": [{"type": "mock", "imageId": "svc"}]}),
    ]
    carts = [{"type": "svc", "cartridgeMin": per, "cartridgeMax": per,
              "subscribableInfo": {"alias": f"c{i}", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}
             for i in range(CLUSTERS)]
    arts.append(("applications", {"applicationId": "big", "components": {"cartridges": carts}}))
    # A small application beside it for the runtime view: one cluster of n/10 members.
    arts.append(("applications", {"applicationId": "view", "components": {"cartridges": [
        {"type": "svc", "cartridgeMin": per, "cartridgeMax": per,
         "subscribableInfo": {"alias": "v", "autoscalingPolicy": "asp", "deploymentPolicy": "dp"}}]}}))
    return arts, per


def active(m):
    return m.get('nubo_members{status="Active"}', 0.0)


def started(m):
    return sum(v for k, v in m.items() if k.startswith("nubo_member_starts_total"))


def lost(m):
    return m.get('nubo_members_ended_total{how="lost"}', 0.0) + m.get('nubo_members_ended_total{how="failed_to_start"}', 0.0)


def fresh_database(admin_url, n):
    """A new database on the PostgreSQL server of `admin_url` (psql), its URL and a way to drop it."""
    name = f"nubo_scale_{n}_{os.getpid()}"
    subprocess.run(["psql", admin_url, "-qc", f"CREATE DATABASE {name}"], check=True)
    base = admin_url.rsplit("/", 1)[0]
    return f"{base}/{name}", lambda: subprocess.run(
        ["psql", admin_url, "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


def run(args, n):
    drop = None
    if args.postgres:
        args.store, drop = fresh_database(args.postgres, n)
    try:
        return run_on(args, n)
    finally:
        if drop:
            drop()


def kill_and_restart(args, n):
    """kill -9 of the server once half the members are Active, a restart on its data directory:
    the time until every member is Active again, and whether exactly the members wanted run."""
    server = Server(args)
    try:
        arts, per = artifacts(n)
        for coll, body in arts[:-1]:
            status, answer = server.call("POST", f"/api/{coll}", body)
            assert status == 201, (coll, answer)
        want = n
        status, answer = server.call("POST", "/api/applications/big/deploy/ap")
        assert status == 202, answer
        while active(server.metrics()) < want / 2:
            time.sleep(0.05)
        killed_at = int(active(server.metrics()))
        server.kill9()
        t0 = time.time()
        server = Server(args, data_dir=server.dir)
        deadline = t0 + args.timeout
        m = {}
        while time.time() < deadline:
            m = server.metrics()
            if active(m) >= want:
                break
            time.sleep(0.25)
        took = time.time() - t0
        time.sleep(args.settle)
        m = server.metrics()
        status, body = server.call("GET", "/api/mock-iaas/instances")
        instances = len(json.loads(body))
        members = int(sum(v for k, v in m.items() if k.startswith("nubo_members{")))
        return {"members": want, "killed_at_active": killed_at, "seconds_to_active_after_restart": took,
                "active": int(active(m)), "members_known": members, "instances_running": instances}
    finally:
        server.stop()


def run_on(args, n):
    server = Server(args)
    try:
        arts, per = artifacts(n)
        for coll, body in arts:
            status, answer = server.call("POST", f"/api/{coll}", body)
            assert status == 201, (coll, answer)
        want = n + per
        cpu0, t0 = server.cpu(), time.time()
        for app in ("view", "big"):
            status, answer = server.call("POST", f"/api/applications/{app}/deploy/ap")
            assert status == 202, (app, answer)
        deadline = t0 + args.timeout
        m = {}
        said = 0.0
        placed = None
        while time.time() < deadline:
            m = server.metrics()
            if placed is None and started(m) >= want:
                placed = time.time() - t0
            if active(m) >= want:
                break
            if placed is None:
                time.sleep(0.05)
                continue
            if time.time() - said >= 2:
                said = time.time()
                print(f"  {time.time() - t0:5.1f} s: {int(active(m))}/{want} Active, "
                      f"{int(lost(m))} lost, CPU {server.cpu() - cpu0:.1f} s", file=sys.stderr, flush=True)
            time.sleep(0.25)
        took = time.time() - t0
        reached = active(m)
        deploy_cpu = server.cpu() - cpu0
        # Steady state, once the deploy's tail (the last snapshot of the controller's journal, the
        # mock IaaS rewriting its state file) is over.
        time.sleep(args.settle)
        m0, cpu1, w1, t1 = server.metrics(), server.cpu(), server.written(), time.time()
        time.sleep(args.hold)
        m1, cpu2, w2, t2 = server.metrics(), server.cpu(), server.written(), time.time()
        steady = (cpu2 - cpu1) / (t2 - t1)
        view_ms = []
        for _ in range(5):
            a = time.time()
            status, body = server.call("GET", "/api/applications/view/runtime")
            assert status == 200, body[:200]
            view_ms.append((time.time() - a) * 1000)
        view_ms.sort()
        return {
            "members": want,
            "active": int(reached),
            "seconds_to_active": took if reached >= want else None,
            "seconds_to_placed": placed,
            "placements_per_s": want / placed if placed else 0,
            "deploy_cpu_s": deploy_cpu,
            "steady_core_pct": steady * 100,
            "core_pct_per_1000": steady * 100 / (want / 1000),
            "rss_mib": server.rss_mib(),
            "written_kib_per_s": (w2 - w1) / 1024 / (t2 - t1),
            "lost_members": int(lost(m1)),
            "lost_during_hold": int(lost(m1) - lost(m0)),
            "faults": int(sum(v for k, v in m1.items() if k.startswith("nubo_member_faults_total"))),
            "view_members": per,
            "view_ms_median": view_ms[len(view_ms) // 2],
        }
    finally:
        server.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", default="1000,10000", help="sizes, comma-separated")
    ap.add_argument("--stats-interval", type=float, default=1.0)
    ap.add_argument("--fault-timeout", type=float, default=5.0)
    ap.add_argument("--hold", type=float, default=20.0, help="seconds of steady state measured")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds between all Active and the steady-state measure")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds allowed to reach N Active")
    ap.add_argument("--store", help="store URL (default: SQLite in the data directory)")
    ap.add_argument("--postgres", metavar="ADMIN_URL",
                    help="a PostgreSQL server (a user that may create databases): each size runs on a fresh database of its own, dropped afterwards")
    ap.add_argument("--bus", help="bus URL (default: the embedded broker)")
    ap.add_argument("--kill", action="store_true",
                    help="instead: kill -9 the server when half the members are Active, restart it, and check that exactly the members wanted run")
    args = ap.parse_args()
    if not os.path.exists(NUBO):
        raise SystemExit(f"{NUBO} is missing: cargo build --release -p nubo")
    if args.kill:
        for n in [int(x) for x in args.members.split(",")]:
            print(json.dumps(kill_and_restart(args, n)), flush=True)
        return
    rows = []
    for n in [int(x) for x in args.members.split(",")]:
        r = run(args, n)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print()
    store = "postgres" if args.postgres else (args.store or "sqlite")
    print(f"store: {store}, bus: {args.bus or 'embedded'}, statistics every "
          f"{args.stats_interval:g} s, fault timeout {args.fault_timeout:g} s, hold {args.hold:g} s")
    print("| members | all placed (placements/s) | time to Active | deploy CPU | steady CPU (% core) | per 1,000 | RSS MiB | "
          "disk writes KiB/s | members lost (no fault injected) | runtime view (members) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        t = f"{r['seconds_to_active']:.1f} s" if r["seconds_to_active"] is not None else f"not reached ({r['active']})"
        p = f"{r['seconds_to_placed']:.1f} s ({r['placements_per_s']:.0f})" if r["seconds_to_placed"] else "-"
        print(f"| {r['members']:,} | {p} | {t} | {r['deploy_cpu_s']:.1f} s | "
              f"{r['steady_core_pct']:.1f} | {r['core_pct_per_1000']:.1f} | {r['rss_mib']:.0f} | "
              f"{r['written_kib_per_s']:.0f} | {r['lost_members']} | {r['view_ms_median']:.0f} ms ({r['view_members']}) |")


if __name__ == "__main__":
    main()
