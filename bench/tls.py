#!/usr/bin/env python3
"""HTTPS at the load balancer: nubo's side by side with HAProxy, with the same certificates.

For an RSA-2048 and an ECDSA P-256 certificate, each proxy terminates TLS in front of the same
backend (an nginx answering a 23-byte body) and is measured with h2load:

- new connections per second: every connection is new (a full handshake, no session
  resumption: h2load never resumes, HAProxy's session cache and tickets are off, nubo issues no
  tickets), and carries one request (`h2load --h1 -n N -c N`, started in waves of --wave);
- keep-alive throughput over HTTP/1.1: --connections connections for --duration seconds;
- HTTP/2 throughput: 16 connections, 8 streams each (ALPN h2 on both).

Each proxy runs one thread pinned to CPU 0 (`nbthread 1`; nubo with TOKIO_WORKER_THREADS=1);
h2load and the backend share CPU 1. The order of the two proxies alternates between rounds, and
every round is reported; the summary is the median of the per-round ratios nubo/HAProxy. The
proxy's CPU time over each run (`/proc/PID/stat`) gives its CPU cost per connection or request:
on this 2-core machine the load generator's core can be the limit, and the cost shows which
proxy does less work whatever the rate.

Every process started here is stopped on exit, and its temporary directory removed.

    bench/tls.py [--rounds 5] [--duration 4] [--connections 64] [--handshakes 3000]
"""
import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/nubo-target"))
NUBO = os.path.join(TARGET, "release", "nubo")
TICK = os.sysconf("SC_CLK_TCK")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port):
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    raise RuntimeError(f"port {port} never opened")


def start(cmd, cpu, env=None):
    p = subprocess.Popen(["taskset", "-c", str(cpu)] + cmd, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    PROCS.append(p)
    return p


def stop_all():
    for p in PROCS:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in PROCS:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def ensure_tools():
    missing = [t for t in ("haproxy", "h2load", "nginx", "openssl", "taskset") if not shutil.which(t)]
    if missing:
        print(f"installing {' '.join(missing)} ...", file=sys.stderr)
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "haproxy", "nghttp2-client", "nginx",
                        "openssl", "util-linux"], check=True, stdout=subprocess.DEVNULL)


def make_cert(work, kind):
    key, crt = os.path.join(work, f"{kind}.key"), os.path.join(work, f"{kind}.crt")
    new_key = ["-newkey", "rsa:2048"] if kind == "rsa" else \
        ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", "-nodes", "-days", "30", *new_key, "-keyout", key,
                    "-out", crt, "-subj", "/CN=bench.example",
                    "-addext", "subjectAltName=DNS:bench.example,IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # PKCS#8 for both (rustls reads either; HAProxy wants the key beside the chain).
    pk8 = os.path.join(work, f"{kind}.pk8")
    subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", key, "-out", pk8], check=True)
    both = os.path.join(work, f"{kind}.pem")
    with open(both, "w") as out:
        out.write(open(crt).read() + open(pk8).read())
    return crt, pk8, both


def h2load(args, seconds_limit=120):
    out = subprocess.run(["taskset", "-c", "1", "h2load", "-t1", *args], capture_output=True,
                         text=True, timeout=seconds_limit).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed",
                  out)
    if not m:
        raise RuntimeError("h2load said:\n" + out)
    return out, int(m.group(4)), int(m.group(5))


def handshakes(port, total, wave):
    """New connections per second (each a full handshake and one request)."""
    done = failed = 0
    t0 = time.monotonic()
    while done + failed < total:
        n = min(wave, total - done - failed)
        _, ok, bad = h2load(["--h1", "-n", str(n), "-c", str(n), f"https://127.0.0.1:{port}/"])
        done += ok
        failed += bad
    return done / (time.monotonic() - t0), done, failed


def throughput(port, h2, connections, duration):
    args = ["-c", "16", "-m", "8"] if h2 else ["--h1", "-c", str(connections)]
    out, ok, bad = h2load([*args, "-D", str(duration), "--warm-up-time", "1",
                           f"https://127.0.0.1:{port}/"])
    proto = re.search(r"Application protocol: (\S+)", out)
    want = "h2" if h2 else "http/1.1"
    if not proto or proto.group(1) != want:
        raise RuntimeError(f"expected {want}, h2load said:\n" + out)
    return ok / duration, ok, bad


def measure(kind, pid, port, args):
    before = cpu_ticks(pid)
    if kind == "handshakes":
        rate, ok, bad = handshakes(port, args.handshakes, args.wave)
    else:
        rate, ok, bad = throughput(port, kind == "h2", args.connections, args.duration)
    cpu = (cpu_ticks(pid) - before) / TICK
    return rate, cpu * 1e6 / max(ok, 1), bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=4)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--handshakes", type=int, default=3000, help="new connections per measure")
    ap.add_argument("--wave", type=int, default=250, help="new connections opened at once")
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "-p", "nubo"], cwd=ROOT, check=True,
                   env=dict(os.environ, CARGO_TARGET_DIR=TARGET))
    work = tempfile.mkdtemp(prefix="nubo-bench-tls.")
    try:
        run(work, args)
    finally:
        stop_all()
        shutil.rmtree(work, ignore_errors=True)


def run(work, args):
    backend = free_port()
    os.makedirs(os.path.join(work, "backend"))
    with open(os.path.join(work, "backend", "nginx.conf"), "w") as f:
        f.write(f"""daemon off; worker_processes 1; error_log {work}/backend/error.log warn;
pid {work}/backend/nginx.pid; events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/backend/b; proxy_temp_path {work}/backend/p;
  fastcgi_temp_path {work}/backend/f; uwsgi_temp_path {work}/backend/u; scgi_temp_path {work}/backend/s;
  server {{ listen 127.0.0.1:{backend} backlog=4096; keepalive_requests 1000000;
    location / {{ return 200 'hello from the backend\\n'; }} }} }}
""")
    start(["nginx", "-c", f"{work}/backend/nginx.conf", "-p", f"{work}/backend/"], 1)
    proxies = {}  # (proxy, key) -> (pid, port)
    for key in ("rsa", "ecdsa"):
        crt, pk8, both = make_cert(work, key)
        port = free_port()
        cfg = os.path.join(work, f"haproxy-{key}.cfg")
        with open(cfg, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 4096
  tune.ssl.cachesize 0
  ssl-default-bind-options no-tls-tickets
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend fe
  bind 127.0.0.1:{port} ssl crt {both} alpn h2,http/1.1 backlog 4096
  default_backend be
backend be
  server s1 127.0.0.1:{backend}
""")
        p = start(["haproxy", "-f", cfg, "-db"], 0)
        proxies[("haproxy", key)] = (p.pid, port)
        port = free_port()
        env = dict(os.environ, TOKIO_WORKER_THREADS="1", NUBO_LOG="warn")
        p = start([NUBO, "lb", "--route", f"127.0.0.1:{port}=127.0.0.1:{backend}",
                   "--tls-cert", crt, "--tls-key", pk8], 0, env)
        proxies[("nubo", key)] = (p.pid, port)
    wait_port(backend)
    for pid, port in proxies.values():
        wait_port(port)
    measures = [("handshakes", "new connections/s"), ("h1", "HTTP/1.1 keep-alive requests/s"),
                ("h2", "HTTP/2 requests/s")]
    rows = []  # (round, key, measure, {proxy: (rate, cpu_us, failed)})
    print(f"h2load -t1 on CPU 1 with the backend; each proxy 1 thread on CPU 0; {args.rounds} rounds, "
          f"the proxies' order alternating; handshakes: {args.handshakes} new connections in waves of "
          f"{args.wave}; keep-alive: {args.connections} connections x {args.duration} s; HTTP/2: 16 "
          f"connections x 8 streams x {args.duration} s\n", flush=True)
    for r in range(args.rounds):
        order = ("haproxy", "nubo") if r % 2 == 0 else ("nubo", "haproxy")
        for key in ("rsa", "ecdsa"):
            for m, _ in measures:
                got = {}
                for proxy in order:
                    pid, port = proxies[(proxy, key)]
                    got[proxy] = measure(m, pid, port, args)
                rows.append((r + 1, key, m, got))
                h, n = got["haproxy"], got["nubo"]
                print(f"round {r + 1} ({order[0]} first) {key:5} {m:10}: haproxy {h[0]:9.0f}/s "
                      f"{h[1]:7.1f} µs CPU each, {h[2]} failed | nubo {n[0]:9.0f}/s {n[1]:7.1f} µs CPU "
                      f"each, {n[2]} failed | ratio {n[0] / h[0]:.2f}", flush=True)
    print("\n| certificate | measure | HAProxy (median round) | nubo lb (median round) | nubo/HAProxy "
          "rate (median of rounds) | nubo/HAProxy CPU per connection or request | failed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for key, label in (("rsa", "RSA-2048"), ("ecdsa", "ECDSA P-256")):
        for m, name in measures:
            sel = [g for (_, k, mm, g) in rows if k == key and mm == m]
            h = statistics.median(g["haproxy"][0] for g in sel)
            n = statistics.median(g["nubo"][0] for g in sel)
            ratio = statistics.median(g["nubo"][0] / g["haproxy"][0] for g in sel)
            cpu = statistics.median(g["nubo"][1] / g["haproxy"][1] for g in sel)
            failed = sum(g["haproxy"][2] + g["nubo"][2] for g in sel)
            print(f"| {label} | {name} | {h:.0f} | {n:.0f} | **{ratio:.2f}** | {cpu:.2f} | "
                  f"{failed or 'none'} |")


if __name__ == "__main__":
    main()
