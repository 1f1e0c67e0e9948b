"""MediaPipe's native log lines are filtered out of worker stderr; everything else comes through."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

NOISE = [
    "W0000 00:00:1795882456.981740   20324 inference_feedback_manager.cc:114] Feedback manager requires a "
    "model with a single signature inference. Disabling support for feedback tensors.",
    "I0000 00:00:1795882456.981740   20324 gl_context.cc:357] GL version: 3.2",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
]
KEPT = [
    "WARNING prep.annotate: image x: cannot decode",
    "Traceback (most recent call last):",
    "W0000 not a log",
]

SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from prep.native_logs import filter_native_stderr
    print(filter_native_stderr(), flush=True)
    lines = sys.stdin.read().splitlines()
    os.write(2, ("\\n".join(lines) + "\\n").encode())
    time.sleep(0.3)  # the pump thread forwards before the process exits
    """
)


@pytest.mark.parametrize("flag, filtered", [(None, True), ("1", False)])
def test_native_noise_is_dropped_and_the_rest_forwarded(flag, filtered):
    import os

    env = {k: v for k, v in os.environ.items() if k != "HANDFIRST_NATIVE_LOGS"}
    if flag:
        env["HANDFIRST_NATIVE_LOGS"] = flag
    lines = [NOISE[0], KEPT[0], NOISE[1], NOISE[2], KEPT[1], NOISE[3], KEPT[2]]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input="\n".join(lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(filtered)
    assert proc.stderr.splitlines() == (KEPT if filtered else lines)


@pytest.mark.slow  # a prep run in a subprocess with MediaPipe
def test_a_prep_run_prints_no_native_log_lines(data_dir, tmp_path):
    """The real annotator on Dask workers: the tqdm bar and the summary, not MediaPipe's C++ logging."""
    import os

    photos = tmp_path / "in"
    photos.mkdir()
    for src in sorted((data_dir / "hagrid_mini" / "four").glob("*.jpg"))[:3]:
        (photos / src.name).write_bytes(src.read_bytes())
    env = {k: v for k, v in os.environ.items() if k != "HANDFIRST_NATIVE_LOGS"}
    cmd = [
        sys.executable,
        "-m",
        "prep",
        "run",
        "--input",
        str(photos),
        "--out",
        str(tmp_path / "m"),
        "--workers",
        "1",
        "--no-progress",
        "--no-wrist-refine",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "images      3 this run" in proc.stdout
    noisy = [
        line for line in proc.stderr.splitlines() if "inference_feedback_manager" in line or "XNNPACK" in line
    ]
    assert noisy == [], proc.stderr
