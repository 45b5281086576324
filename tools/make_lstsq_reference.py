#!/usr/bin/env python3
"""Reference least-squares solutions from numpy, for tests/latent_estimators.rs (lstsq_matches_numpy_reference).

Usage (needs numpy and safetensors):
    /tmp/tvenv/bin/python tools/make_lstsq_reference.py tests/fixtures/lstsq_reference.safetensors

Writes (safetensors):
  X  200 x 12 float32   np.random.default_rng(20220512); columns scaled by 0.5..2 and shifted
                        by a mean of 0.3 (so the affine fit has a real intercept)
  Y  200 x 9  float32   X @ W_true + 0.7 + 0.05 * noise
  W  12 x 9   float64   np.linalg.lstsq(X, Y)          (no bias: the paper's map)
  W_affine 12 x 9, b_affine 9  float64   lstsq of [X, 1] against Y
The least squares are solved in float64 from the float32 X and Y.
"""
import sys

import numpy as np
from safetensors.numpy import save_file

out_path = sys.argv[1]
rng = np.random.default_rng(20220512)
n, d1, d2 = 200, 12, 9
scales = np.linspace(0.5, 2.0, d1)
x = (rng.standard_normal((n, d1)) * scales + 0.3).astype(np.float32)
w_true = rng.standard_normal((d1, d2))
y = (x.astype(np.float64) @ w_true + 0.7 + 0.05 * rng.standard_normal((n, d2))).astype(np.float32)

x64, y64 = x.astype(np.float64), y.astype(np.float64)
w, *_ = np.linalg.lstsq(x64, y64, rcond=None)
xa = np.hstack([x64, np.ones((n, 1))])
wa, *_ = np.linalg.lstsq(xa, y64, rcond=None)

save_file(
    {
        "X": np.ascontiguousarray(x),
        "Y": np.ascontiguousarray(y),
        "W": np.ascontiguousarray(w),
        "W_affine": np.ascontiguousarray(wa[:d1]),
        "b_affine": np.ascontiguousarray(wa[d1]),
    },
    out_path,
    metadata={"generator": "tools/make_lstsq_reference.py", "numpy": np.__version__},
)
print(f"wrote {out_path}: W[0,:3]={w[0, :3]}, b_affine[:3]={wa[d1, :3]}")
