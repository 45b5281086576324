//! Pins the vendored candle-core's backward pass (vendor/README.md): a gradient's first
//! contribution is stored as it is instead of being added to zeros, so every path that stores
//! or accumulates a gradient is checked here against values worked out by hand.

use candle_core::{Device, Tensor, Var, D};

fn var(v: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn grad_of(grads: &candle_core::backprop::GradStore, x: &Var) -> Vec<f32> {
    let g = grads.get(x.as_tensor()).expect("no gradient");
    assert!(g.is_contiguous(), "gradient is not contiguous");
    assert_eq!(g.shape(), x.as_tensor().shape());
    g.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn close(a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "[{i}] {x} vs {y}");
    }
}

#[test]
fn a_tensor_used_twice_gets_the_sum_of_both_gradients() {
    let x = var(&[1.0, -2.0, 3.0], &[3]);
    let t = x.as_tensor();
    // y = sum(3x) + sum(x²) → dy/dx = 3 + 2x
    let y = ((t * 3.0).unwrap().sum_all().unwrap() + t.sqr().unwrap().sum_all().unwrap()).unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[5.0, -1.0, 9.0]);
}

#[test]
fn both_operands_of_one_add_may_be_the_same_tensor() {
    let x = var(&[1.0, 2.0], &[2]);
    let t = x.as_tensor();
    let y = (t + t).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[2.0, 2.0]);
    // and a stored first contribution is not changed by a later one added elsewhere
    let y = ((t + t).unwrap() * t).unwrap().sum_all().unwrap(); // 2x² → 4x
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[4.0, 8.0]);
}

#[test]
fn subtraction_and_negation_pass_back_negated_gradients() {
    let a = var(&[1.0, 2.0], &[2]);
    let b = var(&[5.0, -1.0], &[2]);
    // y = sum((a - b) * a) - sum(-b) → dy/da = 2a - b, dy/db = -a + 1
    let (ta, tb) = (a.as_tensor(), b.as_tensor());
    let y = (((ta - tb).unwrap() * ta).unwrap().sum_all().unwrap()
        - tb.neg().unwrap().sum_all().unwrap())
    .unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &a), &[-3.0, 5.0]);
    close(&grad_of(&g, &b), &[0.0, -1.0]);
}

#[test]
fn reductions_broadcast_their_gradient_back_to_the_full_shape() {
    let x = var(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let t = x.as_tensor();
    // rows summed, weighted per row, then summed again: dy/dx[i, j] = w[i]
    let w = Tensor::from_slice(&[2f32, -1.0], (2, 1), &Device::Cpu).unwrap();
    let y = t
        .sum_keepdim(D::Minus1)
        .unwrap()
        .mul(&w)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[2.0, 2.0, 2.0, -1.0, -1.0, -1.0]);
    // max: the gradient goes to the arg-max of each row only
    let y = t.max_keepdim(D::Minus1).unwrap().sum_all().unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[0.0, 0.0, 1.0, 0.0, 0.0, 1.0]);
}

#[test]
fn a_strided_first_contribution_is_stored_contiguous() {
    // the gradient reaching x through a transpose is a transposed (strided) view
    let x = var(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let m = Tensor::from_slice(&[1f32, 10.0], (2, 1), &Device::Cpu).unwrap();
    // y = sum(x^T · m) = Σ_j Σ_i x[i, j] m[i] → dy/dx[i, j] = m[i]
    let y = x
        .as_tensor()
        .t()
        .unwrap()
        .matmul(&m)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = y.backward().unwrap();
    close(&grad_of(&g, &x), &[1.0, 1.0, 1.0, 10.0, 10.0, 10.0]);
}

#[test]
fn a_deep_chain_matches_finite_differences() {
    // a small two-layer net with the ops the models use: matmul, broadcast add, exp, mean
    let dev = Device::Cpu;
    let x = Tensor::from_slice(&[0.3f32, -0.2, 0.5, 0.1, -0.4, 0.2], (2, 3), &dev).unwrap();
    let w1 = var(&[0.1, -0.3, 0.2, 0.4, 0.05, -0.1], &[3, 2]);
    let b1 = var(&[0.01, -0.02], &[2]);
    let loss = |w: &Tensor, b: &Tensor| -> Tensor {
        let h = x.matmul(w).unwrap().broadcast_add(b).unwrap();
        let e = (h.exp().unwrap() - &h).unwrap();
        (e.sqr().unwrap().mean_all().unwrap() + h.sum_all().unwrap()).unwrap()
    };
    let g = loss(w1.as_tensor(), b1.as_tensor()).backward().unwrap();
    for (which, v) in [&w1, &b1].into_iter().enumerate() {
        let analytic = grad_of(&g, v);
        let base: Vec<f32> = v.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        for i in 0..base.len() {
            let eps = 1e-2f32;
            let at = |d: f32| {
                let mut p = base.clone();
                p[i] += d;
                let t = Tensor::from_slice(&p, v.as_tensor().shape(), &dev).unwrap();
                let (w, b) = if which == 0 {
                    (t, b1.as_tensor().clone())
                } else {
                    (w1.as_tensor().clone(), t)
                };
                loss(&w, &b).to_scalar::<f32>().unwrap()
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 2e-3,
                "param {i}: numeric {numeric} vs analytic {}",
                analytic[i]
            );
        }
    }
}
