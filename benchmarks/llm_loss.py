"""The training loss with the output layer at the labelled positions only, against all positions.

    python benchmarks/llm_loss.py --llm runs/smollm2/models/smollm2-135m [--batch 8] [--length 80]
                                  [--labelled 20] [--repeats 5] [--threads 2] [--seed 0]

On a real LLM folder (e.g. SmolLM2-135M, `avsr prepare smollm2`), frozen, LoRA r16 on q and v:
forward + backward of the mean cross-entropy over `--labelled` transcript positions of
`--batch` sequences of `--length` input embeddings, (a) as transformers computes it (logits at
every position, `labels=`), (b) as training does (`avsr.models.avsr_model.labelled_losses`: the
decoder stack, then the output layer at the labelled positions only). Interleaved round by round, median of `--repeats`;
both losses must agree. Writes benchmarks/results/llm_loss.json; the last line printed is
`all-positions/labelled-only step time ratio: <x>`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from avsr.io import write_text_atomic
from avsr.models.avsr_model import IGNORE, labelled_losses
from avsr.models.lora import add_lora


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llm", required=True, help="a local causal-LM folder")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=80)
    p.add_argument("--labelled", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(args.llm, local_files_only=True).eval()
    for param in llm.parameters():
        param.requires_grad_(False)
    add_lora(llm, ("q_proj", "v_proj"), ("lora",), 16, 32)
    d, vocab = llm.get_input_embeddings().embedding_dim, llm.config.vocab_size
    embeds = torch.randn(args.batch, args.length, d) * 0.02  # (B, L, D)
    mask = torch.ones(args.batch, args.length, dtype=torch.long)
    labels = torch.full((args.batch, args.length), IGNORE)
    labels[:, -args.labelled:] = torch.randint(0, vocab, (args.batch, args.labelled))

    def all_positions() -> torch.Tensor:
        return llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    def labelled_only() -> torch.Tensor:
        return labelled_losses(llm, embeds, mask, labels)[0]

    variants = {"all_positions": all_positions, "labelled_only": labelled_only}
    with torch.no_grad():
        losses = {name: float(fn()) for name, fn in variants.items()}
    if abs(losses["all_positions"] - losses["labelled_only"]) > 1e-4 * abs(losses["all_positions"]):
        raise SystemExit(f"the two losses differ: {losses}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            llm.zero_grad(set_to_none=True)
            start = time.perf_counter()
            fn().backward()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    ratio = median["all_positions"] / median["labelled_only"]
    result = dict(settings=vars(args), machine=platform.processor() or platform.machine(), losses=losses,
                  seconds=times, median_seconds=median, ratio=round(ratio, 3))
    write_text_atomic("benchmarks/results/llm_loss.json", json.dumps(result, indent=1) + "\n")
    for name, m in median.items():
        print(f"{name}: {m:.2f} s per forward + backward (median of {args.repeats})")
    print(f"all-positions/labelled-only step time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
