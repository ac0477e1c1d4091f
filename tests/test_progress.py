"""Live progress (``imgrec.progress``), drawn by the driver: a bar on a terminal
(a real pseudo-terminal here), one line per epoch or per prediction part on a pipe;
and the board actor that carries rank 0's events to the driver."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time

from imgrec.progress import TrainingProgress, TrainingView, epoch_line

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS, STEPS = 2, 5


def _events() -> list[dict]:
    out = [{"kind": "say", "text": "epoch 1: freeze_depth=0, trainable weights=8"}]
    for epoch in range(1, EPOCHS + 1):
        for step in range(1, STEPS + 1):
            out.append({"kind": "step", "epoch": epoch, "epochs": EPOCHS, "step": step, "steps": STEPS,
                        "loss": 1.0 / step, "accuracy": 0.1 * step, "images_per_s": 100.0 + step})
        out.append({"kind": "epoch", "epoch": epoch, "epochs": EPOCHS, "metrics": {
            "loss": 0.5, "accuracy": 0.75, "val_loss": 0.25, "val_accuracy": 0.875, "images": 80,
            "images_per_s": 105.0}})
    return out


_DRAW = f"""
import time
from imgrec.progress import FileBar, TrainingView
view = TrainingView()
for event in {_events()!r}:
    view.show(event)
    time.sleep(0.02)
view.close()
bar = FileBar(30)
for part in range(3):
    bar.update(10, errors=part)
    bar.line(f"[predict] chunk {{part + 1}}/3: 10 files, {{part}} errors", print)
bar.close()
print("[imgrec] done", flush=True)
"""


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO, "COLUMNS": "120"}


def _run_on_terminal() -> str:
    """The drawing script with its stdout on a pseudo-terminal; what the terminal got."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-c", _DRAW], stdout=follower, stderr=follower, env=_env())
    os.close(follower)
    chunks, deadline = [], time.time() + 120
    while time.time() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is done
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(30)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_a_bar_with_loss_accuracy_and_rate():
    shown = _run_on_terminal()
    # The step bar: redrawn in place, with the epoch, steps, loss, accuracy and img/s.
    assert "\r" in shown
    assert re.search(r"epoch 1/2:\s+\d+%.*\| 3/5 .*loss 0\.3333 acc 0\.3000 103 img/s", shown), shown
    assert re.search(r"epoch 2/2:.*5/5", shown)
    # Each epoch's line stays, once, above the bar.
    lines = [line for line in re.split(r"[\r\n]+", shown) if line.startswith("[imgrec] epoch ")]
    assert [line[:20] for line in lines] == ["[imgrec] epoch 1: fr", "[imgrec] epoch 1/2 l", "[imgrec] epoch 2/2 l"]
    # The prediction bar: files of the total, errors, the rate; no per-part lines under it.
    assert re.search(r"\[predict\]:\s+\d+%.*30/30 .*file/s.*3 errors", shown), shown
    assert "[predict] chunk" not in shown


def test_on_a_pipe_one_line_per_epoch_and_part():
    done = subprocess.run([sys.executable, "-c", _DRAW], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        "[imgrec] epoch 1: freeze_depth=0, trainable weights=8",
        epoch_line(_events()[6]),
        epoch_line(_events()[-1]),
        "[predict] chunk 1/3: 10 files, 0 errors",
        "[predict] chunk 2/3: 10 files, 1 errors",
        "[predict] chunk 3/3: 10 files, 2 errors",
        "[imgrec] done",
    ]


def test_the_board_carries_rank_0s_events_to_the_driver(ray_cluster):
    """A real board actor: events put from a Ray task (as rank 0 does, not waited
    on) are drawn by the driver's poller, the last ones when the block ends."""
    ray = ray_cluster
    out = io.StringIO()
    events = _events()

    @ray.remote(num_cpus=0)
    def rank0(board, events):
        for event in events:
            board.put.remote(event)  # not waited on, as rank 0 sends them
        ray.get(board.put.remote({"kind": "end"}))  # as ProgressHook.on_train_end: all of them are there
        return len(events)

    with TrainingProgress(TrainingView(out, live=False)) as progress:
        assert ray.get(rank0.remote(progress.board, events), timeout=60) == len(events)
    assert out.getvalue().splitlines() == [
        "[imgrec] epoch 1: freeze_depth=0, trainable weights=8", epoch_line(events[6]), epoch_line(events[-1])]


def test_rank_0s_progress_hook_feeds_the_board(ray_cluster, tmp_path, monkeypatch):
    """``ProgressHook`` on rank 0 sends step events (throttled) and the epoch's
    metrics to the board; rank 1 sends nothing; the driver draws the epoch line."""
    from imgrec import hooks, progress
    from imgrec.config import TrainConfig
    from imgrec.layout import RunLayout
    from imgrec.loop_state import WorkerLoop

    monkeypatch.setattr(progress, "STEP_EVERY_S", 0.0)  # every step is sent
    board = TrainingProgress().board  # the board alone; this test drains it
    for rank in (1, 0):
        loop = WorkerLoop(cfg=TrainConfig(epochs=3), run=RunLayout(str(tmp_path / "r")), rank=rank, world=2,
                          class_names=["a", "b"], manifest_base={}, steps_per_epoch=4, global_batch=8,
                          progress=board)
        hook = hooks.ProgressHook()
        hook.on_epoch_begin(loop, 0)
        for step in range(4):
            hook.on_train_batch_end(loop, step, [2.0 * (step + 1), 4.0 * (step + 1), 8.0 * (step + 1)])
        hook.on_epoch_end(loop, 0, {"loss": 0.25, "accuracy": 0.5, "val_loss": 0.5, "val_accuracy": 0.5,
                                    "images": 32, "images_per_s": 10.0, "train_time_s": 2.4})
        hook.on_train_end(loop)
    events = ray_cluster.get(board.take.remote(), timeout=30)
    assert [e["kind"] for e in events if e["kind"] != "step"] == ["epoch", "end"]
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert all(e["loss"] == 0.25 and e["accuracy"] == 0.5 and e["steps"] == 4 and e["epoch"] == 1 for e in steps)
    out = io.StringIO()
    view = TrainingView(out, live=False)
    for event in events:
        view.show(event)
    assert out.getvalue().splitlines() == [
        "[imgrec] epoch 1/3 loss 0.2500 acc 0.5000 val_loss 0.5000 val_acc 0.5000 (32 images, 10 img/s)"]


def test_ray_data_bars_are_off_only_inside_imgrec_s_own_progress(ray_cluster):
    """``own_progress`` (on ``train`` and ``predict_bucket``) turns Ray Data's bars off
    when the function reaches ``ensure_ray``, after its pre-flight (no Ray import
    before), and gives the caller's setting back when it returns."""
    import ray.data

    from imgrec.runtime import ensure_ray, own_progress

    ctx = ray.data.DataContext.get_current()
    saved, ctx.enable_progress_bars = ctx.enable_progress_bars, True
    seen = []

    @own_progress
    def job():
        seen.append(ctx.enable_progress_bars)  # the pre-flight's part: untouched
        ensure_ray()
        seen.append(ray.data.DataContext.get_current().enable_progress_bars)

    try:
        job()
        assert seen == [True, False] and ctx.enable_progress_bars is True
    finally:
        ctx.enable_progress_bars = saved
