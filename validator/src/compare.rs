//! Comparing a node's output with a re-execution.

/// Largest absolute element-wise difference between two outputs, or `None` when their lengths differ (a different
/// shape is always a mismatch). NaN anywhere counts as an infinite difference.
pub fn max_abs_diff(node: &[f32], ours: &[f32]) -> Option<f64> {
    if node.len() != ours.len() {
        return None;
    }
    Some(node.iter().zip(ours).fold(0.0f64, |acc, (&a, &b)| {
        let d = (f64::from(a) - f64::from(b)).abs();
        if d.is_nan() { f64::INFINITY } else { acc.max(d) }
    }))
}

/// Whether a re-execution agrees with the node's output under the model's tolerance.
pub fn agrees(node: &[f32], ours: &[f32], max_abs_diff_allowed: f64) -> bool {
    max_abs_diff(node, ours).is_some_and(|d| d <= max_abs_diff_allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_and_shape_rules() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), Some(0.5));
        assert!(agrees(&[1.0, 2.0], &[1.0, 2.0005], 1e-3));
        assert!(!agrees(&[1.0, 2.0], &[1.0, 2.01], 1e-3));
        assert!(!agrees(&[1.0], &[1.0, 2.0], 1.0));
        assert!(!agrees(&[f32::NAN], &[0.0], 1e9));
    }
}
