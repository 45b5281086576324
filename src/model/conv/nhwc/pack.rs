//! The weights of the channels-last stacks (`conv/nhwc.rs`) packed for the tile: one block
//! per 16·`nz` output channels, a transposed 4x4 stride-2 layer as four 2x2 phase
//! convolutions. Built once per model weights and kept in [`super::super::StackCache`].

use candle_core::Tensor;

use super::super::ConvGeom;

/// A stack's layers packed for the tile: built once per weights (see
/// [`super::super::StackCache`]), shared by the calls.
#[derive(Debug)]
pub(in crate::model::conv) struct Packed(pub(super) Vec<Layer>);

impl std::ops::Deref for Packed {
    type Target = [Layer];
    fn deref(&self) -> &[Layer] {
        &self.0
    }
}

/// One layer: weights packed `[block][kh][kw][ci][16·nz]`, one block per 16·`nz` output
/// channels.
#[derive(Debug)]
pub(in crate::model::conv) struct Layer {
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) geom: ConvGeom,
    /// A 4x4 stride-2 transposed convolution (padding 1): `packed` holds one 2x2 stride-1
    /// convolution per output phase, `[phase][block][a][b][ci][16·nz]`.
    pub(super) transposed: bool,
    pub(super) nz: usize,
    pub(super) packed: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

impl Layer {
    fn new(w: &[f32], bias: Vec<f32>, c_out: usize, c_in: usize, geom: ConvGeom) -> Self {
        let k = geom.kernel;
        let nz = if c_out.is_multiple_of(32) { 2 } else { 1 };
        let width = 16 * nz;
        let steps = k * k * c_in;
        let mut packed = vec![0f32; c_out * steps];
        // each output channel's weights read in order (a strided read of the source costs a
        // cache miss per float on the deep layers), written `width` apart within the block
        for (b, block) in packed.chunks_exact_mut(steps * width).enumerate() {
            for l in 0..width {
                let src = &w[(b * width + l) * steps..][..steps];
                for (ci, taps) in src.chunks_exact(k * k).enumerate() {
                    for (t, v) in taps.iter().enumerate() {
                        block[(t * c_in + ci) * width + l] = *v;
                    }
                }
            }
        }
        Self {
            c_in,
            c_out,
            geom,
            transposed: false,
            nz,
            packed,
            bias,
        }
    }

    /// A transposed 4x4 stride-2 layer (padding 1), weight `[ci][co][4][4]` with each output
    /// channel's weights times `scale[co]` (a folded batch norm) and `shift` as its bias.
    ///
    /// Output pixel `(2i + py, 2j + px)` sums input rows `i - 1 + py + a` (a = 0, 1) with
    /// kernel row `3 - py - 2a`, and columns likewise: inside the input's zero border of 1
    /// that is a 2x2 window whose top-left is padded pixel `(i + py, j + px)`.
    fn new_transposed(
        w: &[f32],
        scale: Option<&[f32]>,
        shift: Vec<f32>,
        c_in: usize,
        c_out: usize,
    ) -> Self {
        let nz = if c_out.is_multiple_of(32) { 2 } else { 1 };
        let width = 16 * nz;
        let steps = 4 * c_in;
        let mut packed = vec![0f32; 4 * c_out * steps];
        // the source read in order (see `new`): tap (kh, kw) of input channel ci and output
        // channel co goes to phase (py, px) = ((3 - kh) % 2, (3 - kw) % 2), window row
        // a = (3 - py - kh) / 2 and column bb likewise
        for (ci, per_ci) in w.chunks_exact(c_out * 16).enumerate() {
            for (co, taps) in per_ci.chunks_exact(16).enumerate() {
                let s = scale.map_or(1.0, |s| s[co]);
                let (b, l) = (co / width, co % width);
                for (t, v) in taps.iter().enumerate() {
                    let (kh, kw) = (t / 4, t % 4);
                    let (py, px) = ((3 - kh) % 2, (3 - kw) % 2);
                    let (a, bb) = ((3 - py - kh) / 2, (3 - px - kw) / 2);
                    let phase = py * 2 + px;
                    let q = (a * 2 + bb) * c_in + ci;
                    packed[(phase * c_out + b * width) * steps + q * width + l] = *v * s;
                }
            }
        }
        Self {
            c_in,
            c_out,
            geom: TRANSPOSED,
            transposed: true,
            nz,
            packed,
            bias: shift,
        }
    }

    /// Output sides for input sides `(h, w)`.
    pub(super) fn out_sides(&self, (h, w): (usize, usize)) -> (usize, usize) {
        if self.transposed {
            (self.geom.transposed_out(h), self.geom.transposed_out(w))
        } else {
            (self.geom.conv_out(h), self.geom.conv_out(w))
        }
    }
}

/// The one transposed geometry of the stack (the decoders' and generators').
const TRANSPOSED: ConvGeom = ConvGeom {
    kernel: 4,
    stride: 2,
    padding: 1,
};

/// The layers packed for the tile, or `None` where they do not fit it (see [`stack_forward`]).
pub(super) fn pack_conv(
    c_in: usize,
    layers: &[(&Tensor, &Tensor, ConvGeom)],
) -> candle_core::Result<Option<Packed>> {
    use candle_core::DType::F32;
    let mut c = c_in;
    let mut packed = Vec::with_capacity(layers.len());
    for (w, b, g) in layers {
        let Ok((co, ci, kh, kw)) = w.dims4() else {
            return Ok(None);
        };
        let ok = w.dtype() == F32
            && b.dtype() == F32
            && b.dims() == [co]
            && ci == c
            && kh == g.kernel
            && kw == g.kernel
            && g.stride > 0
            && co > 0
            && co.is_multiple_of(16);
        if !ok {
            return Ok(None);
        }
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        packed.push(Layer::new(&wv, b.to_vec1()?, co, ci, *g));
        c = co;
    }
    Ok(Some(Packed(packed)))
}

/// The transposed layers packed for the tile, or `None` where they do not fit it (see
/// [`deconv_stack`]).
pub(super) fn pack_deconv(
    c_in: usize,
    layers: &[(&Tensor, Option<&Tensor>, &Tensor)],
) -> candle_core::Result<Option<Packed>> {
    use candle_core::DType::F32;
    let mut c = c_in;
    let mut packed = Vec::with_capacity(layers.len());
    for (w, scale, shift) in layers {
        let Ok((ci, co, kh, kw)) = w.dims4() else {
            return Ok(None);
        };
        let ok = w.dtype() == F32
            && shift.dtype() == F32
            && shift.dims() == [co]
            && scale.is_none_or(|s| s.dtype() == F32 && s.dims() == [co])
            && ci == c
            && kh == 4
            && kw == 4
            && co > 0
            && co.is_multiple_of(16);
        if !ok {
            return Ok(None);
        }
        let wv: Vec<f32> = w.flatten_all()?.to_vec1()?;
        let sv: Option<Vec<f32>> = scale.map(|s| s.to_vec1()).transpose()?;
        packed.push(Layer::new_transposed(
            &wv,
            sv.as_deref(),
            shift.to_vec1()?,
            ci,
            co,
        ));
        c = co;
    }
    Ok(Some(Packed(packed)))
}
