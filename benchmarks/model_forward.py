"""Forward throughput: jitted ``model.forward`` vs transformers' torch Gemma 2, side by side.

Both run the same random tiny Gemma 2 (saved once with ``save_pretrained``, loaded by each side
from that folder) on the same token batch on this machine's CPU, in fp32, alternating rounds so
background load hits both alike. Reports tokens/s of each and the ratio JAX / torch, plus the
max abs logit difference as a sanity check.

Usage:
    PYTHONPATH=. python benchmarks/model_forward.py [--batch 8] [--seq 256] [--rounds 5]
        [--layers 4] [--d_model 256] [--threads 0]

``--threads`` > 0 pins torch's intra-op threads; XLA's CPU backend picks its own.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from gemmascope import model


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d_model", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=0)
    return parser.parse_args()


def _time(fn, rounds: int) -> float:
    """Median seconds per call over ``rounds`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    """Parses the flags, runs the measurements and prints the table."""
    args = _parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    heads = max(1, args.d_model // 64)
    hf_cfg = transformers.Gemma2Config(
        vocab_size=args.vocab,
        hidden_size=args.d_model,
        intermediate_size=4 * args.d_model,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=64,
        query_pre_attn_scalar=64,
        sliding_window=args.seq // 2,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    torch_model = transformers.Gemma2ForCausalLM(hf_cfg).eval()
    tokens = np.random.default_rng(0).integers(3, args.vocab, (args.batch, args.seq))
    tokens[:, 0] = 2
    tokens = tokens.astype(np.int32)

    with tempfile.TemporaryDirectory() as folder:
        torch_model.save_pretrained(folder)
        cfg, params = model.load_hf(folder)

    forward = jax.jit(lambda p, t: model.forward(cfg, p, t)[0])
    torch_tokens = torch.tensor(tokens, dtype=torch.long)

    def run_jax():
        return forward(params, tokens).block_until_ready()

    def run_torch():
        with torch.no_grad():
            return torch_model(torch_tokens).logits

    start = time.perf_counter()
    jax_logits = np.asarray(run_jax())
    compile_s = time.perf_counter() - start
    torch_logits = run_torch().numpy()
    diff = float(np.abs(jax_logits - torch_logits).max())

    jax_s, torch_s = [], []
    for _ in range(args.rounds):  # alternate so background load affects both sides alike
        jax_s.append(_time(run_jax, 1))
        torch_s.append(_time(run_torch, 1))
    n_tokens = args.batch * args.seq
    jax_tps, torch_tps = n_tokens / np.median(jax_s), n_tokens / np.median(torch_s)
    print(
        f"config: {args.layers} layers, d_model {args.d_model}, {heads} heads, vocab {args.vocab}, "
        f"batch {args.batch} x seq {args.seq}, {cfg.n_params() / 1e6:.2f}M params, fp32, "
        f"{jax.devices()[0].platform} ({jax.device_count()} device(s)), torch threads "
        f"{torch.get_num_threads()}"
    )
    print(f"jax compile (first call): {compile_s:.2f} s; max |logit diff| vs torch: {diff:.2e}")
    print(f"jax.jit(model.forward): {jax_tps:10.0f} tokens/s (median of {args.rounds})")
    print(f"torch Gemma2ForCausalLM: {torch_tps:10.0f} tokens/s (median of {args.rounds})")
    print(f"ratio jax / torch: {jax_tps / torch_tps:.2f}")


if __name__ == "__main__":
    main()
