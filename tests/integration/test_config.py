#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Configuration as an operator meets it, through examples/user: --help lists
every setting with its variable and default; a flag beats the environment,
which beats a --config JSON file; bad values, unknown flags and unknown file
keys stop the program at start with exit 2 and a message naming the setting."""
import json, os, socket, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(__file__))
from mica_harness import BUILD, SLOW, run_tests  # noqa: E402

USER = os.path.join(BUILD, "examples/user")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def clean_env(**kw):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MICA_") or k == "MICA_SANITIZE"}
    env.update(kw)
    return env


def run(args, env, timeout=10):
    return subprocess.run([USER, *args], env=env, capture_output=True, text=True,
                          timeout=timeout * SLOW)


def serve(args, env):
    """Starts the server; returns (process, the port it answers /health on, or None)."""
    p = subprocess.Popen([USER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    return p


def answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def wait_answers(p, port):
    deadline = time.time() + 10 * SLOW
    while time.time() < deadline:
        if answers(port):
            return True
        if p.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def stop(p):
    p.terminate()
    assert p.wait(timeout=20 * SLOW) == 0


def test_help_lists_every_setting_and_exits_0():
    r = run(["--help"], clean_env())
    assert r.returncode == 0, r
    for flag, var in [("--listen", "MICA_LISTEN"), ("--workers", "MICA_WORKERS"),
                      ("--http-max-body-bytes", "MICA_HTTP_MAX_BODY_BYTES"),
                      ("--http-request-timeout-ms", "MICA_HTTP_REQUEST_TIMEOUT_MS"),
                      ("--tls-listen", "MICA_TLS_LISTEN"),
                      ("--grpc-max-message-bytes", "MICA_GRPC_MAX_MESSAGE_BYTES")]:
        assert flag in r.stdout and var in r.stdout, (flag, r.stdout)
    assert 'default "1MiB"' in r.stdout and 'default ":8080,:50051"' in r.stdout, r.stdout


def test_flag_beats_environment_beats_file():
    a, b, c = free_port(), free_port(), free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"listen": f"127.0.0.1:{c}", "workers": 1, "http_max_body_bytes": "64KiB"}, f)
    try:
        # All three sources set listen: the flag wins.
        p = serve(["--listen", f"127.0.0.1:{a}", "--config", f.name],
                  clean_env(MICA_LISTEN=f"127.0.0.1:{b}"))
        assert wait_answers(p, a), p.stderr.read() if p.poll() is not None else "no answer"
        assert not answers(b) and not answers(c)
        stop(p)
        # No flag: the environment wins over the file.
        p = serve(["--config", f.name], clean_env(MICA_LISTEN=f"127.0.0.1:{b}"))
        assert wait_answers(p, b)
        assert not answers(c)
        stop(p)
        # Only the file (named by MICA_CONFIG this time); its body limit applies.
        p = serve([], clean_env(MICA_CONFIG=f.name))
        assert wait_answers(p, c)
        req = urllib.request.Request(f"http://127.0.0.1:{c}/data", data=b"x" * 70000, method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("a 70000-byte body passed a 64KiB limit")
        except urllib.error.HTTPError as e:
            assert e.code == 413, e.code
        stop(p)
    finally:
        os.unlink(f.name)


def test_bad_settings_stop_the_program_with_exit_2():
    cases = [(["--workers", "lots"], {}, "workers"),
             (["--wrokers=2"], {}, "unknown flag --wrokers"),
             ([], {"MICA_HTTP_MAX_BODY_BYTES": "0"}, "MICA_HTTP_MAX_BODY_BYTES"),
             ([], {"MICA_HTTP_IDLE_TIMEOUT_MS": "5 s"}, "http_idle_timeout_ms"),
             (["--config", "/nonexistent/user.json"], {}, "/nonexistent/user.json")]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write('{"listn": ":1"}')
    cases.append((["--config", f.name], {}, 'unknown setting "listn"'))
    try:
        for args, env, want in cases:
            r = run(args, clean_env(**env))
            assert r.returncode == 2 and want in r.stderr, (args, env, r.returncode, r.stderr)
    finally:
        os.unlink(f.name)


if __name__ == "__main__":
    run_tests(globals())
