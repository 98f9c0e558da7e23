//! Comparing a node's output with a re-execution.
//!
//! One element's difference is `|a - b| / max(1, |a|, |b|)`: absolute for values within [-1, 1] (embeddings,
//! probabilities, most logits), relative beyond, so an honest node is never judged by rounding on large outputs.
//! Identical values (the same infinity, NaN on both sides) do not differ; NaN against a number differs infinitely.

/// One element's difference under the rule above.
pub fn element_diff(a: f64, b: f64) -> f64 {
    if a == b || (a.is_nan() && b.is_nan()) {
        return 0.0;
    }
    let d = (a - b).abs() / 1f64.max(a.abs()).max(b.abs());
    if d.is_nan() { f64::INFINITY } else { d }
}

/// Largest element-wise difference between two outputs, or `None` when their lengths differ (a different shape is
/// always a mismatch).
pub fn max_diff<T: Copy + Into<f64>>(node: &[T], ours: &[T]) -> Option<f64> {
    if node.len() != ours.len() {
        return None;
    }
    Some(node.iter().zip(ours).fold(0.0f64, |acc, (&a, &b)| acc.max(element_diff(a.into(), b.into()))))
}

/// Whether a re-execution agrees with the node's output under the model's tolerance.
pub fn agrees(node: &[f32], ours: &[f32], tolerance: f64) -> bool {
    max_diff(node, ours).is_some_and(|d| d <= tolerance)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_and_shape_rules() {
        assert_eq!(max_diff(&[1.0f32, 0.5], &[1.0, 0.25]), Some(0.25));
        assert!(agrees(&[1.0, 0.2], &[1.0, 0.2005], 1e-3));
        assert!(!agrees(&[1.0, 0.2], &[1.0, 0.21], 1e-3));
        assert!(!agrees(&[1.0], &[1.0, 2.0], 1.0));
    }

    #[test]
    fn large_values_compare_relatively_and_identical_non_finite_values_agree() {
        // One ulp apart at 1e6 is 0.0625 absolute: within 1e-5 relatively.
        let a = 1.0e6f32;
        let b = f32::from_bits(a.to_bits() + 1);
        assert!(agrees(&[a], &[b], 1e-5));
        assert!(!agrees(&[a], &[a * 1.001], 1e-5));
        // Overflow or NaN on both sides is the same answer; on one side only it is a mismatch.
        assert!(agrees(
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY],
            0.0
        ));
        assert!(!agrees(&[f32::NAN], &[0.0], 1e9));
        assert!(!agrees(&[f32::INFINITY], &[f32::NEG_INFINITY], 1e9));
        assert!(!agrees(&[f32::INFINITY], &[3.0e38], 1e9));
        assert_eq!(max_diff(&[1.0f64, 2.0], &[1.0, 2.0]), Some(0.0));
    }
}
