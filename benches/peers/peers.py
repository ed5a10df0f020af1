"""The same BLOOP step in PyTorch eager, torch.compile and JAX jit, written from the formulas
(fp32, per-leaf lists as the frameworks' tree_map runs them), timed like our bench, and printed
side by side with our Vulkan numbers.

python3 peers.py --layouts layouts.json --ours throughput.json --out DIR [--reps 50] [--device cuda]
"""
import argparse
import json
import statistics
import sys
import time

EMA, LAMBDA, EPS = 0.01, 0.5, 1e-7


def workloads(layouts_path, max_log2):
    sizes = [(f"leaf 2^{k}", [1 << k]) for k in range(20, max_log2 + 1, 2)]
    with open(layouts_path) as f:
        layouts = json.load(f)
    return sizes + [(name, [n for _, n in leaves]) for name, leaves in layouts.items()]


def bloop_step(dot, gm, ga, e):
    """One BLOOP step over lists of leaves (the reference code's operator sequence)."""
    e = [ei + EMA * (g - ei) for ei, g in zip(e, gm)]
    r = sum(dot(ei, a) for ei, a in zip(e, ga)) / (sum(dot(ei, ei) for ei in e) + EPS)
    return [g + LAMBDA * (a - r * ei) for g, a, ei in zip(gm, ga, e)], e


def time_torch(fn, args, reps, device):
    import torch

    for _ in range(5):
        fn(*args)
    times = []
    for _ in range(reps):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn(*args)
            times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_peers(lengths, reps, device):
    import torch

    g = torch.Generator(device=device).manual_seed(0)
    make = lambda: [torch.rand(n, generator=g, device=device, dtype=torch.float32) * 2 - 1 for n in lengths]
    gm, ga, e = make(), make(), [torch.zeros(n, device=device) for n in lengths]
    dot = lambda x, y: torch.dot(x, y)
    eager = lambda gm, ga, e: bloop_step(dot, gm, ga, e)
    compiled = torch.compile(eager, dynamic=False)
    out = {"torch eager": time_torch(eager, (gm, ga, e), reps, device)}
    out["torch.compile"] = time_torch(compiled, (gm, ga, e), reps, device)
    return out


def jax_peer(lengths, reps):
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.PRNGKey(0), 2 * len(lengths))
    gm = [jax.random.uniform(k, (n,), jnp.float32, -1, 1) for k, n in zip(keys[::2], lengths)]
    ga = [jax.random.uniform(k, (n,), jnp.float32, -1, 1) for k, n in zip(keys[1::2], lengths)]
    e = [jnp.zeros(n, jnp.float32) for n in lengths]
    step = jax.jit(lambda gm, ga, e: bloop_step(jnp.vdot, gm, ga, e))
    for _ in range(5):
        jax.block_until_ready(step(gm, ga, e))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(step(gm, ga, e))
        times.append((time.perf_counter() - t) * 1e3)
    return {"jax jit": statistics.median(times)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--layouts", required=True)
    p.add_argument("--ours", required=True, help="throughput.json from our bench")
    p.add_argument("--out", default=".")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--max-log2", type=int, default=26)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()

    with open(args.ours) as f:
        ours = json.load(f)
    rows = []
    for name, lengths in workloads(args.layouts, args.max_log2):
        peers = {}
        for label, run in [("torch", lambda: torch_peers(lengths, args.reps, args.device)), ("jax", lambda: jax_peer(lengths, args.reps))]:
            try:
                peers.update(run())
            except Exception as e:  # a missing framework must not hide the others
                print(f"{name}: {label} failed: {e}", file=sys.stderr)
        mine = {r["path"]: r["median_ms"] for r in ours if r["layout"] == name and r["method"] == "bloop"}
        rows.append({"layout": name, "elements": sum(lengths), "leaves": len(lengths), **{f"bloop {k}": v for k, v in mine.items()}, **peers})
        print(json.dumps(rows[-1]), flush=True)

    columns = ["bloop pool", "bloop per-leaf", "bloop pages", "torch eager", "torch.compile", "jax jit"]
    lines = [f"{'layout':<16} {'elements':>11} " + " ".join(f"{c:>15}" for c in columns) + f" {'best peer / ours':>17}"]
    for r in rows:
        peer = min((r[c] for c in columns[3:] if c in r), default=float("nan"))
        ours_ms = r.get("bloop pool", float("nan"))
        cells = " ".join(f"{r[c]:>15.4f}" if c in r else f"{'-':>15}" for c in columns)
        lines.append(f"{r['layout']:<16} {r['elements']:>11} {cells} {peer / ours_ms:>17.2f}")
    table = "\n".join(["median ms per BLOOP step (fp32), lower is better"] + lines)
    print(table)
    with open(f"{args.out}/peers.json", "w") as f:
        json.dump(rows, f, indent=1)
    with open(f"{args.out}/peers.txt", "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
