"""PyTorch baseline for bench/lfq.sh: the multi-depth LFQ quantizer as whole-tensor ops (as the reference MDQ code
computes it), B=64, N=32, D=4, 12 bits, 1 thread. Prints JSON with tokens/s."""
import json
import statistics
import time

import torch

B, N, D, BITS = 64, 32, 4, 12


def quantize(z, powers):
    cum = torch.zeros_like(z)
    tokens = []
    for s in range(D):
        r = z - cum
        pos = r > 0
        q = torch.where(pos, 1.0, -1.0) * 2.0 ** -s
        tokens.append((pos.to(torch.int64) * powers).sum(-1))
        cum = cum + q
    return cum, torch.stack(tokens, -1)


def main():
    torch.set_num_threads(1)
    z = torch.rand(B, N, BITS) * 2 - 1
    powers = 2 ** torch.arange(BITS)
    with torch.inference_mode():
        quantize(z, powers)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            quantize(z, powers)
            times.append(time.perf_counter() - t)
    print(json.dumps({"torch": torch.__version__, "tokens_per_s": B * N * D / statistics.median(times)}))


if __name__ == "__main__":
    main()
