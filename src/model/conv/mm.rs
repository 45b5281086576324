//! Strided matrix products for the fast convolutions: the AVX-512 kernel of [`super::wide`]
//! where it applies (single-threaded, a unit stride in the output, at least 16 columns on the
//! other side), else `gemm::gemm`.

use std::mem::MaybeUninit;

/// Row-major matrix view: pointer plus (row stride, column stride) in elements.
#[derive(Clone, Copy)]
pub(super) struct Mat {
    pub(super) ptr: *const f32,
    pub(super) rs: isize,
    pub(super) cs: isize,
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]`, `dst` row-major and contiguous.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    let d = Mat {
        ptr: dst.as_ptr(),
        rs: n as isize,
        cs: 1,
    };
    matmul_into(as_uninit(dst), d, m, n, k, lhs, rhs, accumulate, par)
}

/// `dst` viewed as possibly-uninitialised values, for [`matmul_into`].
pub(super) fn as_uninit(dst: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; writers through this view store only initialised f32 values.
    unsafe { &mut *(dst as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with `dst` at the strides of `layout` (its pointer is
/// ignored; `dst` must hold every element those strides reach). Without `accumulate`, `dst`
/// may be uninitialised: gemm then stores every element those strides reach without reading
/// it (its `read_dst = false` path).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_into(
    dst: &mut [MaybeUninit<f32>],
    layout: Mat,
    m: usize,
    n: usize,
    k: usize,
    lhs: Mat,
    rhs: Mat,
    accumulate: bool,
    par: gemm::Parallelism,
) {
    debug_assert!(dst.len() >= m * n);
    debug_assert!(
        m == 0
            || n == 0
            || (m - 1) * (layout.rs as usize) + (n - 1) * (layout.cs as usize) < dst.len()
    );
    // SAFETY: the callers build `lhs`/`rhs` from slices that hold at least m*k / k*n elements at
    // the given strides, and `dst` holds every element the (non-negative) strides of `layout`
    // reach for m x n; gemm and the AVX-512 kernel read and write only those.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if matches!(par, gemm::Parallelism::None)
            && super::wide::matmul(
                dst.as_mut_ptr().cast::<f32>(),
                layout,
                (m, n, k),
                lhs,
                rhs,
                accumulate,
            )
        {
            return;
        }
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr().cast::<f32>(),
            layout.cs,
            layout.rs,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
