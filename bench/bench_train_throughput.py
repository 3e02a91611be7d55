"""Training-step throughput: the reference EGGC model and optimizer against the fused ones, same batch.

Batch: the first 64 crystals of ../shared/data/jarvis_dft3d_2021_tiny.jsonl, k-NN graphs built by
`crys_pipeline.graphs.knn_graph`, their formation energies as targets and a fixed seeded random
text vector per crystal (the text path is three Linear layers; it does not change the comparison).
Both models are built from the same seed: the new model by `crys_pipeline.models.build_model`, the
reference by swapping every EGGC for the reference code of tests/train_reference.py (the layer, line
graph and encoder forward as they were before the fused kernels, verbatim; the tests compare against
the same copy) with the same weights.

- Reference: that model + `torch.optim.AdamW(param_groups(model))` (PyTorch's default implementation).
- Fused: the fused model + `crys_pipeline.train.make_optimizer` (fused AdamW on one flat buffer per
  parameter group, `crys_pipeline.train.optim.FlatAdamW`), eager (train.compile false).
- Compiled: the same with the edge-gated convolutions through `torch.compile` (train.compile true);
  its one-off compile happens in the warm-up step and is not timed.

The process lets glibc keep freed memory (`crys_pipeline.devices.keep_cpu_memory`), as `crys-pipeline
train` does on a CPU: the comparison is of the model code, under the trainer's allocator settings, for
every path alike. One more comparison runs each path at the offline default in a fresh process of its
own, as its trainer runs it: the reference under glibc's defaults, the fused path with kept memory
(processes alternating, three each).

Measured, in one run: aten operations per step (forward, backward, optimizer; every aten event
torch.profiler records, nested ones included, and the top-level ones alone), ms per step on the CPU
at width 16 (paper depth 4 + 4) and at the offline default (config.yaml's `model` block), crystals/s
at paper width on CUDA when present, and whether loss and gradients agree to float32 tolerance. Timed
rounds alternate the two paths; medians are reported.

Last two lines: the op ratio of the fused eager path, then (last line) of the compiled path:
`train kernels: X.XXx fewer forward+backward ops (same loss: yes|no)`.

Usage: .venv/bin/python bench/bench_train_throughput.py [--threads 2] [--repeats 5] [--batch-file F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from train_reference import ROOT, TINY, WIDTH_16, loss_of, new_pair, real_batch, same_numbers

from crys_pipeline.devices import keep_cpu_memory
from crys_pipeline.settings import ModelSettings, make

#: The paper's model: the defaults of ModelSettings.
PAPER = ModelSettings()


def count_ops(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> dict[str, tuple[int, int]]:
    """(all aten events, top-level aten events) of forward, backward and optimizer step (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    def measure(fn: Callable[[], object]) -> tuple[tuple[int, int], object]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn()
        events = [e for e in prof.events() if e.name.startswith("aten::")]
        top = [e for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")]
        return (len(events), len(top)), out

    step(model, optimizer, batch)
    optimizer.zero_grad(set_to_none=True)
    forward, loss = measure(lambda: loss_of(model, batch))
    backward, _ = measure(loss.backward)
    opt, _ = measure(optimizer.step)
    return {"forward": forward, "backward": backward, "optimizer": opt}


def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    """One training step as the trainer runs it."""
    loss = loss_of(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def median_seconds(pairs: dict[str, tuple], batch: Batch, repeats: int) -> dict[str, float]:
    """Median wall seconds per step of each (model, optimizer), interleaved round by round."""
    sync = torch.cuda.synchronize if batch.z.is_cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in pairs}
    for round_no in range(repeats + 1):
        for name, (model, optimizer) in pairs.items():
            sync()
            start = time.perf_counter()
            step(model, optimizer, batch)
            sync()
            if round_no:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def timed(batch: Batch, repeats: int, label: str, settings: ModelSettings) -> dict[str, float]:
    """Print ms per step (crystals/s on CUDA) of the three paths at one size; returns reference / path."""
    new, ref = new_pair(batch, settings)
    compiled, _ = new_pair(batch, settings, True)
    sec = median_seconds({"reference": ref, "fused": new, "compiled": compiled}, batch, repeats)
    ratios = {k: sec["reference"] / v for k, v in sec.items() if k != "reference"}
    if batch.z.is_cuda:
        shown = ", ".join(f"{k} {batch.num_graphs / v:.0f} crystals/s" for k, v in sec.items())
    else:
        shown = ", ".join(f"{k} {1e3 * v:.1f} ms/step" for k, v in sec.items())
    print(f"{label}: {shown} (fused {ratios['fused']:.2f}x, compiled {ratios['compiled']:.2f}x)", flush=True)
    return ratios


def offline_default_model() -> ModelSettings:
    """The model of config.yaml's `model` block (the offline default)."""
    import yaml

    return make(ModelSettings, yaml.safe_load((ROOT / "config.yaml").read_text())["model"])


def one_path(path: str, batch_file: Path, repeats: int) -> dict[str, float]:
    """Median seconds per step of one path at the offline default in this process, under its trainer's allocator.

    The reference runs under glibc's defaults (the trainer before this work), the fused path after
    ``keep_cpu_memory`` (``crys-pipeline train`` on a CPU).
    """
    if path == "fused":
        keep_cpu_memory()
    batch = real_batch(64, batch_file)
    new, ref = new_pair(batch, offline_default_model())
    return median_seconds({path: new if path == "fused" else ref}, batch, repeats)


def as_trainers_run(args: argparse.Namespace, rounds: int = 3) -> float:
    """Print ms per step of reference and fused at the offline default, each in a fresh process of its own
    (``one_path``), the processes alternating; returns reference / fused of the medians."""
    times: dict[str, list[float]] = {"reference": [], "fused": []}
    for _ in range(rounds):
        for path, seconds in times.items():
            child = subprocess.run([sys.executable, __file__, "--one-path", path, "--threads", str(args.threads),
                                    "--repeats", str(args.repeats), "--batch-file", str(args.batch_file)],
                                   capture_output=True, text=True, check=True)
            seconds.append(json.loads(child.stdout.strip().splitlines()[-1])[path])
    ref, fused = (statistics.median(times[k]) for k in ("reference", "fused"))
    print(f"CPU offline default, each path in its own process as its trainer runs it (reference: glibc defaults; "
          f"fused: keep_cpu_memory), {rounds} processes each: reference {1e3 * ref:.1f} ms/step, "
          f"fused {1e3 * fused:.1f} ms/step ({ref / fused:.2f}x)", flush=True)
    return ref / fused


def main() -> None:
    """Measure and print; the last line is the kernel-count ratio and the numerical check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per path (after one warm-up)")
    parser.add_argument("--batch-file", type=Path, default=TINY, help="JSON lines of JARVIS records")
    parser.add_argument("--one-path", choices=("reference", "fused"), help=argparse.SUPPRESS)  # as_trainers_run
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one_path:
        print(json.dumps(one_path(args.one_path, args.batch_file, args.repeats)))
        return
    kept = keep_cpu_memory()  # as `crys-pipeline train` does on a CPU; applies to every path alike
    batch = real_batch(64, args.batch_file)
    print(f"batch: {batch.num_graphs} crystals, {batch.num_nodes} atoms, {batch.edge_index.shape[1]} bonds; "
          f"torch {torch.__version__}, {args.threads} threads, glibc keeps freed memory: {kept}")
    checks = {name: same_numbers(batch, name == "compiled") for name in ("fused", "compiled")}
    for name, (_, detail) in checks.items():
        print(f"numerics {name} vs reference (width 16, 4 + 4 layers, float32): {detail}", flush=True)
    ops = {}
    for name in ("fused", "compiled"):
        new, ref = new_pair(batch, WIDTH_16, name == "compiled")
        ops.setdefault("reference", count_ops(*ref, batch))
        ops[name] = count_ops(*new, batch)
    for name, parts in ops.items():
        print(f"aten ops per step, {name}: " + ", ".join(f"{k} {v[0]} ({v[1]} top-level)" for k, v in parts.items()))
    fb = {name: parts["forward"][0] + parts["backward"][0] for name, parts in ops.items()}
    top = {name: parts["forward"][1] + parts["backward"][1] for name, parts in ops.items()}
    for name in ("fused", "compiled"):
        print(f"forward+backward, {name}: {fb['reference']} -> {fb[name]} aten ops "
              f"({fb['reference'] / fb[name]:.2f}x), top-level {top['reference']} -> {top[name]} "
              f"({top['reference'] / top[name]:.2f}x)")
    timed(batch, args.repeats, "CPU width 16, 4 + 4 layers", WIDTH_16)
    model = offline_default_model()
    timed(batch, args.repeats, f"CPU offline default (width {model.hidden_features}, "
          f"{model.alignn_layers} + {model.gcn_layers} layers)", model)
    as_trainers_run(args)
    if torch.cuda.is_available():
        timed(batch.to("cuda"), args.repeats, f"CUDA {torch.cuda.get_device_name()} paper width", PAPER)
    print(f"train kernels (fused, eager): {fb['reference'] / fb['fused']:.2f}x fewer forward+backward ops "
          f"(same loss: {'yes' if checks['fused'][0] else 'no'})")
    print(f"train kernels: {fb['reference'] / fb['compiled']:.2f}x fewer forward+backward ops "
          f"(same loss: {'yes' if checks['compiled'][0] else 'no'})")


if __name__ == "__main__":
    main()
