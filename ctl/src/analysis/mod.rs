//! Analysis of stored results shared by `report`, `compare` and `recommend`: steps as
//! points keyed by configuration, prices, comparable metrics, regressions, Pareto fronts
//! and SLO ranking.

pub mod capacity;
pub mod compare;
pub mod cost;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod metric;
pub mod pareto;
pub mod points;
pub mod recommend;
pub mod topsis;
