"""GPU training throughput: the engine on CuPy against PyTorch CUDA and the engine on the CPU.

Issue 6's GPU workload: an MLP 4096-4096-4096-10 (two relu hidden layers of
4096 on 4096 inputs, 10 classes), batch 1024, float32, SGD, softmax
cross-entropy. Samples per second of training (shuffle, forward, loss,
backward, update), measured in the same run:

- engine on CuPy: the public ``backprop.train`` call with ``device="gpu"``
  (per-epoch diagnostics included), data already on the device;
- PyTorch CUDA: the same network and loop (``loss.item()`` each step, as the
  engine reads its loss each step), data already on the device;
- engine on numpy: the same ``backprop.train`` call on this host's CPUs.

Targets: CuPy >= 0.8x PyTorch CUDA and >= 10x the CPU figure; after a few
steps from the same initial weights on the same batches, the CuPy weights
match the numpy backend's within float32 tolerance.

Without CuPy or a CUDA device the script prints why and exits 0, so that
``make bench`` runs everywhere. On a GPU host, in one call:

    python benchmarks/gpu.py --json "$OUT/gpu.json" && cp benchmarks/README.md benchmarks/history.csv "$OUT/"

Options: ``--steps`` (timed batches per peer, default 40), ``--cpu-steps``
(default 3), ``--no-readme`` (record nothing in benchmarks/history.csv and README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import backprop  # noqa: E402
from benchmarks._report import append_row, machine, print_ratio  # noqa: E402

INPUT, HIDDEN, CLASSES, BATCH = 4096, 4096, 10, 1024
LEARNING_RATE = 0.01
SPEC = {"layers": [{"type": "dense", "units": HIDDEN, "activation": "relu"},
                   {"type": "dense", "units": HIDDEN, "activation": "relu"},
                   {"type": "dense", "units": CLASSES}]}
# Same initial weights, same batches: after this many SGD steps the devices must agree.
AGREEMENT_STEPS = 3
AGREEMENT_RTOL = 1e-3  # of the weight updates, relative to the largest update


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed batches per GPU peer")
    parser.add_argument("--cpu-steps", type=int, default=3, help="timed batches of the CPU figure")
    parser.add_argument("--no-readme", action="store_true", help="record nothing in benchmarks/history.csv")
    parser.add_argument("--json", help="also write the results to this file")
    return parser.parse_args()


def make_data(steps: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((steps * BATCH, INPUT), dtype=np.float32)
    y = rng.integers(0, CLASSES, size=steps * BATCH)
    return X, y


def train_settings(epochs: int) -> dict[str, Any]:
    return {"epochs": epochs, "batch_size": BATCH, "optimizer": "sgd", "learning_rate": LEARNING_RATE,
            "loss": "cross_entropy", "validation_split": 0.0, "early_stopping_patience": 0, "seed": 0}


def engine_rate(device: str, X: Any, y: Any, synchronize: Any) -> float:
    """Samples/s of backprop.train on `device` (one warm-up epoch on two batches first)."""
    network = backprop.build(SPEC, input_dim=INPUT, seed=0, device=device)
    backprop.train(network, X[:2 * BATCH], y[:2 * BATCH], **train_settings(1))
    synchronize()
    started = time.perf_counter()
    backprop.train(network, X, y, **train_settings(1))
    synchronize()
    return len(X) / (time.perf_counter() - started)


def torch_rate(X: np.ndarray, y: np.ndarray) -> tuple[float | None, str]:
    """Samples/s of the same network in PyTorch on CUDA, or None with the reason."""
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None, "PyTorch is not installed (pip install -e '.[bench]')"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} sees no CUDA device (a CPU-only build?)"
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 like the engine, not TF32
    device = torch.device("cuda")
    model = torch.nn.Sequential(
        torch.nn.Linear(INPUT, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, CLASSES)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    X_t = torch.from_numpy(X).to(device)
    y_t = torch.from_numpy(y).to(device)

    def epoch(n: int) -> None:
        order = torch.randperm(n, device=device)
        for start in range(0, n, BATCH):
            rows = order[start:start + BATCH]
            loss = torch.nn.functional.cross_entropy(model(X_t[rows]), y_t[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss.item()

    epoch(2 * BATCH)
    torch.cuda.synchronize()
    started = time.perf_counter()
    epoch(len(X))
    torch.cuda.synchronize()
    return len(X) / (time.perf_counter() - started), f"PyTorch {torch.__version__}, {torch.cuda.get_device_name()}"


def agreement(X: np.ndarray, y: np.ndarray) -> float:
    """Train both backends from the same weights on the same batches; return the updates' relative gap."""
    X, y = X[:AGREEMENT_STEPS * BATCH], y[:AGREEMENT_STEPS * BATCH]
    updates = {}
    for device in ("cpu", "gpu"):
        network = backprop.build(SPEC, input_dim=INPUT, seed=0, device=device)
        before = {k: backprop.to_numpy(v).copy() for k, v in network.parameters().items()}
        backprop.train(network, X, y, **train_settings(1))
        updates[device] = {k: backprop.to_numpy(v) - before[k] for k, v in network.parameters().items()}
    gap = 0.0
    for key, cpu_update in updates["cpu"].items():
        scale = float(np.abs(cpu_update).max()) or 1.0
        gap = max(gap, float(np.abs(updates["gpu"][key] - cpu_update).max()) / scale)
    return gap


def main() -> int:
    args = parse_args()
    try:
        cupy = backprop.get_array_module("gpu")
    except backprop.DeviceUnavailable as error:
        print(f"benchmarks/gpu.py: skipped, no GPU here: {error}")
        return 0
    gpu_name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    gpu_name = gpu_name.decode() if isinstance(gpu_name, bytes) else str(gpu_name)
    print(f"GPU: {gpu_name}, CuPy {cupy.__version__}; MLP {INPUT}-{HIDDEN}-{HIDDEN}-{CLASSES}, "
          f"batch {BATCH}, float32, SGD")

    X, y = make_data(args.steps)
    X_device, y_device = cupy.asarray(X), cupy.asarray(y)
    synchronize = cupy.cuda.Device().synchronize
    results: dict[str, Any] = {"gpu": gpu_name, "cupy": cupy.__version__}
    results["engine_cupy"] = engine_rate("gpu", X_device, y_device, synchronize)
    del X_device, y_device
    cupy.get_default_memory_pool().free_all_blocks()
    results["torch_cuda"], torch_note = torch_rate(X, y)
    results["torch_note"] = torch_note
    X_cpu, y_cpu = X[:args.cpu_steps * BATCH], y[:args.cpu_steps * BATCH]
    results["engine_cpu"] = engine_rate("cpu", X_cpu, y_cpu, lambda: None)
    results["agreement_gap"] = agreement(X, y)

    print(f"engine CuPy: {results['engine_cupy']:,.0f} samples/s")
    vs_cpu = print_ratio("engine CuPy", results["engine_cupy"], "engine numpy (this host's CPUs)",
                         results["engine_cpu"], "samples/s")
    vs_torch = None
    if results["torch_cuda"] is not None:
        vs_torch = print_ratio("engine CuPy", results["engine_cupy"], "PyTorch CUDA",
                               results["torch_cuda"], "samples/s")
    else:
        print(f"PyTorch CUDA: not measured: {torch_note}")
    agrees = results["agreement_gap"] <= AGREEMENT_RTOL
    print(f"agreement with numpy after {AGREEMENT_STEPS} SGD steps: largest update gap "
          f"{results['agreement_gap']:.2e} of the update (<= {AGREEMENT_RTOL:g}: {'ok' if agrees else 'FAILED'})")
    results.update(vs_cpu=vs_cpu, vs_torch=vs_torch, agrees=agrees)

    if not args.no_readme:
        where = machine(f"{gpu_name}, CuPy {cupy.__version__}")
        section = "GPU training (benchmarks/gpu.py)"
        if vs_torch is not None:
            append_row(section, "engine CuPy, samples/s", f"{results['engine_cupy']:,.0f}", "PyTorch CUDA",
                       f"{results['torch_cuda']:,.0f}", vs_torch, ">= 0.8x", where)
        append_row(section, "engine CuPy, samples/s", f"{results['engine_cupy']:,.0f}",
                   "engine numpy, same host", f"{results['engine_cpu']:,.0f}", vs_cpu, ">= 10x", where)
        append_row(section, "update gap vs numpy", f"{results['agreement_gap']:.1e}", "tolerance",
                   f"{AGREEMENT_RTOL:g}", None, "<= tolerance", where)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0 if agrees else 1


if __name__ == "__main__":
    sys.exit(main())
