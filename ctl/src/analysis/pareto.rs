//! Pareto fronts: the points no other point beats on both axes.

/// Indices of the points on the front when both coordinates are better higher (e.g.
/// tokens/s per user against tokens/s per GPU), ordered by increasing `x`. Points with a
/// non-finite coordinate are never on it; of equal points, the first is.
pub fn front_max_max(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].0.is_finite() && points[i].1.is_finite())
        .collect();
    // By x descending, then y descending, so a point is on the front exactly when its y
    // beats every y seen before it.
    order.sort_by(|&a, &b| {
        points[b]
            .0
            .total_cmp(&points[a].0)
            .then(points[b].1.total_cmp(&points[a].1))
            .then(a.cmp(&b))
    });
    let mut front = Vec::new();
    let mut best_y = f64::NEG_INFINITY;
    for i in order {
        if points[i].1 > best_y {
            best_y = points[i].1;
            front.push(i);
        }
    }
    front.reverse();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dominated_points_are_left_out() {
        let points = [
            (10.0, 100.0), // 0: front (most per user)
            (5.0, 300.0),  // 1: front
            (5.0, 200.0),  // 2: dominated by 1
            (2.0, 250.0),  // 3: dominated by 1
            (1.0, 400.0),  // 4: front (most per GPU)
            (f64::NAN, 1e9),
        ];
        assert_eq!(front_max_max(&points), vec![4, 1, 0]);
        assert!(front_max_max(&[]).is_empty());
    }
}
