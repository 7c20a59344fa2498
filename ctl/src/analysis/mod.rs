//! Analysis of stored results shared by `report`, `compare` and `recommend`: steps as
//! points keyed by configuration, prices, Pareto fronts, capacity and SLO ranking. The
//! comparison rules and the comparable metrics are the results crate's
//! (`evalctl_results::compare`), which the coordinator's baseline verdicts use too.

pub mod accuracy;
pub mod capacity;
pub mod cost;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod pareto;
pub mod points;
pub mod recommend;
pub mod topsis;
