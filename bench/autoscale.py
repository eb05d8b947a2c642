#!/usr/bin/env python3
"""Autoscaling reaction times with real load, on the release build and its default settings
(5 s statistics window, 3 s scale-up and 15 s scale-down cool-downs, 1 s decisions):

- a load step (16 clients, each keeping one request in flight on a workload that holds requests
  200 ms; requests-in-flight threshold 4 per member, min 1, max 4) → 4 members Active;
- the load stopping → back to 1 member.

Every process started here is stopped on exit.

    cargo build --release -p nubo && bench/autoscale.py
"""
import os
import threading
import time
import urllib.request

import importlib.util

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("platform_bench", os.path.join(HERE, "platform.py"))
pb = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pb)
SLOW = os.path.join(pb.ROOT, "crates", "nubo", "tests", "it", "fixtures", "slow.py")


def active(server):
    return sum(1 for m in server.members("busy") if m["status"] == "Active")


def main():
    server = pb.Server()
    stop = threading.Event()
    try:
        proxy = pb.free_port()
        arts = [
            ("autoscalingPolicies", {"id": "busy", "loadThresholds": {"requestsInFlight": {"threshold": 4}}}),
            ("networkPartitions", {"id": "np", "provider": "local", "partitions": [{"id": "p1"}]}),
            ("deploymentPolicies", {"id": "dp", "networkPartitions": [{"id": "np", "partitionAlgo": "round-robin", "partitions": [{"id": "p1"}]}]}),
            ("applicationPolicies", {"id": "ap", "algorithm": "one-after-another", "networkPartitions": ["np"]}),
            ("cartridges", {"type": "slow", "category": "framework", "host": "localhost",
                            "portMapping": [{"name": "http", "protocol": "http", "port": 8080, "proxyPort": proxy}],
                            "iaasProvider": [{"type": "local", "imageId": f"exec python3 {SLOW}"}]}),
            ("applications", {"applicationId": "busy", "components": {"cartridges": [
                {"type": "slow", "cartridgeMin": 1, "cartridgeMax": 4,
                 "subscribableInfo": {"alias": "web", "autoscalingPolicy": "busy", "deploymentPolicy": "dp"}}]}}),
        ]
        for coll, body in arts:
            status, answer = server.call("POST", f"/api/{coll}", body)
            assert status == 201, (coll, answer)
        server.call("POST", "/api/applications/busy/deploy/ap")
        pb.wait(lambda: active(server) == 1)
        time.sleep(2)

        failures = [0]

        def client():
            while not stop.is_set():
                req = urllib.request.Request(f"http://127.0.0.1:{proxy}/", headers={"Host": "busy.web.localhost"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        r.read()
                except Exception:
                    failures[0] += 1

        threads = [threading.Thread(target=client) for _ in range(16)]
        t0 = time.time()
        for t in threads:
            t.start()
        pb.wait(lambda: active(server) == 4, timeout=120, step=0.05)
        up = time.time() - t0
        stop.set()
        for t in threads:
            t.join()
        t1 = time.time()
        pb.wait(lambda: active(server) == 1 and len(server.members("busy")) == 1, timeout=300, step=0.1)
        down = time.time() - t1
    finally:
        stop.set()
        server.stop()
    print("| measure | nubo (defaults) | Stratos defaults | Kubernetes HPA defaults |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| load step → enough capacity (1 → 4 members) | {up:.1f} s | ≥ 90 s (90 s monitor tick over 60 s CEP windows) | 15 s sync + pod start; several syncs to reach 4 |")
    print(f"| load drop → back to the minimum (4 → 1) | {down:.1f} s | ≥ 3 ticks before the first removal, then one member per 90 s tick | 300 s stabilization window, then down |")
    print(f"\nfailed requests during the run: {failures[0]}")


if __name__ == "__main__":
    main()
