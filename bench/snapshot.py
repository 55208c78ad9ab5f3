"""The code a launch freezes for its jobs (cruijff.sweep.snapshot): how long taking the copy takes on a
git project of a few thousand files, unchanged since the last launch (the copy is reused) and
after an edit of one file (a new copy is written), against reading the same files once (the anchor).

    python bench/snapshot.py [--files 3000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from cruijff.sweep import snapshot


def make_project(root: Path, files: int) -> None:
    """A git project: ``files`` tracked Python files of ~4 KB in dirs of 50, conf/, a task file."""
    for i in range(files):
        path = root / "pkg" / f"d{i // 50}" / f"m{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# module {i}\n" + "x = 1  # padding of a typical source line\n" * 90)
    (root / "tasks").mkdir()
    (root / "tasks" / "t.py").write_text("from inspect_ai import task\n")
    (root / "conf" / "experiment").mkdir(parents=True)
    (root / "conf" / "experiment" / "e.yaml").write_text("seed: 1\n")
    (root / "data.bin").write_bytes(b"\0" * (8 << 20))
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root, a.files)
        os.chdir(root)
        config = OmegaConf.create({"eval": {"tasks": [{"name": "tasks/t.py@t"}]}})
        sweep = root / "outputs" / "bench"
        paths = [p for p in root.rglob("*.py")]
        anchor = best(lambda: [p.read_bytes() for p in paths], a.repeat)
        t0 = time.perf_counter()
        first = snapshot.take(config, sweep)
        written = time.perf_counter() - t0
        reused = best(lambda: snapshot.take(config, sweep), a.repeat)
        assert snapshot.take(config, sweep).digest == first.digest
        (root / "pkg" / "d0" / "m0.py").write_text("x = 2\n")
        t0 = time.perf_counter()
        edited = snapshot.take(config, sweep)
        rewritten = time.perf_counter() - t0
        assert edited.digest != first.digest
        print(f"{first.files} files copied, {len(first.skipped)} skipped (over {snapshot.SIZE_LIMIT >> 20} MiB)")
        print(f"anchor: read every file once        {anchor * 1000:7.1f} ms")
        print(f"first launch: copy written          {written * 1000:7.1f} ms  ({written / anchor:.1f}x anchor)")
        print(f"unchanged: copy reused (best of {a.repeat}) {reused * 1000:7.1f} ms  ({reused / anchor:.1f}x anchor)")
        print(f"one file edited: a new copy         {rewritten * 1000:7.1f} ms  ({rewritten / anchor:.1f}x anchor)")


if __name__ == "__main__":
    main()
