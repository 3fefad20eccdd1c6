"""Sparse mixture of projectors: forward + backward time against the number of experts.

    python benchmarks/smop_dispatch.py [--tokens 2048] [--d-in 1024] [--hidden 1024] [--d-out 1024]
                                       [--top-k 2] [--repeats 7] [--threads 2] [--seed 0]

Times one projector forward + backward (sum of the outputs as the loss) on random tokens of
one modality, for the MLP projector and for the DEDR sparse mixture with 2, 4, 8 and 16
experts at top-k. Configurations run interleaved, round after round, and each reports its
median, so a noisy shared machine slows them all alike; ratios come from the same run. With
sorted dispatch the work follows k, not the number of experts, so E16/E2 should stay near 1.
Writes benchmarks/results/smop_dispatch.json; the last printed line is
`E16/E2 time ratio: <x>`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from avsr.io import write_text_atomic
from avsr.models.projectors import MLPProjector, SparseMixtureProjector

EXPERTS = (2, 4, 8, 16)


def step_seconds(projector: torch.nn.Module, inputs: dict) -> float:
    projector.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out, aux = projector(inputs)
    loss = out["audio"].sum() + sum((v for k, v in aux.items() if k.endswith("_loss")), torch.zeros(()))
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048, help="real tokens per step (B x T')")
    parser.add_argument("--d-in", type=int, default=1024)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--d-out", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/smop_dispatch.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    batch = 16
    x = torch.randn(batch, args.tokens // batch, args.d_in)  # (B, T', D_in)
    pad = torch.zeros(batch, args.tokens // batch, dtype=torch.bool)
    inputs = {"audio": (x, pad)}
    projectors = {"mlp": MLPProjector({"audio": args.d_in}, args.hidden, args.d_out, layer_norm=True)}
    for e in EXPERTS:
        projectors[f"E{e}"] = SparseMixtureProjector({"audio": args.d_in}, args.hidden, args.d_out, True,
                                                     topology="dedr", num_experts=e, top_k=args.top_k)
    times: dict[str, list[float]] = {name: [] for name in projectors}
    for name, p in projectors.items():  # warm-up round (allocator, kernels)
        step_seconds(p, inputs)
    for _ in range(args.repeats):
        for name, p in projectors.items():
            times[name].append(step_seconds(p, inputs))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "settings": vars(args) | {"topology": "dedr", "batch": batch},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "median_seconds": {k: round(v, 5) for k, v in median.items()},
        "ratio_to_mlp": {k: round(v / median["mlp"], 3) for k, v in median.items()},
        "ratio_to_E2": {k: round(v / median["E2"], 3) for k, v in median.items() if k != "mlp"},
        "parameters": {k: sum(p.numel() for p in m.parameters()) for k, m in projectors.items()},
    }
    path = write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(f"{args.tokens} tokens, d_in {args.d_in}, hidden {args.hidden}, d_out {args.d_out}, top-{args.top_k}, "
          f"{args.threads} threads, median of {args.repeats}")
    for name in projectors:
        print(f"  {name:>4}: {1000 * median[name]:8.1f} ms  x{result['ratio_to_mlp'][name]:.2f} of the MLP  "
              f"{result['parameters'][name] / 1e6:6.2f}M parameters")
    print(f"wrote {path}")
    print(f"E16/E2 time ratio: {median['E16'] / median['E2']:.3f}")


if __name__ == "__main__":
    main()
