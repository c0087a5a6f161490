"""Benchmark: how the three ways of training scale with the number of workers (issue 15). Prints JSON.

1. ``measured``: per step of a ~1 M-parameter head (softmax 4096 -> 257 on Caltech-256-shaped features, batch
   ``--batch`` per worker), at W workers: dense allreduce (the averaging master at frequency 1), averaging at
   frequency 5 and sharing (default flags). Rank 0's phases per step (compute, encode, exchange/wait, apply), bytes
   sent and received per worker per step, the tree's depth and relay hops. W = 2..64 on the in-process launcher and
   transport (threads); ``--cluster`` adds W = 2, 4, 8 on Spark ``local-cluster`` over gRPC.
2. ``costs``: what the model is built from, measured here: compute per step, codec encode and decode+apply per
   message, the sum of two payloads per byte, and each transport's per-message cost ``alpha + bytes / beta`` (a
   ping-pong between two ranks, least squares over 1 KB .. 8 MB).
3. ``model``: a cost model per step,
      sharing:   c + e + W d(m) + sends(f, W) t(m)                 + 2 D alpha + W f m / beta
      allreduce: c + u + f S s + 2 f t(S)                            + 2 D (alpha + f S / beta)
   (c compute, e encode, d decode+apply of a message of m bytes, t(x) the transport's CPU per message of x bytes,
   S the allreduce payload, s summing per byte, D the tree's depth at fan-out f; the network terms are zero on one
   machine, where W ranks share ``cores``: predicted = max(per-rank time, W x per-rank CPU / cores)). Checked
   against every measured point (error reported); then predicted for 8..128 workers on 1 and 10 Gbit/s links
   (alpha 50 us), a 1 M and a 25 M-parameter model, at the best fan-out of 2, 4, 8, 16, 32.
   Scaling efficiency = c / step time (1.0: as fast per step as one worker alone).

    python bench/scaling.py --out bench/results/scaling-2026-12-05.json --plot bench/results/scaling-2026-12-05.png
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sharing import _Steps, caltech_like  # noqa: E402 - the same Caltech-256-shaped table, the same step recorder

DIM, CLASSES = 4096, 257
FANOUTS = (2, 4, 8, 16, 32)
LINKS = {"1 Gbit/s": 125e6, "10 Gbit/s": 1.25e9}
LINK_ALPHA = 50e-6


# ------------------------------------------------------------------------------------------------- measured
def measure(df, workers: int, setup: str, args, launcher, launcher_name: str) -> dict:
    from sparkdl.config import AveragingConfig, HeadConfig, OptimizerConfig, RunConfig, SharingConfig, TrainConfig
    from sparkdl.collective import tree
    from sparkdl.model import build_head
    from sparkdl.train.driver import build_master

    algorithm = {"dense": AveragingConfig(frequency=1), "averaging-5": AveragingConfig(frequency=5),
                 "sharing": SharingConfig()}[setup]  # fmt: skip
    cfg = TrainConfig(algorithm=algorithm, run=RunConfig(workers=workers, tree_fanout=args.fanout), epochs=1,
                      head=HeadConfig(), batch_size_per_worker=args.batch, seed=1,
                      optimizer=OptimizerConfig(name="nesterov", lr=0.01, momentum=0.9))  # fmt: skip
    steps = _Steps()
    start = time.perf_counter()
    result = build_master(cfg, launcher).fit(df, build_head(cfg.head, DIM, CLASSES, seed=1), CLASSES, listeners=[steps])
    wall = time.perf_counter() - start
    events = steps.events[1:] or steps.events  # the first step builds kernels and buffers
    per_round = 5 if setup == "averaging-5" else 1
    phases = {k: float(np.median([e.phases.get(k, 0.0) for e in events])) / per_round for k in events[0].phases}
    st = result.stats
    n_steps = result.stats["iterations"] * per_round
    out = {"workers": workers, "setup": setup, "launcher": launcher_name, "steps": n_steps, "wall_seconds": round(wall, 2),
           "step_seconds": sum(phases.values()), "phases": {k: round(v, 6) for k, v in phases.items()},
           "bytes_sent_per_worker_per_step": st["bytes_between_workers"] / workers / n_steps,
           "tree_depth": tree.depth(workers, args.fanout), "relay_hops_max": 2 * tree.depth(workers, args.fanout)}  # fmt: skip
    if setup == "sharing":
        w = st["workers"]
        out.update(bytes_received_per_worker_per_step=float(np.mean([x["bytes_received"] for x in w])) / n_steps,
                   encode_seconds_per_step=float(np.mean([x["encode_seconds"] for x in w])) / n_steps,
                   decode_seconds_per_step=float(np.mean([x["decode_seconds"] for x in w])) / n_steps,
                   message_bytes=st["update_bytes"] / workers / n_steps, sent_fraction=st["sent_fraction"],
                   updates_exactly_once=st["updates_exactly_once"])  # fmt: skip
    else:
        out["bytes_received_per_worker_per_step"] = out["bytes_sent_per_worker_per_step"]
        out["allreduce_payload_bytes"] = st["allreduce_payload_bytes"]
    print(json.dumps(out), file=sys.stderr)
    return out


# ---------------------------------------------------------------------------------------------------- costs
def _best(fn, repeats: int = 7) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def compute_costs(params: int, batch: int, density: float) -> dict:
    """One rank's CPU per step for a softmax head of ``params`` parameters (4096-d input), one thread."""
    import torch
    from torch import nn

    from sparkdl.train.exchange.sharing import codec

    torch.set_num_threads(1)
    classes = max(1, params // (DIM + 1))
    model = nn.Linear(DIM, classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x, y = torch.randn(batch, DIM), torch.randint(0, classes, (batch,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()
    length = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    grad = rng.standard_normal(length).astype(np.float32)
    tau = float(np.quantile(np.abs(grad[:200_000]), 1 - density))
    residual, total = grad.copy(), np.zeros(length, np.float32)
    message, _ = codec.encode(residual.copy(), tau)

    def encode():
        residual[:] = grad
        codec.encode(residual, tau, limit=max(1, int(density * length)))

    a, b = np.ones(2 * length, np.float32), np.ones(2 * length, np.float32)
    return {"parameters": length, "compute_s": _best(step), "encode_s": _best(encode),
            "decode_apply_s": _best(lambda: codec.decode(message).add_into(total)), "message_bytes": len(message),
            "sum_s_per_byte": _best(lambda: np.add(a, b, out=a)) / a.nbytes,
            "update_s": _best(lambda: [p.data.copy_(p.data) for p in model.parameters()])}  # fmt: skip


def _ping_pong(ctx, rows, sizes, repeats):
    from sparkdl.transport.base import Kind, UpdateMessage

    out = {}
    peer = 1 - ctx.rank
    for size in sizes:
        payload = b"x" * size
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            if ctx.rank == 0:
                ctx.transport.send(peer, UpdateMessage(Kind.UPDATE, i, 0, ctx.mailbox.next_id(), payload))
            got = []
            while not got:
                got = ctx.transport.receive(ctx.timeout_s)
            if ctx.rank == 1:
                ctx.transport.send(peer, UpdateMessage(Kind.UPDATE, i, 1, ctx.mailbox.next_id(), payload))
            times.append(time.perf_counter() - t0)
        out[size] = float(np.median(times[1:])) / 2
    # rank 0 speaks last: rank 1's closing-barrier message must not reach rank 0 inside its last raw receive
    if ctx.rank == 0:
        ctx.transport.send(peer, UpdateMessage(Kind.UPDATE, -1, 0, ctx.mailbox.next_id(), b""))
    else:
        while not ctx.transport.receive(ctx.timeout_s):
            pass
    return out


def transport_costs(name: str, repeats: int = 15) -> dict:
    """``alpha + bytes / beta`` per message, from half round trips between two ranks on threads."""
    import functools

    from sparkdl.config import TransportConfig
    from sparkdl.launch.local import LocalLauncher

    sizes = [1 << 10, 1 << 14, 1 << 18, 1 << 20, 1 << 22, 1 << 23]
    one_way = LocalLauncher(TransportConfig(name=name)).run(functools.partial(_ping_pong, sizes=sizes, repeats=repeats),
                                                            [[], []])[0]  # fmt: skip
    big, small = sizes[-1], sizes[0]
    beta = (big - sizes[-3]) / max(1e-9, one_way[big] - one_way[sizes[-3]])  # the slope over 1 .. 8 MB
    alpha = max(1e-7, one_way[small] - small / beta)  # what a 1 KB message costs beyond its bytes
    return {"alpha_s": alpha, "beta_bytes_per_s": beta, "one_way_s": {str(k): v for k, v in one_way.items()}}


# ---------------------------------------------------------------------------------------------------- model
def _depth(workers: int, fanout: int) -> int:
    from sparkdl.collective import tree

    return tree.depth(workers, fanout)


def _sends_per_rank(workers: int, fanout: int) -> int:
    """Messages the busiest rank sends per sharing step: its own to each neighbour, every other one to all its
    neighbours but the one it came from."""
    degree = min(fanout, workers - 1) + (1 if workers > fanout + 1 else 0)
    return degree + (workers - 1) * max(0, degree - 1)


SETUPS = ("dense", "averaging-5", "sharing")


def _features(setup: str, workers: int, bytes_per_rank: float, cores: int | None) -> list[float]:
    """The cost model's terms for one step: [1 per setup (3)] + [bytes handled, updates decoded, tree depth], all
    but the depth multiplied by how many ranks share a core (``cores`` None: each rank its own)."""
    share = max(1.0, workers / cores) if cores else 1.0
    onehot = [share * (setup == s) for s in SETUPS]
    decodes = workers if setup == "sharing" else 0
    return onehot + [share * bytes_per_rank, share * decodes, float(_depth(workers, 8))]


def fit_model(measured: list[dict], cores: int) -> dict:
    """Non-negative least squares of the measured step times (in-process points) on ``_features``: a fixed cost per
    step for each setup (compute, encode, optimizer), seconds per byte handled, per update decoded, per tree level."""
    from scipy.optimize import nnls

    pts = [m for m in measured if m["launcher"] == "in-process"]
    a = np.array([_features(m["setup"], m["workers"], m["bytes_sent_per_worker_per_step"] + m["bytes_received_per_worker_per_step"], cores)
                  for m in pts])  # fmt: skip
    y = np.array([m["step_seconds"] for m in pts])
    coef, _ = nnls(a / y[:, None], np.ones(len(y)))  # relative error: small and large steps count alike
    names = [f"fixed_s[{s}]" for s in SETUPS] + ["s_per_byte", "s_per_decode", "s_per_level"]
    return dict(zip(names, (float(c) for c in coef)))


def predict_measured(model: dict, m: dict, cores: int) -> float:
    x = _features(m["setup"], m["workers"], m["bytes_sent_per_worker_per_step"] + m["bytes_received_per_worker_per_step"], cores)
    return float(np.dot(x, list(model.values())))


def model_step(setup: str, workers: int, fanout: int, model: dict, sizes: dict, link: tuple[float, float],
               scale: float = 1.0) -> dict:
    """Predicted seconds per step on a cluster (each rank its own core, a link of (alpha, beta) between machines),
    for the busiest rank at fan-out ``fanout``; ``scale``: parameters / the measured head's (fixed costs and message
    sizes grow with it)."""
    depth = _depth(workers, fanout)
    kids = min(fanout, workers - 1)
    fixed = model[f"fixed_s[{setup}]"] * scale
    if setup == "sharing":
        m = sizes["message_bytes"] * scale
        handled = (_sends_per_rank(workers, fanout) + workers - 1) * m
        cpu = fixed + model["s_per_byte"] * handled + model["s_per_decode"] * workers
        net = 2 * depth * link[0] + _sends_per_rank(workers, fanout) * m / link[1]
    else:
        every = 5 if setup == "averaging-5" else 1
        s_bytes = sizes["payload_bytes"] * scale
        handled = 2 * (kids + 1) * s_bytes / every
        cpu = fixed + model["s_per_byte"] * handled
        net = 2 * depth * (link[0] + kids * s_bytes / link[1]) / every
    cpu += model["s_per_level"] * depth
    step = cpu + net
    compute = sizes["compute_s"] * scale
    return {"step_s": step, "cpu_s": cpu, "network_s": net, "efficiency": min(1.0, compute / step),
            "latency_share": 2 * depth * link[0] / step}


def predictions(model: dict, sizes: dict) -> dict:
    """8..128 workers, 1 and 10 Gbit/s, 1 M and 25 M parameters, best fan-out per point."""
    out = {}
    for label, scale in (("1M", 1.0), ("25M", 25.0)):
        for link_name, beta in LINKS.items():
            rows = []
            for workers in (8, 16, 32, 64, 128):
                row = {"workers": workers}
                for setup in SETUPS:
                    options = {f: model_step(setup, workers, f, model, sizes, (LINK_ALPHA, beta), scale) for f in FANOUTS}
                    best = min(options, key=lambda f: options[f]["step_s"])
                    p = options[best]
                    row[setup] = {"fanout": best, **{k: round(v, 5) for k, v in p.items()},
                                  "step_s_by_fanout": {f: round(o["step_s"], 5) for f, o in options.items()}}  # fmt: skip
                rows.append(row)
            out[f"{label} parameters, {link_name}"] = rows
    return out


def plot(pred: dict, measured: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pred) + 1, figsize=(4 * (len(pred) + 1), 3.6), sharey=True)
    colors = {"dense": "tab:red", "averaging-5": "tab:blue", "sharing": "tab:green"}
    for setup, color in colors.items():
        pts = [m for m in measured if m["setup"] == setup and m["launcher"] == "in-process"]
        axes[0].plot([m["workers"] for m in pts], [m["efficiency"] for m in pts], "o-", color=color, label=setup)
    axes[0].set_title("measured here (2 cores, threads)", fontsize=9)
    for ax, (name, rows) in zip(axes[1:], pred.items()):
        for setup, color in colors.items():
            ax.plot([r["workers"] for r in rows], [r[setup]["efficiency"] for r in rows], "o-", color=color, label=setup)
        ax.set_title(f"model: {name}", fontsize=9)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("workers")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("scaling efficiency (compute / step time)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=lambda v: [int(x) for x in v.split(",")], default=[2, 4, 8, 16, 32, 64])
    ap.add_argument("--cluster", type=lambda v: [int(x) for x in v.split(",")], default=[],
                    help="also measure these worker counts on Spark local-cluster (e.g. 2,4,8)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--fanout", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--workdir")
    ap.add_argument("--out")
    ap.add_argument("--plot")
    ap.add_argument("--measured-from", help="model the measured rows of an earlier run (its stderr JSON lines)")
    args = ap.parse_args(argv)

    from sparkdl.config import SessionConfig
    from sparkdl.launch.local import LocalLauncher
    from sparkdl.session import build_session

    workdir = args.workdir or tempfile.mkdtemp(prefix="bench-scaling-")
    table = None if args.measured_from else caltech_like(workdir, per_class=args.per_class)
    report = {"benchmark": "scaling", "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                  "platform": platform.platform()},
              "config": {"batch_per_worker": args.batch, "fanout": args.fanout, "head": f"softmax {DIM} -> {CLASSES}"}}  # fmt: skip
    measured = []
    if args.measured_from:  # the measured rows of an earlier run (the JSON lines it printed on stderr)
        with open(args.measured_from) as f:
            measured = [json.loads(line) for line in f if line.startswith('{"workers"')]
        args.workers, args.cluster = [], []
    else:
        spark = build_session(SessionConfig(master="local[2]", ui_enabled=False, app_name="bench-scaling"))
        df = spark.read.parquet(table).cache()
        df.count()
    for workers in args.workers:
        for setup in ("dense", "averaging-5", "sharing"):
            measured.append(measure(df, workers, setup, args, LocalLauncher(), "in-process"))
    if not args.measured_from:
        spark.stop()
    for workers in args.cluster:
        spark = build_session(SessionConfig(master=f"local-cluster[{workers},1,1536]", ui_enabled=False,
                                            app_name="bench-scaling", driver_memory="2g"))  # fmt: skip
        df = spark.read.parquet(table).cache()
        df.count()
        for setup in ("dense", "averaging-5", "sharing"):
            measured.append(measure(df, workers, setup, args, None, "local-cluster"))
        spark.stop()

    share = [m for m in measured if m["setup"] == "sharing"]
    density = float(np.median([m["sent_fraction"] for m in share]))
    costs = compute_costs(DIM * CLASSES + CLASSES, args.batch, density)
    costs["payload_bytes"] = int(np.median([m["allreduce_payload_bytes"] for m in measured if m["setup"] == "dense"]))
    costs["message_bytes"] = int(np.median([m["message_bytes"] for m in share]))
    transports = {"inproc": transport_costs("inproc"), "grpc": transport_costs("grpc")}
    report["costs"] = {**costs, "sent_fraction": density, "transports": transports}
    cores = os.cpu_count() or 1
    model = fit_model(measured, cores)
    report["model"] = {"terms": model, "fitted_on": "the in-process points; the local-cluster points are held out",
                       "cores": cores}  # fmt: skip
    for m in measured:
        m["predicted_step_seconds"] = round(predict_measured(model, m, cores), 6)
        m["model_error"] = round(m["predicted_step_seconds"] / m["step_seconds"] - 1, 3)
        m["efficiency"] = round(costs["compute_s"] / m["step_seconds"], 3)
    report["measured"] = measured
    for launcher in ("in-process", "local-cluster"):
        errors = [abs(m["model_error"]) for m in measured if m["launcher"] == launcher]
        if errors:
            report["model"][f"error_{launcher}"] = {"median_abs": round(float(np.median(errors)), 3), "max_abs": round(max(errors), 3)}
    report["predicted"] = predictions(model, costs)
    if args.plot:
        plot(report["predicted"], measured, args.plot)
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
