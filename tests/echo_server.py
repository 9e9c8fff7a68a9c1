"""A stand-in server for tests/test_procs.py: writes what it was started with (argv, environment, working
directory) as JSON to the file named by its first argument, prints its ready line, then waits for a signal;
`--exit N` exits with N instead."""

import json
import os
import signal
import sys

if __name__ == "__main__":
    out, rest = sys.argv[1], sys.argv[2:]
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"argv": sys.argv, "env": dict(os.environ), "cwd": os.getcwd()}, f)
    print("listening on http://127.0.0.1:1")
    if rest[:1] == ["--exit"]:
        sys.exit(int(rest[1]))
    signal.pause()
