"""Matryoshka / Omni training-step cost against a single-rate step, and per-pair decoding cost.

    python benchmarks/matryoshka_step.py [--batch 16] [--seconds 3] [--repeats 5] [--threads 2]
                                         [--hidden 256] [--layers 4] [--seed 0]

A model with the quickstart's shapes (Whisper-base-wide audio features, a 192-wide lip
encoder, a Llama-architecture LM of `--hidden` x `--layers`, LoRA r32 on every linear layer,
MLP projectors 512 wide) on random features of `--batch` utterances of `--seconds` s, as
the CPU feature cache feeds them (encoder outputs; the encoders would run once per step in
every variant). Timed, forward + backward, interleaved round by round, median of `--repeats`:
- single: AVSR at one rate pair (4, 2);
- MTSK batched: the Matryoshka loss over audio {4, 16} x video {2, 5}, one LLM batch of 4 x B;
- MTSK sequential: the same loss, one LLM pass per pair;
- Omni: ASR + VSR + AVSR at one drawn pair (three LLM passes), timed at every pair and
  averaged (each pair is drawn equally often).
Then, per AVSR rate pair: LLM input tokens per utterance and greedy decode time per utterance.
Writes benchmarks/results/matryoshka_step.json; the last printed line is
`MTSK/single step time ratio: <x>` (the faster of batched and sequential).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

from avsr.io import write_text_atomic
from avsr.models.avsr_model import AVSRConfig, AVSRModel
from avsr.models.tasks import scale_name
from avsr.backbones.small_lm import train_tokenizer
from avsr.synth.text import grid_sentence


class FeatureOnlyEncoder(torch.nn.Module):
    """Stands in for a frozen encoder whose outputs come from the feature cache."""

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim


def build(hidden: int, layers: int, seed: int, **overrides) -> AVSRModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    texts = [grid_sentence(np.random.default_rng(i)) for i in range(300)]
    tok = train_tokenizer(texts, 372)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    cfg = AVSRConfig(llm="benchmark", tasks=("asr", "vsr", "avsr"), audio_rates=(4, 16), video_rates=(2, 5),
                     projector_hidden=512, lora_rank=32, lora_alpha=32,
                     lora_targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                     **overrides)
    return AVSRModel(cfg, FeatureOnlyEncoder(512), FeatureOnlyEncoder(192), llm, tok)


def make_batch(n: int, seconds: float, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    frames = [int(seconds * 25 * (0.8 + 0.4 * i / max(1, n - 1))) for i in range(n)]  # 0.8x .. 1.2x
    batch = {"text": [grid_sentence(np.random.default_rng(1000 + i)) for i in range(n)]}
    for m, rate_hz, dim in (("audio", 50, 512), ("video", 25, 192)):
        lengths = torch.tensor([f * rate_hz // 25 for f in frames])
        batch[f"{m}_features"] = torch.randn(n, int(lengths.max()), dim, generator=g)
        batch[f"{m}_feature_lengths"] = lengths
    return batch


def step_seconds(fn) -> float:
    start = time.perf_counter()
    loss = fn()
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--decode-utterances", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="benchmarks/results/matryoshka_step.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    batched = build(args.hidden, args.layers, args.seed, matryoshka_batched=True, lora_scheme="mss")
    sequential = build(args.hidden, args.layers, args.seed, matryoshka_batched=False, lora_scheme="mss")
    sequential.load_state_dict(batched.state_dict())
    batch = make_batch(args.batch, args.seconds, args.seed)

    def omni(pair):
        def step():
            losses = [batched(batch, t, batched.check_pair(t, pair))[0] * w
                      for t, w in (("asr", 1.0), ("vsr", 1.5), ("avsr", 1.0))]
            return sum(losses) / 3
        return step

    variants = {
        "single": lambda: batched(batch, "avsr", (4, 2))[0],
        "mtsk_batched": lambda: batched(batch, "avsr")[0],
        "mtsk_sequential": lambda: sequential(batch, "avsr")[0],
        # Omni draws one pair per step: its expected step time is the mean over the pairs
        **{f"omni_{scale_name('avsr', p)}": omni(p) for p in batched.pairs("avsr")},
    }
    batched.train()
    sequential.train()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for fn in variants.values():  # warm-up
        step_seconds(fn)
    for _ in range(args.repeats):
        for name, fn in variants.items():
            batched.zero_grad(set_to_none=True)
            sequential.zero_grad(set_to_none=True)
            times[name].append(step_seconds(fn))
    median = {k: statistics.median(v) for k, v in times.items()}
    median["omni"] = statistics.mean(v for k, v in median.items() if k.startswith("omni_"))

    batched.eval()
    decode = {}
    small = {k: (v[: args.decode_utterances] if torch.is_tensor(v) or isinstance(v, list) else v)
             for k, v in batch.items()}
    for pair in batched.pairs("avsr"):
        batched.generate(small, "avsr", num_beams=1, max_new_tokens=8, pair=pair)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            _, aux = batched.generate(small, "avsr", num_beams=1, max_new_tokens=8, pair=pair, return_aux=True)
            seconds.append(time.perf_counter() - start)
        decode[scale_name("avsr", pair)] = {
            "llm_input_tokens": round(float(aux["llm_input_tokens"].float().mean()), 1),
            "decode_ms_per_utterance": round(1000 * statistics.median(seconds) / len(small["text"]), 2)}

    best = min(median["mtsk_batched"], median["mtsk_sequential"])
    result = {
        "settings": vars(args),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
        "median_step_seconds": {k: round(v, 4) for k, v in median.items()},
        "ratio_to_single": {k: round(v / median["single"], 3) for k, v in median.items()},
        "decode_per_pair": decode,
    }
    path = write_text_atomic(args.json, json.dumps(result, indent=1) + "\n")
    print(f"batch {args.batch} x {args.seconds:g} s, LM {args.hidden}x{args.layers}, {args.threads} threads, "
          f"median of {args.repeats}")
    for name in median:
        print(f"  {name:>16}: {1000 * median[name]:8.1f} ms  x{result['ratio_to_single'][name]:.2f} of single")
    for scale, d in decode.items():
        print(f"  decode {scale}: {d['llm_input_tokens']:.1f} LLM input tokens, {d['decode_ms_per_utterance']:.1f} ms/utt")
    print(f"wrote {path}")
    print(f"MTSK/single step time ratio: {best / median['single']:.3f}")


if __name__ == "__main__":
    main()
