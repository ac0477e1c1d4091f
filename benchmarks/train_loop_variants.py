"""Training throughput: imgrec (Ray Train + MultiWorkerMirroredStrategy loop) on 1 and
2 workers against plain single-process Keras ``model.fit`` on the same images in memory.

    .venv/bin/python benchmarks/train_loop_variants.py                     # the standard table
    .venv/bin/python benchmarks/train_loop_variants.py --rounds 2          # interleaved repeats
    .venv/bin/python benchmarks/train_loop_variants.py --variants "persistent-iterator@1,timed@2"

Same 128x128 synthetic JPEGs (``synth.make_dataset``), same model (``--model``,
default small_cnn), same global batch (32), augmentation none, same epochs (3).
The imgrec runs read the images with the data plane (``load_dataset``, decoded once
before the runs and shared by all of them; no validation split); the plain run takes
the same decoded pixels as numpy arrays (``take_arrays``). Per run it reports:

* start-up: ``train()`` call (plain: model build) to the end of epoch 1, and its part
  before the first step ("pre-step" = start-up - epoch-1 train time). The plain
  figure excludes importing TensorFlow (printed once in the header);
* epoch-1 images/s (tf.function tracing included) and steady images/s (mean of
  epochs >= 2, from the loop's own ``train_time_s``, which excludes checkpointing);
* CPU ms per image between the ends of epoch 1 and of the last epoch, for every
  process (checkpoints included, the benchmark's own sampler excluded) and for the
  Ray Train workers alone; on a shared machine this moves far less than images/s;
* peak RSS: sum over this process and every process it started (the Ray cluster
  included; shared pages such as the object store count once per process mapping
  them), sampled every 0.5 s; PSS (shared pages split between their users) at the
  epoch ends. For the plain run, this process alone;
* per run, where the steady-state CPU went (cores busy per Ray process kind) and
  the RSS per process kind at the peak.

``--variants`` runs imgrec's worker loop with one change each (see VARIANTS: TF
thread pools, prefetch depth, tf.data autotune, one iterator for the whole run, a
per-thread CPU hook), through ``train(cfg, loop_options=..., hooks=[...])``; the
loop's own per-epoch record gives the data wait and every hook's time.
``--table-from`` re-prints the tables of earlier ``--json`` files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

try:
    import psutil
except ImportError:  # not installed on its own: Ray ships it (ray/thirdparty_files), on the path after `import ray`
    import ray  # noqa: F401, I001  (first: it puts its copy of psutil on the path)
    import psutil

from imgrec.hooks import Hook  # noqa: E402  (no TensorFlow: the env above is set first anyway)
from imgrec.runtime import worker_echo  # noqa: E402

# --------------------------------------------------------------------------- sampling


class Sampler(threading.Thread):
    """Peak RSS and CPU time of this process (+ descendants), and when each epoch of an
    imgrec run ended (the time its ``history.json`` first lists that epoch)."""

    def __init__(self, tree: bool, history_path: str | None = None, interval: float = 0.5):
        super().__init__(daemon=True)
        self.tree, self.history_path, self.interval = tree, history_path, interval
        self.peak_rss = 0
        self.peak_procs = 0
        self.peak_by_process: list[tuple[str, int, int]] = []
        self.peak_pss = 0  # proportional set size (shared pages split between their users), at epoch ends
        self.own_cpu = 0.0
        self.epoch_end: dict[int, tuple[float, float]] = {}  # epoch -> (time, tree cpu s)
        self.epoch_procs: dict[int, dict[int, tuple[str, float]]] = {}  # epoch -> {pid: (label, cpu s)}
        self._halt = threading.Event()
        self._me = psutil.Process()
        self._mtime = None

    def procs(self) -> list[psutil.Process]:
        return [self._me] + (self._me.children(recursive=True) if self.tree else [])

    def sample(self, per_process: dict | None = None) -> tuple[int, float, int]:
        rss = cpu = 0.0
        procs = self.procs()
        for p in procs:
            try:
                with p.oneshot():
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    cpu += t.user + t.system
                if per_process is not None:
                    per_process[p.pid] = (_proc_label(p), t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return int(rss), cpu, len(procs)

    def pss(self) -> int:
        total = 0
        for p in self.procs():
            try:
                total += p.memory_full_info().pss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
                pass
        return total

    def cpu_now(self) -> float:
        return self.sample()[1]

    def _check_history(self, now: float, cpu: float) -> None:
        try:
            mtime = os.stat(self.history_path).st_mtime
        except OSError:
            return
        if mtime == self._mtime:
            return
        try:
            epochs = json.load(open(self.history_path))["epochs"]
        except (OSError, ValueError, KeyError):
            return  # caught mid-write (atomic writes make this rare): next sample
        self._mtime = mtime
        new = [int(h["epoch"]) for h in epochs if int(h["epoch"]) not in self.epoch_end]
        if new:
            per_process: dict[int, tuple[str, float]] = {}
            self.sample(per_process)
            per_process[-1] = ("(benchmark sampler thread)", self.own_cpu)
            self.peak_pss = max(self.peak_pss, self.pss())
            for e in new:
                self.epoch_end[e] = (now, cpu)
                self.epoch_procs[e] = per_process

    def steady_breakdown(self) -> list[tuple[str, float]]:
        """CPU seconds per process kind between the end of epoch 1 and of the last epoch."""
        if 1 not in self.epoch_procs or max(self.epoch_procs) < 2:
            return []
        a, b = self.epoch_procs[1], self.epoch_procs[max(self.epoch_procs)]
        out: dict[str, float] = {}
        for pid, (label, cpu) in b.items():
            out[label] = out.get(label, 0.0) + cpu - (a[pid][1] if pid in a else 0.0)
        # The sampler runs in this process: its cost is the benchmark's, not the driver's.
        sampler = out.pop("(benchmark sampler thread)", 0.0)
        out["driver (this process)"] = out.get("driver (this process)", 0.0) - sampler
        return sorted(out.items(), key=lambda kv: -kv[1])

    def run(self) -> None:
        while not self._halt.is_set():
            rss, cpu, n = self.sample()
            now = time.time()
            if rss > self.peak_rss:
                self.peak_rss, self.peak_procs = rss, n
                if self.tree:
                    self.peak_by_process = self._rss_by_label()
            if self.history_path:
                self._check_history(now, cpu)
            self.own_cpu = time.thread_time()  # the sampler's own cost, counted in the tree's CPU
            self._halt.wait(self.interval)

    def _rss_by_label(self) -> list[tuple[str, int, int]]:
        out: dict[str, list[int]] = {}
        for p in self.procs():
            try:
                rss = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            entry = out.setdefault(_proc_label(p), [0, 0])
            entry[0] += rss
            entry[1] += 1
        return sorted(((k, v[0], v[1]) for k, v in out.items()), key=lambda t: -t[1])

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _proc_label(p: psutil.Process) -> str:
    """"ray::SplitCoordinator", "raylet", "this process", ... (Ray sets its workers' titles)."""
    if p.pid == os.getpid():
        return "driver (this process)"
    try:
        cmd = p.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        cmd = []
    first = (cmd[0] if cmd else p.name()).split()[0] if (cmd or p.name()) else "?"
    if first.startswith("ray::"):
        return first.split(".")[0]
    return os.path.basename(first) if not first.endswith("python") else " ".join(
        os.path.basename(c) for c in cmd[1:3])


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def ray_processes_outside_tree() -> int:
    """Ray processes on the machine that are not ours (other engineers' clusters)."""
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    n = 0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            name = p.info["name"] or ""
            if p.pid not in mine and (name.startswith("ray::") or name in ("raylet", "gcs_server")):
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return n


# --------------------------------------------------------------------------- plain Keras


def run_plain(x, y, num_classes: int, args) -> dict:
    import keras

    from imgrec import models
    from imgrec.config import ModelConfig

    times: list[float] = []
    cpus: list[float] = []
    sampler = Sampler(tree=False)

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.time() - self.t0)
            cpus.append(sampler.cpu_now())
            sampler.peak_pss = max(sampler.peak_pss, sampler.pss())

    load0 = loadavg()
    sampler.start()
    t_call = time.time()
    cpu0 = sampler.cpu_now()
    keras.utils.set_random_seed(0)
    model = models.build_model(ModelConfig(name=args.model), num_classes, (args.image_size, args.image_size))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=models.loss_name(num_classes), metrics=["accuracy"])
    t_fit = time.time()
    hist = model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True, verbose=0,
                     callbacks=[EpochClock()])
    sampler.stop()
    n = len(x)
    ips = [n / t for t in times]
    steady_cpu = (cpus[-1] - cpus[0]) / (n * (len(times) - 1)) if len(times) > 1 else None
    return {
        "config": "plain keras fit", "workers": 1,
        "startup_s": (t_fit - t_call) + times[0], "before_first_step_s": t_fit - t_call,
        "epoch1_ips": ips[0], "steady_ips": _mean(ips[1:]) if len(ips) > 1 else ips[0],
        "epoch_ips": ips, "cpu_ms_per_img": 1e3 * steady_cpu if steady_cpu else None,
        "worker_cpu_ms_per_img": 1e3 * steady_cpu if steady_cpu else None,
        "cpu_s_total": cpus[-1] - cpu0,
        "peak_rss_mb": sampler.peak_rss / 2**20, "pss_mb": sampler.peak_pss / 2**20, "procs": 1,
        "load": f"{load0} -> {loadavg()}",
        "final_accuracy": float(hist.history["accuracy"][-1]),
    }


# --------------------------------------------------------------------------- imgrec runs


def _mean(v):
    return sum(v) / len(v)


def run_imgrec(data, args, workers: int, label: str, runs_dir: str, options=None, hooks=None) -> dict:
    import imgrec.train as T
    from imgrec.config import AugmentConfig, DataConfig, DecodeConfig, ModelConfig, TrainConfig
    from imgrec.layout import RunLayout

    cfg = TrainConfig(
        data=DataConfig(uri=data.source, validation_split=0.0,
                        decode=DecodeConfig(image_size=(args.image_size, args.image_size))),
        model=ModelConfig(name=args.model), augment=AugmentConfig(), storage=runs_dir,
        run_name=f"{label.replace(' ', '_')}-w{workers}-{os.urandom(2).hex()}",
        workers=workers, cpus_per_worker=1.0, batch_size=args.batch_size, epochs=args.epochs,
        keep_checkpoints=1, max_failures=0, evaluate=False, report=False,
    )
    history_path = RunLayout.of(runs_dir, cfg.run_name).history
    sampler = Sampler(tree=True, history_path=history_path)
    load0 = loadavg()
    sampler.start()
    cpu0 = sampler.cpu_now()
    t_call = time.time()
    try:
        result = T.train(cfg, dataset=data, loop_options=options, hooks=hooks)
    finally:
        sampler.stop()
    hist = result.history
    ips = [h["images_per_s"] for h in hist]
    seen = [h["images_per_s"] * h["train_time_s"] for h in hist]
    ends = sampler.epoch_end
    startup = ends[1][0] - t_call if 1 in ends else None
    last = max(ends) if ends else None
    steady_cpu = worker_cpu = None
    breakdown = sampler.steady_breakdown()
    if last and last > 1 and breakdown:
        steady_imgs = sum(seen[1:last])
        steady_cpu = sum(cpu for _, cpu in breakdown) / steady_imgs  # all processes, sampler excluded
        worker_cpu = sum(cpu for label, cpu in breakdown if label == "ray::RayTrainWorker") / steady_imgs
    return {
        "config": label, "workers": workers,
        "startup_s": startup,
        "before_first_step_s": startup - hist[0]["train_time_s"] if startup else None,
        "epoch1_ips": ips[0], "steady_ips": _mean(ips[1:]) if len(ips) > 1 else ips[0],
        "epoch_ips": ips, "cpu_ms_per_img": 1e3 * steady_cpu if steady_cpu else None,
        "worker_cpu_ms_per_img": 1e3 * worker_cpu if worker_cpu else None,
        "cpu_s_total": sampler.cpu_now() - cpu0,
        "peak_rss_mb": sampler.peak_rss / 2**20, "pss_mb": sampler.peak_pss / 2**20, "procs": sampler.peak_procs,
        "load": f"{load0} -> {loadavg()}", "elapsed_s": result.elapsed_s,
        "final_accuracy": hist[-1]["accuracy"],
        "steady_wall_s": ends[last][0] - ends[1][0] if last and last > 1 else None,
        "steady_cpu_by_process": breakdown,
        "peak_rss_by_process": sampler.peak_by_process,
        "sampler_cpu_s": sampler.own_cpu,
    }


# --------------------------------------------------------------------------- loop variants
#
# Each variant is imgrec's own worker loop with other ``LoopOptions`` and/or extra
# hooks, passed through ``train(cfg, loop_options=..., hooks=[...])``: imgrec is
# not modified, and the loop's per-epoch record (data wait, train, validation and
# hook times) is what every variant reports.


class ThreadCpuHook(Hook):
    """Prints, per rank and epoch, the data wait and step time per step (from the
    loop's own record) and the worker's CPU by thread name (digits stripped)."""

    name = "thread_cpu"

    def on_epoch_begin(self, loop, epoch):
        self.cpu, self.wall = _thread_cpu(), time.perf_counter()

    def on_epoch_end(self, loop, epoch, metrics):
        wall = time.perf_counter() - self.wall
        steps = max(1, loop.steps_per_epoch)
        by_thread = sorted(((k, v - self.cpu.get(k, 0.0)) for k, v in _thread_cpu().items()), key=lambda kv: -kv[1])
        busy = ", ".join(f"{k} {v / wall:.2f}" for k, v in by_thread if v / wall >= 0.005)
        step_ms = 1e3 * (metrics["train_time_s"] - metrics["data_wait_s"]) / steps
        worker_echo(f"[bench] rank {loop.rank} epoch {epoch + 1}: data wait {1e3 * metrics['data_wait_s'] / steps:.1f} "
                    f"ms/step, rest of the step {step_ms:.1f} ms/step; worker CPU by thread, cores busy over "
                    f"{wall:.0f}s: {busy}")


def _thread_cpu() -> dict[str, float]:
    """CPU seconds per thread name (digits stripped) of this process."""
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            st = open(f"/proc/self/task/{tid}/stat").read()
        except OSError:
            continue
        name = st[st.index("(") + 1:st.rindex(")")].rstrip("0123456789_-/ ") or "?"
        f = st[st.rindex(")") + 2:].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    return out


VARIANTS = {
    # name: (description, LoopOptions fields, extra hooks)
    "timed": ("imgrec loop + per-thread CPU", {}, [ThreadCpuHook]),
    "feed=tf.data": ("the distributed tf.data feed imgrec used before (teardown stalls)", {"feed": "tf.data"}, []),
    "threads=cpus": ("intra-op = physical cores // workers, inter-op = 1", "threads", []),
    "autotune=off": ("tf.data options.autotune.enabled = False", {"feed": "tf.data", "tf_data_autotune": False}, []),
    "persistent-iterator": ("one tf.data iterator for all epochs", {"feed": "tf.data", "persistent_iterator": True}, []),
    "autotune=off+timed": ("autotune off + per-thread CPU", {"feed": "tf.data", "tf_data_autotune": False}, [ThreadCpuHook]),
    "prefetch=AUTOTUNE": ("tf.data prefetch(AUTOTUNE) instead of 2", {"feed": "tf.data", "prefetch": -1}, []),
    "batchnorm=keras": ("Keras's own batch norm, not TensorFlow's fused kernel", {"fused_batch_norm": False}, []),
}


def variant_loop(name: str, workers: int):
    """(description, LoopOptions, hooks) of a variant."""
    from imgrec.loop import LoopOptions

    desc, options, hooks = VARIANTS[name]
    if options == "threads":
        options = {"intra_op_threads": max(1, (psutil.cpu_count(logical=False) or 2) // workers),
                   "inter_op_threads": 1}
    return desc, LoopOptions(**options), [hook() for hook in hooks]


# --------------------------------------------------------------------------- table


def _median(v):
    v = sorted(x for x in v if x is not None)
    if not v:
        return None
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def summarize(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["config"], r["workers"]), []).append(r)
    out = []
    for (config, workers), rs in groups.items():
        m = {"config": f"{config} (n={len(rs)})", "workers": workers, "procs": max(r["procs"] for r in rs),
             "load": ", ".join(r["load"].split(" -> ")[0].split("/")[0] for r in rs) + " (1-min at start)"}
        for k in ("startup_s", "before_first_step_s", "epoch1_ips", "steady_ips", "cpu_ms_per_img",
                  "worker_cpu_ms_per_img", "peak_rss_mb", "pss_mb"):
            m[k] = _median([r.get(k) for r in rs])
        out.append(m)
    return out


def print_breakdown(r: dict) -> None:
    """Where the CPU went in the steady epochs (end of epoch 1 to end of the last one,
    checkpoint saves included), per process kind, in cores busy on average."""
    if not r.get("steady_cpu_by_process") or not r.get("steady_wall_s"):
        return
    wall = r["steady_wall_s"]
    parts = [f"{label} {cpu / wall:.2f}" for label, cpu in r["steady_cpu_by_process"] if cpu / wall >= 0.005]
    total = sum(cpu for _, cpu in r["steady_cpu_by_process"]) / wall
    print(f"#   steady-state CPU, cores busy ({wall:.0f}s wall; total {total:.2f}; the benchmark's sampler "
          f"{r['sampler_cpu_s']:.1f} CPU s over the whole run): " + ", ".join(parts), flush=True)
    if r.get("peak_rss_by_process"):
        print("#   RSS at peak, MB (processes): " + ", ".join(
            f"{label} {rss / 2**20:.0f} ({n})" for label, rss, n in r["peak_rss_by_process"]), flush=True)


def table(rows: list[dict], plain: dict | None) -> str:
    """``plain``: the plain run's medians (steady_ips, cpu_ms_per_img) the ratios refer to."""
    head = ("config", "workers", "startup s", "pre-step s", "epoch-1 img/s", "steady img/s", "vs plain",
            "CPU ms/img all", "CPU ms/img workers", "CPU-eff. vs plain", "peak RSS MB", "PSS MB", "procs",
            "load avg (start -> end)")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]

    def f(v, p=1):
        return "-" if v is None else f"{v:.{p}f}"

    for r in rows:
        ratio = f"{r['steady_ips'] / plain['steady_ips']:.2f}x" if plain else "-"
        eff = (f"{plain['cpu_ms_per_img'] / r['cpu_ms_per_img']:.2f}x"
               if plain and plain.get("cpu_ms_per_img") and r.get("cpu_ms_per_img") else "-")
        lines.append("| " + " | ".join([
            r["config"], str(r["workers"]), f(r["startup_s"]), f(r["before_first_step_s"]), f(r["epoch1_ips"]),
            f(r["steady_ips"]), ratio, f(r.get("cpu_ms_per_img")), f(r.get("worker_cpu_ms_per_img")), eff,
            f(r["peak_rss_mb"], 0), f(r.get("pss_mb"), 0), str(r["procs"]), r["load"],
        ]) + " |")
    return "\n".join(lines)


def report(rows: list[dict]) -> None:
    plain_rows = [r for r in rows if r["config"] == "plain keras fit"]
    plain = {k: _median([r.get(k) for r in plain_rows]) for k in ("steady_ips", "cpu_ms_per_img")} \
        if plain_rows else None
    print("\nevery run:\n")
    print(table(rows, plain))
    print("\nmedian per configuration:\n")
    print(table(summarize(rows), plain))
    if plain:
        print(f"\nvs plain = steady img/s / median of the {len(plain_rows)} plain runs ({plain['steady_ips']:.1f} "
              f"img/s); CPU-eff. = plain CPU ms/img ({plain['cpu_ms_per_img']:.1f}) / this run's (all processes)")


def wait_for_load(limit: float | None, max_wait: float) -> None:
    """Wait (up to ``max_wait`` s) until the 1-minute load average is below ``limit``."""
    if limit is None:
        return
    t0 = time.time()
    while os.getloadavg()[0] >= limit and time.time() - t0 < max_wait:
        time.sleep(10)
    print(f"# load {loadavg()} after waiting {time.time() - t0:.0f}s for < {limit}", flush=True)


def idle_cluster(seconds: float) -> str:
    """CPU and RSS of the started Ray cluster while nothing runs on it (this process sleeps)."""
    s = Sampler(tree=True)
    rss, c0, n = s.sample()
    time.sleep(seconds)
    c1 = s.cpu_now()
    return f"{n} processes, {rss / 2**20:.0f} MB RSS, {(c1 - c0) / seconds:.3f} cores busy (over {seconds:.0f}s)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1500, help="training images in total (split over --classes)")
    p.add_argument("--classes", type=int, default=3)
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--batch-size", type=int, default=32, help="global batch")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--workers", default="1,2", help="imgrec worker counts, comma-separated")
    p.add_argument("--variants", default="",
                   help=f"comma-separated of {sorted(VARIANTS)} (name@W: with W workers only), or 'all'")
    p.add_argument("--variant-workers", default="1", help="worker counts the variants run with")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat the sequence (plain, imgrec runs, variants); a last plain run closes it")
    p.add_argument("--wait-load", type=float, help="before each run wait until the 1-min load average is below this")
    p.add_argument("--wait-max", type=float, default=600, help="longest wait for --wait-load, seconds")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--table-from", nargs="+", metavar="JSON", help="only print the tables of earlier --json files")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (data, runs)")
    args = p.parse_args()
    if args.table_from:
        rows = [r for path in args.table_from for r in json.load(open(path))["rows"]]
        for r in rows:  # files from before the worker-only column: the workers' share of the steady CPU
            parts = r.get("steady_cpu_by_process") or []
            total = sum(c for _, c in parts)
            share = sum(c for label, c in parts if label == "ray::RayTrainWorker") / total if total else None
            r.setdefault("worker_cpu_ms_per_img", r["cpu_ms_per_img"] if r["config"] == "plain keras fit" else
                         (r["cpu_ms_per_img"] * share if share and r.get("cpu_ms_per_img") else None))
        report(rows)
        return
    default_workers = [int(v) for v in args.variant_workers.split(",") if v]
    variants: list[tuple[str, int]] = []  # (name, workers); "name@2" picks the worker count
    for item in (sorted(VARIANTS) if args.variants == "all" else [v for v in args.variants.split(",") if v]):
        name, _, w = item.partition("@")
        if name not in VARIANTS:
            p.error(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
        variants += [(name, int(w))] if w else [(name, d) for d in default_workers]

    import ray

    from imgrec import synth
    from imgrec.config import DataConfig, DecodeConfig
    from imgrec.data import load_dataset, take_arrays

    t = time.time()
    import keras  # noqa: F401  (timed here: each Ray worker pays this inside its startup, plain fit does not)

    import_s = time.time() - t
    print(f"# train_throughput {dt.datetime.now():%Y-%m-%d %H:%M} on {platform.node()}: "
          f"{psutil.cpu_count(logical=False)} cores / {psutil.cpu_count()} CPUs, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GB; load {loadavg()}", flush=True)
    tmp = tempfile.mkdtemp(prefix="imgrec-bench-")
    rows: list[dict] = []
    try:
        t = time.time()
        size = (args.image_size, args.image_size)
        per_class = args.n // args.classes
        synth.make_dataset(os.path.join(tmp, "data"), classes=args.classes, per_class=per_class,
                           test_per_class=0, image_size=size)
        print(f"# synth: {per_class * args.classes} JPEGs {size} in {time.time() - t:.1f}s", flush=True)

        ray.init(num_cpus=6, include_dashboard=False)
        t = time.time()
        data = load_dataset(DataConfig(uri=os.path.join(tmp, "data"), validation_split=0.0,
                                       decode=DecodeConfig(image_size=size)))
        x, y, _ = take_arrays(data.train)
        print(f"# data plane: {data.summary()} decoded + materialized in {time.time() - t:.1f}s; "
              f"arrays {x.shape} {x.nbytes / 2**20:.0f} MB; other ray processes on the machine: "
              f"{ray_processes_outside_tree()}", flush=True)
        print(f"# importing keras/TF took {import_s:.1f}s here; idle Ray cluster: {idle_cluster(20)}", flush=True)

        def plain():
            if args.no_plain:
                return
            wait_for_load(args.wait_load, args.wait_max)
            r = run_plain(x, y, len(data.class_names), args)
            rows.append(r)
            print(f"# {r['config']}: {r['steady_ips']:.1f} img/s steady, epochs {[round(v) for v in r['epoch_ips']]}, "
                  f"load {r['load']}", flush=True)

        runs_dir = os.path.join(tmp, "runs")
        for round_ in range(args.rounds):
            if args.rounds > 1:
                print(f"# round {round_ + 1}/{args.rounds}", flush=True)
            plain()
            for w in [int(v) for v in args.workers.split(",") if v]:
                wait_for_load(args.wait_load, args.wait_max)
                r = run_imgrec(data, args, w, "imgrec", runs_dir)
                rows.append(r)
                print(f"# imgrec w={w}: {r['steady_ips']:.1f} img/s steady, epochs "
                      f"{[round(v) for v in r['epoch_ips']]}, load {r['load']}", flush=True)
                print_breakdown(r)
            for name, w in variants:
                desc, options, hooks = variant_loop(name, w)
                wait_for_load(args.wait_load, args.wait_max)
                r = run_imgrec(data, args, w, f"variant {name}", runs_dir, options=options, hooks=hooks)
                r["description"] = desc
                rows.append(r)
                print(f"# variant {name} w={w} ({desc}): {r['steady_ips']:.1f} img/s steady, "
                      f"epochs {[round(v) for v in r['epoch_ips']]}, load {r['load']}", flush=True)
                print_breakdown(r)
        plain()  # and once more at the end: the machine may be shared, its load drifts
    finally:
        ray.shutdown() if ray.is_initialized() else None
        if args.keep:
            print(f"# kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "date": dt.datetime.now().isoformat(timespec="seconds"),
                       "machine": f"{psutil.cpu_count(logical=False)} cores, "
                                  f"{psutil.virtual_memory().total / 2**30:.0f} GB", "rows": rows}, fh, indent=1)
    report(rows)

if __name__ == "__main__":
    sys.exit(main())
