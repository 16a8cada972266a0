//! Summaries printed in the tables.

/// Mean, spread and extremes of a sample.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// How many values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Standard deviation (population).
    pub std: f64,
    /// Mean of the magnitudes.
    pub mean_abs: f64,
    /// Largest magnitude.
    pub max_abs: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Median.
    pub median: f64,
}

impl Summary {
    /// The summary of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        Self {
            n: values.len(),
            mean,
            std: var.sqrt(),
            mean_abs: values.iter().map(|v| v.abs()).sum::<f64>() / n,
            max_abs: values.iter().fold(0.0, |m, v| m.max(v.abs())),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            median: sorted[sorted.len() / 2],
        }
    }
}

/// Least-squares slope of `y` against `x` (0 with fewer than two points).
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// `a / b` as text, `-` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b.abs() < f64::EPSILON {
        "-".to_owned()
    } else {
        format!("{:.2}", a / b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_and_slope() {
        let s = Summary::of(&[1.0, -3.0, 2.0]);
        assert_eq!(
            (s.n, s.min, s.max, s.max_abs, s.median),
            (3, -3.0, 2.0, 3.0, 1.0)
        );
        assert!((s.mean - 0.0).abs() < 1e-12);
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-12);
    }
}
