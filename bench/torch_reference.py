#!/usr/bin/env python3
"""PyTorch side of `latent-atlas bench`: the same architectures, losses and batch sizes as
src/model (VAE, Split-VAE, GAN step, recoder), timed on the CPU with the same thread count.
Prints one JSON object. PyTorch is needed for benchmarking only, never at run time.

    python bench/torch_reference.py --threads 2 [--quick] [--channels-last] [--device cuda]

With --device cuda the models and batches live on the GPU and every timing synchronises it;
the map fits stay numpy on the CPU.
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def leaky(x):
    return F.leaky_relu(x, 0.2)


class Encoder(nn.Module):
    """Four 4x4 stride-2 convs c, 2c, 4c, 8c with leaky ReLU; optional residual blocks."""

    def __init__(self, c=32, res=False):
        super().__init__()
        w = [3, c, 2 * c, 4 * c, 8 * c]
        self.convs = nn.ModuleList([nn.Conv2d(w[i], w[i + 1], 4, 2, 1) for i in range(4)])
        self.res = nn.ModuleDict({"1": nn.Conv2d(2 * c, 2 * c, 3, 1, 1), "2": nn.Conv2d(4 * c, 4 * c, 3, 1, 1)}) if res else None

    def forward(self, x):
        h = x
        for i, conv in enumerate(self.convs):
            h = leaky(conv(h))
            if self.res is not None and str(i) in self.res:
                h = h + self.res[str(i)](leaky(h))
        return h.flatten(1)


class Decoder(nn.Module):
    """Dense to 8c x 4 x 4, four 4x4 stride-2 transposed convs, 3x3 conv out."""

    def __init__(self, d, c=32, out=3, res=False):
        super().__init__()
        self.c = c
        self.fc = nn.Linear(d, 8 * c * 16)
        w = [8 * c, 4 * c, 2 * c, c, c // 2]
        self.ups = nn.ModuleList([nn.ConvTranspose2d(w[i], w[i + 1], 4, 2, 1) for i in range(4)])
        self.res = nn.ModuleDict({"1": nn.Conv2d(2 * c, 2 * c, 3, 1, 1), "2": nn.Conv2d(c, c, 3, 1, 1)}) if res else None
        self.out = nn.Conv2d(c // 2, out, 3, 1, 1)

    def forward(self, z):
        h = leaky(self.fc(z)).view(-1, 8 * self.c, 4, 4)
        for i, up in enumerate(self.ups):
            h = leaky(up(h))
            if self.res is not None and str(i) in self.res:
                h = h + self.res[str(i)](leaky(h))
        return torch.sigmoid(self.out(h))


class Vae(nn.Module):
    def __init__(self, d=64, c=32, split=False):
        super().__init__()
        self.split = split
        self.enc = Encoder(c, res=split)
        self.mean = nn.Linear(8 * c * 16, d)
        self.logvar = nn.Linear(8 * c * 16, d)
        self.dec = Decoder(d, c, 7 if split else 3, res=split)

    def encode(self, x):
        h = self.enc(x)
        return self.mean(h), self.logvar(h)

    def decode(self, z):
        y = self.dec(z)
        if not self.split:
            return y
        x1, x2, s = y[:, 0:3], y[:, 3:6], y[:, 6:7]
        return s * x1 + (1 - s) * x2


class BnGenerator(nn.Module):
    """src/model/gan.rs Generator: the decoder layout with batch norm after fc and every
    transposed conv (no conv bias), leaky ReLU, 3x3 conv out, sigmoid."""

    def __init__(self, d, c=32):
        super().__init__()
        self.c = c
        self.fc = nn.Linear(d, 8 * c * 16)
        w = [8 * c, 4 * c, 2 * c, c, c // 2]
        self.ups = nn.ModuleList([nn.ConvTranspose2d(w[i], w[i + 1], 4, 2, 1, bias=False) for i in range(4)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(w[i]) for i in range(5)])
        self.out = nn.Conv2d(c // 2, 3, 3, 1, 1)

    def forward(self, z):
        h = leaky(self.norms[0](self.fc(z).view(-1, 8 * self.c, 4, 4)))
        for up, norm in zip(self.ups, self.norms[1:]):
            h = leaky(norm(up(h)))
        return torch.sigmoid(self.out(h))


class BnDiscriminator(nn.Module):
    """src/model/gan.rs Discriminator: the encoder's convs, batch norm after convs 2-4."""

    def __init__(self, c=32):
        super().__init__()
        w = [3, c, 2 * c, 4 * c, 8 * c]
        self.convs = nn.ModuleList([nn.Conv2d(w[i], w[i + 1], 4, 2, 1) for i in range(4)])
        self.norms = nn.ModuleList([nn.BatchNorm2d(w[i + 1]) for i in range(1, 4)])
        self.head = nn.Linear(8 * c * 16, 1)

    def forward(self, x):
        h = leaky(self.convs[0](x))
        for conv, norm in zip(self.convs[1:], self.norms):
            h = leaky(norm(conv(h)))
        return self.head(h.flatten(1))


class Head(nn.Module):
    def __init__(self, out, c=32):
        super().__init__()
        self.body = Encoder(c)
        self.head = nn.Linear(8 * c * 16, out)

    def forward(self, x):
        return self.head(self.body(x))


DEV = torch.device("cpu")


def fmt(t, cl):
    t = t.to(DEV)
    return t.contiguous(memory_format=torch.channels_last) if cl and t.dim() == 4 else t


def place(m, cl):
    m = m.to(DEV)
    return m.to(memory_format=torch.channels_last) if cl else m


def sync():
    if DEV.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--part", choices=["train", "infer", "fits"], default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default=None, help="comma-separated figures to measure (e.g. train_gan_img_s); all of the part when absent")
    a = ap.parse_args()
    global DEV
    DEV = torch.device(a.device)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cl = a.channels_last
    rep = 3 if a.quick else 7
    out = {"torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(), "channels_last": cl, "device": str(DEV)}
    b = 64
    x = fmt(torch.rand(b, 3, 64, 64), cl)

    def wants(p):
        return a.part is None or a.part == p

    only = None if a.only is None else set(a.only.split(","))
    if wants("train"):
        train_part(out, x, b, cl, rep, only)
    if wants("infer"):
        infer_part(out, cl, rep, only)
    if wants("fits"):
        fits_part(out, rep, only)
    print(json.dumps(out))


def train_part(out, x, b, cl, rep, only=None):
    def want(k):
        return only is None or k in only

    def vae_step(model, opt, d):
        gamma = [0.01]

        def step():
            mu, lv = model.encode(x)
            z = mu + torch.exp(0.5 * lv) * torch.randn_like(mu)
            xr = model.decode(z)
            rec = ((xr - x) ** 2).sum() / b
            kl = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum() / b
            loss = (rec / (2 * gamma[0]) + kl) / (3 * 64 * 64)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    for name, split, d in [("vae", False, 64), ("svae", True, 128)]:
        if not want(f"train_{name}_img_s"):
            continue
        m = place(Vae(d, split=split), cl)
        opt = torch.optim.Adam(m.parameters(), 1e-3)
        out[f"train_{name}_img_s"] = b / timeit(vae_step(m, opt, d), rep)

    if not (want("train_gan_img_s") or want("train_recoder_img_s")):
        return
    gen, disc = place(BnGenerator(64), cl), place(BnDiscriminator(), cl)
    og = torch.optim.Adam(gen.parameters(), 2e-4, betas=(0.5, 0.999))
    od = torch.optim.Adam(disc.parameters(), 2e-4, betas=(0.5, 0.999))

    def gan_step():
        z = torch.randn(b, 64, device=DEV)
        fake = gen(z)
        ld = F.softplus(-disc(x)).mean() + F.softplus(disc(fake.detach())).mean()
        od.zero_grad(set_to_none=True)
        ld.backward()
        od.step()
        # the generator step through a frozen discriminator (no weight gradients for it), as
        # latent-atlas does
        disc.requires_grad_(False)
        lg = F.softplus(-disc(fake)).mean()
        og.zero_grad(set_to_none=True)
        lg.backward()
        og.step()
        disc.requires_grad_(True)

    if want("train_gan_img_s"):
        out["train_gan_img_s"] = b / timeit(gan_step, rep)
    else:
        # the recoder alone: its generator gets the same steps as when both are timed
        for _ in range(rep + 2):
            gan_step()
    if not want("train_recoder_img_s"):
        return

    gen.eval()
    rec = place(Head(64), cl)
    orr = torch.optim.Adam(rec.parameters(), 1e-3)

    def rec_step():
        z = torch.randn(b, 64, device=DEV)
        with torch.no_grad():
            xg = gen(z)
        loss = ((rec(xg) - z) ** 2).mean()
        orr.zero_grad(set_to_none=True)
        loss.backward()
        orr.step()

    out["train_recoder_img_s"] = b / timeit(rec_step, rep)


def infer_part(out, cl, rep, only=None):
    if only is not None and not only & {"encode_b256_img_s", "decode_b256_img_s", "decode_b1_ms"}:
        return
    vae = place(Vae(64).eval(), cl)
    x256 = fmt(torch.rand(256, 3, 64, 64), cl)
    z256 = torch.randn(256, 64, device=DEV)
    z1 = torch.randn(1, 64, device=DEV)
    def want(k):
        return only is None or k in only

    with torch.no_grad():
        if want("encode_b256_img_s"):
            out["encode_b256_img_s"] = 256 / timeit(lambda: vae.encode(x256), rep)
        if want("decode_b256_img_s"):
            out["decode_b256_img_s"] = 256 / timeit(lambda: vae.decode(z256), rep)
        if want("decode_b1_ms"):
            out["decode_b1_ms"] = 1000 * timeit(lambda: vae.decode(z1), 5 * rep, warmup=5)


def fits_part(out, rep, only=None):
    rng = np.random.default_rng(0)
    for n, key in [(150, "lstsq_150_ms"), (200_000, "lstsq_200k_ms")]:
        if only is not None and key not in only:
            continue
        X = rng.standard_normal((n, 64)).astype(np.float32)
        Y = rng.standard_normal((n, 150)).astype(np.float32)
        out[key] = 1000 * timeit(lambda: np.linalg.solve(X.T @ X, X.T @ Y), rep)


if __name__ == "__main__":
    main()
