//! The paper's own map: a dense layer without bias, trained by Adam on the MSE (candle).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use nalgebra::DMatrix;

use super::{LatentError, Result};

/// Row-major copy of `m` (`N x d`) as a `[N, d]` tensor on `device`.
fn to_tensor(m: &DMatrix<f32>, device: &Device) -> Result<Tensor> {
    let row_major = m.transpose();
    Ok(Tensor::from_slice(
        row_major.as_slice(),
        (m.nrows(), m.ncols()),
        device,
    )?)
}

/// Trains `W` (`d1 x d2`, from zero) minimising `mean((XW − Y)²) + l2·‖W‖²_F` with full-batch
/// Adam (β = 0.9, 0.999, ε = 1e-7 as in Keras). Returns `W` and the final loss.
pub(super) fn fit_sgd(
    x: &DMatrix<f32>,
    y: &DMatrix<f32>,
    steps: usize,
    lr: f64,
    l2: f64,
    device: &Device,
) -> Result<(DMatrix<f64>, f64)> {
    if steps == 0 || !(lr.is_finite() && lr > 0.0) || !(l2.is_finite() && l2 >= 0.0) {
        return Err(LatentError::InvalidArgument(format!(
            "sgd needs steps > 0, lr > 0 and l2 >= 0 (finite), got steps={steps}, lr={lr}, l2={l2}"
        )));
    }
    let (d1, d2) = (x.ncols(), y.ncols());
    let xt = to_tensor(x, device)?;
    let yt = to_tensor(y, device)?;
    let w = Var::zeros((d1, d2), DType::F32, device)?;
    let params = ParamsAdamW {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-7,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(vec![w.clone()], params)?;
    for _ in 0..steps {
        opt.backward_step(&loss(&xt, &yt, &w, l2)?)?;
    }
    let final_loss = f64::from(loss(&xt, &yt, &w, l2)?.to_scalar::<f32>()?);
    let values = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
    if !final_loss.is_finite() || values.iter().any(|v| !v.is_finite()) {
        return Err(LatentError::Degenerate(format!(
            "Adam diverged (final loss {final_loss}); lower the learning rate"
        )));
    }
    let w = DMatrix::from_row_slice(d1, d2, &values).map(f64::from);
    Ok((w, final_loss))
}

fn loss(x: &Tensor, y: &Tensor, w: &Var, l2: f64) -> Result<Tensor> {
    let mse = x.matmul(w.as_tensor())?.sub(y)?.sqr()?.mean_all()?;
    if l2 == 0.0 {
        return Ok(mse);
    }
    let penalty = (w.as_tensor().sqr()?.sum_all()? * l2)?;
    Ok(mse.add(&penalty)?)
}
