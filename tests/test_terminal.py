"""What the terminal shows: a live view on a real terminal (tmux), plain lines in a pipe, and the
libraries' own output in the run's logs."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

from conftest import LAUNCH, launch

TABLE_TOP = "┏"


def test_piped_output_is_plain_lines_and_the_libraries_go_to_the_logs(demo):
    _, run_dir, proc = demo
    out = proc.stdout
    assert "\x1b" not in out and "\r" not in out  # no control codes where stdout is not a terminal
    before = out.split(TABLE_TOP)[0].rstrip("\n").splitlines()
    title = before.pop()  # the table's title line
    assert "demo / default" in title
    assert 0 < len(before) <= 25, out
    assert all(line.startswith("cruijff: ") for line in before), before  # one line per event, ours only
    assert sum("epoch 1/2: loss" in line or "epoch 2/2: loss" in line for line in before) == 2
    assert [c for c in ("base:", "epoch_0:", "epoch_1:") if any(f"default: {c} exact_match" in x for x in before)] \
        == ["base:", "epoch_0:", "epoch_1:"]  # each eval cell as it ends, with its score
    for noise in ("Running lora_finetune_single_device", "Loss:", "triton", "Warning"):
        assert noise not in out + proc.stderr, noise
    logs = run_dir / "logs"
    assert "Running lora_finetune_single_device" in (logs / "finetune.log").read_text()
    assert (logs / "eval.log").is_file()


def test_verbose_prints_torchtunes_own_output(tmp_path, tiny_model_dir):
    proc = launch("verbose=true", "training.epochs=1", "training.max_steps_per_epoch=3", "eval=none", cwd=tmp_path,
                  check=True)
    assert "Running lora_finetune_single_device" in proc.stdout + proc.stderr
    assert not (tmp_path / "outputs" / "demo" / "default" / "logs" / "finetune.log").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_a_terminal_shows_live_progress_then_the_results_table(tmp_path, tiny_model_dir):
    session = f"cruijff-test-{os.getpid()}"
    done = tmp_path / "exit-code"
    command = (f"cd {shlex.quote(str(tmp_path))} && INSPECT_DISPLAY=none {shlex.quote(sys.executable)} "
               f"{shlex.quote(str(LAUNCH))} training.max_steps_per_epoch=60 eval.limit=5; echo $? > {shlex.quote(str(done))}")
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "40"], check=True)
    try:
        subprocess.run(["tmux", "send-keys", "-t", session, command, "Enter"], check=True)
        live, screen, end = [], "", time.time() + 300
        while time.time() < end and not done.exists():
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                                    text=True).stdout
            live += [line for line in screen.splitlines()
                     if re.search(r"steps60 fine-tuning .*epoch [12]/2 · step \d+/60 · loss \d", line)]
            time.sleep(0.2)
        assert done.exists() and done.read_text().strip() == "0", screen
        screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session, "-S", "-100"], capture_output=True,
                                text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    assert live, screen  # the live line while training: epoch, step/total, loss
    assert any(re.search(r"[\d.]+ steps/s · \d+:\d\d:\d\d", line) for line in live), live  # its rate and ETA
    assert len(set(live)) > 1  # redrawn as training goes
    assert "demo / steps60 — finished" in screen and "│ epoch_1    │" in screen
    assert "Loss:" not in screen and "Running lora_finetune_single_device" not in screen
