"""Checks what scripts/gpu_check.sh left in its OUT folder against what a lent
GPU machine sends back (at most 8 files of 16 MiB, 2 folders deep), with room
to spare: at most 5 files, each under 16 MiB, at most 2 folders deep, under
64 MiB in all, and a gpu_check.json that parses and names every stage.

    python scripts/check_gpu_out.py OUT [--require-complete]

Exit status 0 when it holds, 1 (with one line per problem) when not.
Standard library only.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_check_steps import STAGES

MAX_FILES = 5
MAX_FILE_BYTES = 16 << 20
MAX_TOTAL_BYTES = 64 << 20
MAX_DEPTH = 2  # folders between OUT and a file
STATUSES = {"pending", "not selected", "passed", "failed", "timed out", "skipped", "interrupted"}
SUMMARY = "gpu_check.json"


def problems(out, require_complete=False):
    """Every way `out` breaks the rule, as sentences; empty when it holds."""
    if not os.path.isdir(out):
        return [f"{out} is not a folder"]
    found, names, total = [], [], 0
    for folder, dirs, files in os.walk(out):
        depth = os.path.relpath(folder, out).count(os.sep) + (folder != out)
        for name in dirs:
            if os.path.islink(os.path.join(folder, name)):
                found.append(f"{os.path.relpath(os.path.join(folder, name), out)} is a link")
        for name in files:
            path = os.path.join(folder, name)
            relative = os.path.relpath(path, out)
            if os.path.islink(path) or not os.path.isfile(path):
                found.append(f"{relative} is not a plain file "
                             "(links and the like do not come back)")
                continue
            size = os.path.getsize(path)
            names.append(relative)
            total += size
            if depth > MAX_DEPTH:
                found.append(f"{relative} is {depth} folders deep (at most {MAX_DEPTH})")
            if size >= MAX_FILE_BYTES:
                found.append(f"{relative} has {size} bytes (under {MAX_FILE_BYTES} allowed)")
    if len(names) > MAX_FILES:
        found.append(f"{len(names)} files (at most {MAX_FILES}): {', '.join(sorted(names))}")
    if total >= MAX_TOTAL_BYTES:
        found.append(f"{total} bytes in all (under {MAX_TOTAL_BYTES} allowed)")
    found += _summary_problems(os.path.join(out, SUMMARY), require_complete)
    return found


def _summary_problems(path, require_complete):
    try:
        with open(path) as f:
            summary = json.load(f)
    except OSError as error:
        return [f"{SUMMARY}: missing ({error.strerror})"]
    except ValueError as error:
        return [f"{SUMMARY}: not JSON ({error})"]
    stages = summary.get("stages") if isinstance(summary, dict) else None
    if not isinstance(stages, list):
        return [f"{SUMMARY}: no 'stages' list"]
    found = []
    by_name = {s.get("stage"): s for s in stages if isinstance(s, dict)}
    for name in STAGES:
        stage = by_name.get(name)
        if stage is None:
            found.append(f"{SUMMARY}: stage {name!r} missing")
        elif stage.get("status") not in STATUSES:
            found.append(f"{SUMMARY}: stage {name!r} has status {stage.get('status')!r}")
        elif stage["status"] not in ("pending", "not selected") and "seconds" not in stage:
            found.append(f"{SUMMARY}: stage {name!r} has no time")
    if require_complete and summary.get("complete") is not True:
        found.append(f"{SUMMARY}: not complete (the script stopped before its end)")
    return found


def main(argv):
    args = [a for a in argv if a != "--require-complete"]
    if len(args) != 1:
        print("usage: check_gpu_out.py OUT [--require-complete]", file=sys.stderr)
        return 2
    found = problems(args[0], require_complete="--require-complete" in argv)
    for problem in found:
        print(f"check_gpu_out.py: {problem}", file=sys.stderr)
    if not found:
        names = sorted(os.listdir(args[0]))
        print(f"check_gpu_out.py: {args[0]} holds {len(names)} file(s) within the rule: "
              f"{', '.join(names)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
