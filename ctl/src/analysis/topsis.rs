//! TOPSIS (Hwang & Yoon, 1981): ranks alternatives by their relative closeness to the ideal
//! solution. Each criterion's column is vector-normalised (`x / ‖x‖`), weighted (weights
//! scaled to sum to 1), and each alternative's distances to the best and the worst value
//! of every column (the largest for a benefit, the smallest for a cost) give its score
//! `d⁻ / (d⁺ + d⁻)` in [0, 1], higher better.
//!
//! Hand-written: the method is a dozen lines of arithmetic, and no maintained Rust crate
//! implements it; the tests check it against pymcdm (tests/e2e/capacity.rs).

use serde::Serialize;

/// Whether more or less of a criterion is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More is better.
    Benefit,
    /// Less is better.
    Cost,
}

/// Why TOPSIS cannot rank a matrix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopsisError {
    /// Rows of different lengths, or lengths unlike the weights.
    #[error("every alternative needs one value per criterion ({criteria})")]
    Shape {
        /// Criteria.
        criteria: usize,
    },
    /// A weight is negative or not finite, or they sum to zero.
    #[error("weights must be finite, at least 0, and not all 0")]
    Weights,
    /// A value is not finite.
    #[error("alternative {row}: a value is not a finite number")]
    Value {
        /// The alternative.
        row: usize,
    },
}

/// The TOPSIS score of each row of `matrix` (alternatives × criteria).
pub fn scores(
    matrix: &[Vec<f64>],
    weights: &[f64],
    directions: &[Direction],
) -> Result<Vec<f64>, TopsisError> {
    let criteria = weights.len();
    if directions.len() != criteria || matrix.iter().any(|row| row.len() != criteria) {
        return Err(TopsisError::Shape { criteria });
    }
    let total: f64 = weights.iter().sum();
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 {
        return Err(TopsisError::Weights);
    }
    if let Some(row) = matrix.iter().position(|r| r.iter().any(|v| !v.is_finite())) {
        return Err(TopsisError::Value { row });
    }
    let weighted: Vec<Vec<f64>> = {
        let norms: Vec<f64> = (0..criteria)
            .map(|j| matrix.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt())
            .collect();
        matrix
            .iter()
            .map(|r| {
                (0..criteria)
                    .map(|j| {
                        let normal = if norms[j] > 0.0 { r[j] / norms[j] } else { 0.0 };
                        normal * weights[j] / total
                    })
                    .collect()
            })
            .collect()
    };
    let column = |j: usize| weighted.iter().map(move |r| r[j]);
    let (best, worst): (Vec<f64>, Vec<f64>) = (0..criteria)
        .map(|j| {
            let (max, min) = (
                column(j).fold(f64::NEG_INFINITY, f64::max),
                column(j).fold(f64::INFINITY, f64::min),
            );
            match directions[j] {
                Direction::Benefit => (max, min),
                Direction::Cost => (min, max),
            }
        })
        .unzip();
    let distance = |r: &[f64], to: &[f64]| {
        r.iter()
            .zip(to)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt()
    };
    Ok(weighted
        .iter()
        .map(|r| {
            let (to_best, to_worst) = (distance(r, &best), distance(r, &worst));
            if to_best + to_worst > 0.0 {
                to_worst / (to_best + to_worst)
            } else {
                // Every alternative is the same: all equally close.
                1.0
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_textbook_matrix() {
        // Three alternatives: cost (less better), throughput and capacity (more better).
        // Values worked by hand with the formulas above (and by pymcdm 1.4 with vector
        // normalisation: 0.67286, 0.20582, 0.74376).
        let matrix = vec![
            vec![1.0, 100.0, 3.0],
            vec![2.0, 80.0, 4.0],
            vec![0.5, 60.0, 2.0],
        ];
        let s = scores(
            &matrix,
            &[0.5, 0.3, 0.2],
            &[Direction::Cost, Direction::Benefit, Direction::Benefit],
        )
        .unwrap();
        for (got, want) in s.iter().zip([0.672_862_6, 0.205_822_1, 0.743_759_7]) {
            assert!((got - want).abs() < 1e-6, "{s:?}");
        }
        // Weights are scaled: the same ranking for weights ×10.
        let scaled = scores(
            &matrix,
            &[5.0, 3.0, 2.0],
            &[Direction::Cost, Direction::Benefit, Direction::Benefit],
        )
        .unwrap();
        assert!(s.iter().zip(&scaled).all(|(a, b)| (a - b).abs() < 1e-12));
    }

    #[test]
    fn bad_input_is_refused() {
        let d = [Direction::Benefit];
        assert_eq!(
            scores(&[vec![1.0, 2.0]], &[1.0], &d),
            Err(TopsisError::Shape { criteria: 1 })
        );
        assert_eq!(scores(&[vec![1.0]], &[0.0], &d), Err(TopsisError::Weights));
        assert_eq!(scores(&[vec![1.0]], &[-1.0], &d), Err(TopsisError::Weights));
        assert_eq!(
            scores(&[vec![1.0], vec![f64::NAN]], &[1.0], &d),
            Err(TopsisError::Value { row: 1 })
        );
        assert_eq!(
            scores(&[vec![3.0], vec![3.0]], &[1.0], &d).unwrap(),
            vec![1.0, 1.0]
        );
    }
}
