"""Shared by the PyTorch CPU peers (peer-torch.py, peer-torch-prefill.py): reading the raw inputs a
bench writes, and timing one computation per thread count the same way for every peer."""
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # torch.set_num_threads alone still bounds torch's own pool
    threadpool_limits = None


def read_args():
    """The peer's command line, `<dir> [--threads 1,2] [--reps 5]`: the inputs' folder, its meta.json,
    the thread counts and the timed calls per thread count."""
    d = sys.argv[1]
    arg = lambda name, default: sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default
    threads = [int(t) for t in arg("--threads", "1,2").split(",")]
    reps = int(arg("--reps", "5"))
    with open(os.path.join(d, "meta.json")) as f:
        return d, json.load(f), threads, reps


def load(d, name, dtype):
    return torch.from_numpy(np.fromfile(os.path.join(d, name), dtype=dtype))


def print_medians(fn, threads, reps, warmup):
    """Median ms of `reps` calls of fn per thread count, after `warmup` untimed calls (the first
    calls after a thread-count change are slow); prints {"ms": {"<threads>": median_ms, ...}}."""
    ms = {}
    for n in threads:
        limits = threadpool_limits(limits=n) if threadpool_limits else None
        torch.set_num_threads(n)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        ms[str(n)] = statistics.median(times)
        if limits:
            limits.unregister()
    print(json.dumps({"ms": ms}))
