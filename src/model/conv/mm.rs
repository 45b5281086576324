//! Strided matrix products for the fast convolutions: thin wrappers over `gemm::gemm`.

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
    matmul_into(dst, d, m, n, k, lhs, rhs, accumulate, par)
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with `dst` at the strides of `layout` (its pointer is
/// ignored; `dst` must hold every element those strides reach).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_into(
    dst: &mut [f32],
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
    // reach for m x n; gemm reads and writes only those.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
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
