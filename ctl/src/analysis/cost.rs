//! GPU prices for cost figures: the `--cost-file` YAML (docs/results.md, "Price file"),
//! falling back to the matrix's `price_per_hour` of each GPU type.
//!
//! ```yaml
//! currency: USD          # optional, shown next to costs
//! prices:                # price of one GPU for one hour, by GPU type
//!   H100-80GB: 2.49
//!   L4: 0.35
//!   cpu: 0.04            # CPU-only units, per unit-hour
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why a price file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PriceFileError {
    /// The file could not be read.
    #[error("failed to read `{path}`")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not have the expected shape.
    #[error("`{path}` is not a GPU price file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A price is negative or not a number.
    #[error("`{path}`: price of `{gpu_type}` must be a number ≥ 0, got {price}")]
    BadPrice {
        /// The file.
        path: PathBuf,
        /// The GPU type.
        gpu_type: String,
        /// The price given.
        price: f64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    #[serde(default)]
    currency: Option<String>,
    prices: BTreeMap<String, f64>,
}

/// Prices per GPU-hour by GPU type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prices {
    /// Currency label, e.g. "USD"; empty when the file names none.
    pub currency: String,
    by_type: BTreeMap<String, f64>,
}

impl Prices {
    /// No price file: only the matrix's prices count.
    pub fn none() -> Prices {
        Prices::default()
    }

    /// Reads a price file.
    pub fn load(path: &Path) -> Result<Prices, PriceFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| PriceFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Prices::parse(path, &text)
    }

    /// Parses a price file's text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Prices, PriceFileError> {
        let file: PriceFile =
            serde_saphyr::from_str(text).map_err(|source| PriceFileError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        for (gpu_type, price) in &file.prices {
            if !price.is_finite() || *price < 0.0 {
                return Err(PriceFileError::BadPrice {
                    path: path.to_owned(),
                    gpu_type: gpu_type.clone(),
                    price: *price,
                });
            }
        }
        Ok(Prices {
            currency: file.currency.unwrap_or_default(),
            by_type: file
                .prices
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        })
    }

    /// Price of one GPU of `gpu_type` ("cpu" for CPU units) for an hour: the file's, else
    /// the matrix's (`matrix_price`, 0 = none), else `None`. Types match case-insensitively.
    pub fn per_gpu_hour(&self, gpu_type: &str, matrix_price: f64) -> Option<f64> {
        let key = if gpu_type.is_empty() { "cpu" } else { gpu_type };
        self.by_type
            .get(&key.to_ascii_lowercase())
            .copied()
            .or((matrix_price > 0.0).then_some(matrix_price))
    }

    /// "USD " or "" for labels.
    pub fn currency_prefix(&self) -> String {
        if self.currency.is_empty() {
            String::new()
        } else {
            format!("{} ", self.currency)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_prices_override_the_matrix() {
        let prices = Prices::parse(
            Path::new("p.yaml"),
            "currency: EUR\nprices:\n  H100-80GB: 2.5\n  cpu: 0.1\n",
        )
        .unwrap();
        assert_eq!(prices.per_gpu_hour("h100-80gb", 9.0), Some(2.5));
        assert_eq!(prices.per_gpu_hour("", 0.0), Some(0.1));
        assert_eq!(prices.per_gpu_hour("L4", 0.35), Some(0.35));
        assert_eq!(prices.per_gpu_hour("L4", 0.0), None);
        assert_eq!(prices.currency_prefix(), "EUR ");
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err = Prices::parse(Path::new("p.yaml"), "prices:\n  L4: -1\n").unwrap_err();
        assert!(err.to_string().contains("`L4`"), "{err}");
        let err = Prices::parse(Path::new("p.yaml"), "price: {}\n").unwrap_err();
        assert!(err.to_string().contains("p.yaml"), "{err}");
    }
}
