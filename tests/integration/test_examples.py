#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The concurrency examples (examples/<name>/main.c) as black boxes: each
must exit 0 within its time limit and print exactly the expected text, byte
for byte. Their output is designed to be deterministic (see each example's
header comment), so any difference is a bug in the example or the runtime.

Binaries come from $MICA_BUILD_DIR/examples (default: build/examples)."""
import os, subprocess, sys, time

BUILD = os.environ.get("MICA_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
SLOW = 10 if os.environ.get("MICA_SANITIZE") else 1
TIMEOUT_S = 5  # each example finishes in < 2 s

EXPECTED = {
    "producer_consumer": """\
Received: 0
Received: 1
Received: 2
Received: 3
Received: 4
consumer done: 5 values received, range ended with ECLOSED; <-ch now gives (0, ok=false)
""",
    "fan_out_fan_in": """\
fan-out: 100 jobs to 4 worker coroutines on 2 workers
fan-in: 100 results, each job answered once: yes
sum of squares 1..100 = 338350 (expected 338350)
""",
    "worker_pool": """\
pool: 2 workers, queue of 4
burst of 10 tasks: 6 accepted, 4 rejected (EAGAIN: queue full)
accepted tasks: 6 finished ok
task with a 50 ms ctx timeout (needs 500 ms): ETIMEDOUT
pool closed: 2 workers exited
offload: 1 thread, queue of 1
offload job 1 (blocking usleep 150 ms): running
offload job 2 (blocking file read): queued
offload job 3: EOVERLOAD (thread busy, queue full): shed at once
offload job 1: ok, returned 150
offload job 2: ok, read an ELF header: yes
event loop kept running coroutines meanwhile: yes
""",
    "cache": """\
100 concurrent gets of user:42: 100 got the user, 1 database lookup(s), in about 100 ms
next get of user:42: {"id":42,"name":"user 42"}, from the cache
two gets of user:0: ENOTFOUND and ENOTFOUND, 1 database lookup(s) ("not found" is cached too)
stats: hits=1 negative_hits=1 misses=101 loads=2 shared=99
""",
    "select": """\
poll: nothing ready yet (default case)
fast: tick 1
fast: tick 2
slow: tock 1
fast: tick 3
fast: tick 4
fast: closed (case disabled: nil channel)
slow: tock 2
slow: closed (case disabled: nil channel)
timeout: nothing for 200 ms
quit: closed, leaving the loop
ctx.Done(): select returned ETIMEDOUT, ctx.Err() is ETIMEDOUT after its 100 ms deadline
""",
}


def run_example(name):
    path = os.path.join(BUILD, "examples", name)
    assert os.access(path, os.X_OK), f"{path} is not built"
    # The examples choose their own worker counts; keep the environment from
    # changing anything else (offload pool, drain timeout).
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICA_") or k == "MICA_SANITIZE"}
    r = subprocess.run([path], capture_output=True, timeout=TIMEOUT_S * SLOW, env=env)
    out = r.stdout.decode("utf-8", "replace")
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 0, f"exit {r.returncode}, stderr: {err.strip()!r}, stdout: {out!r}"
    want = EXPECTED[name]
    if out != want:
        got, exp = out.splitlines(), want.splitlines()
        for i in range(max(len(got), len(exp))):
            g = got[i] if i < len(got) else "<missing>"
            e = exp[i] if i < len(exp) else "<missing>"
            if g != e:
                raise AssertionError(f"line {i + 1}: got {g!r}, want {e!r}")
        raise AssertionError(f"output differs (line endings?): {out!r}")


def make_test(name):
    def test():
        run_example(name)
    return test


for _name in EXPECTED:
    globals()["test_" + _name] = make_test(_name)


def run_tests(namespace):
    passed = failed = 0
    for name, fn in list(namespace.items()):
        if not name.startswith("test_") or not callable(fn):
            continue
        t0 = time.time()
        try:
            fn()
            passed += 1
            print(f"PASS {name} ({time.time() - t0:.1f}s)")
        except Exception as e:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"FAIL {name}: {e}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run_tests(dict(globals()))
