#!/usr/bin/env python3
"""PyTorch side of `latent-atlas bench --layers`: the same nine VAE conv layers at batch 64
(4x4 stride-2 convs and transposed convs, the 3x3 RGB output conv) and the Split-VAE's four
other layers (3x3 residual-block convs, 7-channel output conv), each followed by a leaky
ReLU, timed forward and forward + backward (the first layer's input needs no gradient, as in
training), NCHW and channels_last, with the same thread count. Prints a markdown table.
PyTorch is needed for benchmarking only.

    python bench/torch_layers.py --threads 2 [--repeats 25]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

LAYERS = [
    ("enc c0", lambda: nn.Conv2d(3, 32, 4, 2, 1), 3, 64),
    ("enc c1", lambda: nn.Conv2d(32, 64, 4, 2, 1), 32, 32),
    ("enc c2", lambda: nn.Conv2d(64, 128, 4, 2, 1), 64, 16),
    ("enc c3", lambda: nn.Conv2d(128, 256, 4, 2, 1), 128, 8),
    ("dec t0", lambda: nn.ConvTranspose2d(256, 128, 4, 2, 1), 256, 4),
    ("dec t1", lambda: nn.ConvTranspose2d(128, 64, 4, 2, 1), 128, 8),
    ("dec t2", lambda: nn.ConvTranspose2d(64, 32, 4, 2, 1), 64, 16),
    ("dec t3", lambda: nn.ConvTranspose2d(32, 16, 4, 2, 1), 32, 32),
    ("dec out", lambda: nn.Conv2d(16, 3, 3, 1, 1), 16, 64),
]

# the Split-VAE's layers beyond the VAE's: its residual blocks' 3x3 convs and 7-channel output
SVAE_EXTRA = [
    ("svae res 32^2", lambda: nn.Conv2d(32, 32, 3, 1, 1), 32, 32),
    ("svae res 16^2 (x2)", lambda: nn.Conv2d(64, 64, 3, 1, 1), 64, 16),
    ("svae res 8^2", lambda: nn.Conv2d(128, 128, 3, 1, 1), 128, 8),
    ("svae out", lambda: nn.Conv2d(16, 7, 3, 1, 1), 16, 64),
]


def time_layer(make, c, side, batch, repeats, channels_last, first):
    torch.manual_seed(0)
    m = make()
    x = torch.randn(batch, c, side, side)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_(not first)
    fwd, both = [], []
    for r in range(repeats + 3):
        t0 = time.perf_counter()
        with torch.no_grad():
            F.leaky_relu(m(x), 0.2)
        t1 = time.perf_counter()
        y = F.leaky_relu(m(xg), 0.2)
        y.backward(torch.ones_like(y))
        t2 = time.perf_counter()
        if r >= 3:
            fwd.append(t1 - t0)
            both.append(t2 - t1)
    return statistics.median(fwd) * 1e3, statistics.median(both) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print("| layer (batch %d) | NCHW fwd ms | NCHW fwd+bwd ms | channels_last fwd ms | channels_last fwd+bwd ms |" % a.batch)
    print("|---|---|---|---|---|")
    for label, layers in (("all (VAE)", LAYERS), ("all (Split-VAE's other layers)", SVAE_EXTRA)):
        tot = [0.0] * 4
        for i, (name, make, c, side) in enumerate(layers):
            row = []
            for cl in (False, True):
                row.extend(time_layer(make, c, side, a.batch, a.repeats, cl, layers is LAYERS and i == 0))
            tot = [t + v for t, v in zip(tot, row)]
            print("| %s | %s |" % (name, " | ".join("%.2f" % v for v in row)))
        print("| %s | %s |" % (label, " | ".join("%.2f" % v for v in tot)))
    print()
    print("torch %s with %d threads; medians of %d repeats" % (torch.__version__, torch.get_num_threads(), a.repeats))


if __name__ == "__main__":
    main()
