#!/usr/bin/env python3
"""Reference outputs of the gan-face-generate 1.1.1 DCGAN generator, computed by PyTorch with
the package's own model code, for the candle port's fixture test (tests/refdcgan_port.rs).

Usage (run once; needs torch, numpy, safetensors):
    pip download --no-deps -d /tmp/pkgs gan-face-generate==1.1.1
    unzip -q /tmp/pkgs/gan_face_generate-1.1.1-py3-none-any.whl -d /tmp/pkgs/gfg
    python tools/make_refdcgan_reference.py /tmp/pkgs/gfg tests/fixtures/refdcgan_reference.safetensors

Writes `z` (8 x 100 float32, numpy RandomState(1234).standard_normal) and `out` (8 x 3 x 64 x 64,
the generator's tanh output in [-1, 1], eval mode: batch norm uses running statistics).
"""
import hashlib
import sys

import numpy as np
import torch
from safetensors.numpy import save_file

pkg_root, out_path = sys.argv[1], sys.argv[2]
sys.path.insert(0, pkg_root)
from gan_face_generate.models import Generator  # noqa: E402  (the package's own code)

weights = f"{pkg_root}/gan_face_generate/weights.tar"
sha = hashlib.sha256(open(weights, "rb").read()).hexdigest()
state = torch.load(weights, map_location="cpu", weights_only=True)["netG_state_dict"]
net = Generator(ngpu=0, nc=3, nz=100, ngf=64)
net.load_state_dict(state)
net.eval()
z = np.random.RandomState(1234).standard_normal((8, 100)).astype(np.float32)
with torch.no_grad():
    out = net(torch.from_numpy(z).view(8, 100, 1, 1)).numpy().astype(np.float32)
save_file(
    {"z": z, "out": out},
    out_path,
    metadata={"torch": torch.__version__, "numpy": np.__version__, "weights_sha256": sha, "package": "gan-face-generate==1.1.1"},
)
print(f"wrote {out_path}: out range [{out.min():.3f}, {out.max():.3f}], torch {torch.__version__}, weights sha256 {sha}")
