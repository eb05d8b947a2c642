"""Schemathesis hooks for Nubo's API fuzz run (scripts/api-fuzz/run).

One check beyond schemathesis' own: a refused request (4xx) changes nothing. Before each call the
platform's state is read (every collection, tenants and users, as the admin); after a refusal it
must read the same.
"""

import os

import requests
import schemathesis

BASE = os.environ["NUBO_FUZZ_URL"]
AUTH = ("admin", os.environ["NUBO_FUZZ_PASSWORD"])
COLLECTIONS = [
    "networkPartitions",
    "deploymentPolicies",
    "autoscalingPolicies",
    "applicationPolicies",
    "cartridges",
    "cartridgeGroups",
    "applications",
    "kubernetesClusters",
    "tenants",
    "users",
]
_before = {}


def _state():
    out = []
    for c in COLLECTIONS:
        r = requests.get(f"{BASE}/api/{c}", auth=AUTH, timeout=10)
        out.append((c, r.status_code, r.text))
    return out


@schemathesis.hook
def filter_case(ctx, case):
    # The fuzzing admin keeps its password and its user: without them nothing else can be checked.
    body = case.body if isinstance(case.body, dict) else {}
    path = case.operation.path
    if path.endswith("/users") and str(body.get("userName", "")).lower() == "admin":
        return False
    if path.endswith("/users/{name}") and str((case.path_parameters or {}).get("name", "")).lower() == "admin":
        return False
    return True


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    # Reads change nothing by design (and are many): the state is compared around the others.
    if case.method.upper() in ("GET", "HEAD", "OPTIONS"):
        _before.pop("state", None)
    else:
        _before["state"] = _state()


@schemathesis.check
def refused_request_changes_nothing(ctx, response, case):
    if 400 <= response.status_code < 500 and "state" in _before:
        after = _state()
        if after != _before["state"]:
            changed = [c for (c, s, t), (_, s2, t2) in zip(_before["state"], after) if (s, t) != (s2, t2)]
            raise AssertionError(
                f"{case.method} {case.formatted_path} was refused ({response.status_code}) and changed {changed}"
            )
