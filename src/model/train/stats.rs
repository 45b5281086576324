//! Summary statistics of step timings.

/// The median of `v` (0 when empty; the mean of the middle two for an even count, as Python's
/// `statistics.median`); sorts `v`.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        0.5 * (v[m - 1] + v[m])
    }
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_even_and_empty_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&mut [0.5, 9.0, 0.4, 0.6, 0.45, 0.55, 0.5]), 0.5);
        assert_eq!(median(&mut []), 0.0);
    }
}
