"""Per-call cost of a dense decode call from Python (issue 4: goal < 10 us above the kernel).

    python bench/python_overhead.py [--iters N] [--s-k 4096] [--json out.json]

Shape: b=1, s_q=1, h_q=128, h_kv=1, d_qk=576, page 64, s_k tokens (the dense-decode-latency
suite's first config). On a GPU, for each way of calling it:

    kernel   GPU time per call: CUDA-graph replays of 20 captured calls (plan update, attention,
             combine), timed with CUDA events
    eager    wall time of one eager call followed by a synchronize, minus nothing
    over     eager - kernel: what the Python call adds to the kernel time
    host     CPU time of the call alone (no synchronize): what a CPU-bound loop pays

Ways: flash_mla step (get_mla_metadata + first call: plans), flash_mla layer (metadata already
planned), native out= (DecodePlan, preallocated outputs), native step (plan.update + native
out=), and the raw extension call. Without a GPU the same calls run with batch 0 on the CPU
(everything but the kernel: argument conversion, validation, dispatch) and only host is shown.
"""

import argparse
import json
import statistics
import sys
import time

import torch

import openmla
import openmla.flash_mla as flash_mla


def make_inputs(device, b, s_k, h_q=128, d=576, page=64):
    n_pages = max(1, b * s_k // page)
    q = torch.randn(b, 1, h_q, d, dtype=torch.bfloat16, device=device) / 10
    k = torch.randn(n_pages, page, 1, d, dtype=torch.bfloat16, device=device) / 10
    bt = torch.arange(n_pages, dtype=torch.int32, device=device).view(max(b, 1), -1)[:b]
    cs = torch.full((b,), s_k, dtype=torch.int32, device=device)
    return q, k, bt, cs


def ways(q, k, bt, cs):
    """name -> zero-argument callable doing one dense decode call."""
    device = q.device
    b, h_q = q.shape[0], q.shape[2]
    meta, _ = flash_mla.get_mla_metadata()
    flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None)  # plans
    plan = openmla.DecodePlan(device, batch=b, h_q=h_q)
    plan.update(cs)
    out = torch.empty(b, 1, h_q, 512, dtype=torch.bfloat16, device=device)
    lse = torch.empty(b, h_q, 1, device=device)
    current_stream = openmla._arrays.current_stream
    c_plan = plan._plan

    def fm_step():
        m, _ = flash_mla.get_mla_metadata()
        return flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, m, None)

    return {
        "flash_mla step (metadata + call)": fm_step,
        "flash_mla layer (planned metadata)":
            lambda: flash_mla.flash_mla_with_kvcache(q, k, bt, cs, 512, meta, None),
        "native out= (DecodePlan)":
            lambda: openmla.dense_decode(q, k, bt, cs, plan=plan, out=out, lse=lse),
        "native step (update + out=)":
            lambda: (plan.update(cs), openmla.dense_decode(q, k, bt, cs, plan=plan, out=out,
                                                            lse=lse)),
        "raw _C.dense_decode":
            lambda: openmla._C.dense_decode(q, k, bt, cs, out, lse, c_plan, 512, 0.0, False,
                                            current_stream(q)),
    }


def host_us(fn, iters, sync):
    for _ in range(10):
        fn()
    sync()
    samples = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        samples.append((time.perf_counter() - t) / iters * 1e6)
        sync()
    return statistics.median(samples)


def eager_us(fn, iters, sync):
    for _ in range(10):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
        sync()
    return (time.perf_counter() - t) / iters * 1e6


def kernel_us(fn, replays=50, per_graph=20):
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(per_graph):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (replays * per_graph)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--s-k", type=int, default=4096)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.manual_seed(0)
    gpu = torch.cuda.is_available() and openmla.built_with_cuda()
    device = "cuda" if gpu else "cpu"
    b = 1 if gpu else 0
    q, k, bt, cs = make_inputs(device, b, args.s_k)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    rows = []
    for name, fn in ways(q, k, bt, cs).items():
        row = {"way": name, "host_us": host_us(fn, args.iters, sync)}
        if gpu:
            row["kernel_us"] = kernel_us(fn)
            row["eager_us"] = eager_us(fn, args.iters, sync)
            row["over_us"] = row["eager_us"] - row["kernel_us"]
        rows.append(row)
        flash_mla.release_captured_plans()
    what = (f"{torch.cuda.get_device_name()} b=1" if gpu else "CPU, batch 0 (no kernel)")
    print(f"dense decode per-call cost, {what}, s_q=1 h_q=128 d_qk=576 page 64 s_k={args.s_k}, "
          f"openmla {openmla.__version__}, torch {torch.__version__}")
    cols = ["kernel_us", "eager_us", "over_us", "host_us"] if gpu else ["host_us"]
    print(f"{'way':40s}" + "".join(f"{c[:-3]:>10s}" for c in cols) + "   (us)")
    for r in rows:
        print(f"{r['way']:40s}" + "".join(f"{r[c]:10.1f}" for c in cols))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": what, "s_k": args.s_k, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
