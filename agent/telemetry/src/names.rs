//! GPU names as drivers report them, normalised to the types units ask for.
//!
//! Order of the rules: a user alias (config `gpu_aliases`, matched on the exact driver name,
//! case-insensitively), then the table of known NVIDIA names, then a fallback that derives
//! `<MODEL>-<N>GB` from the name and the memory the driver reports.

use std::collections::BTreeMap;

/// Known driver names (lower case, spaces normalised) → type. Checked in order: the first
/// entry whose every word occurs in the name wins, so specific names come first.
const KNOWN: &[(&[&str], &str)] = &[
    // Hopper / Blackwell.
    (&["gh200"], "GH200"),
    (&["gb200"], "GB200"),
    (&["b200"], "B200"),
    (&["b100"], "B100"),
    (&["h200", "nvl"], "H200-NVL"),
    (&["h200"], "H200"),
    (&["h100", "nvl"], "H100-NVL"),
    (&["h100", "pcie"], "H100-PCIe"),
    (&["h100", "80gb", "hbm3"], "H100-80GB"),
    (&["h100", "sxm"], "H100-80GB"),
    (&["h100", "94gb"], "H100-NVL"),
    (&["h100", "80gb"], "H100-80GB"),
    (&["h800"], "H800"),
    (&["h20"], "H20"),
    // Ampere.
    (&["a100", "80gb"], "A100-80GB"),
    (&["a100", "40gb"], "A100-40GB"),
    (&["a800", "80gb"], "A800-80GB"),
    (&["a10g"], "A10G"),
    (&["a10"], "A10"),
    (&["a30"], "A30"),
    (&["a40"], "A40"),
    (&["rtx", "a6000"], "RTX-A6000"),
    // Ada / Turing / Volta.
    (&["l40s"], "L40S"),
    (&["l40"], "L40"),
    (&["l4"], "L4"),
    (&["rtx", "6000", "ada"], "RTX-6000-Ada"),
    (&["rtx", "pro", "6000"], "RTX-PRO-6000"),
    (&["rtx", "5090"], "RTX-5090"),
    (&["rtx", "4090"], "RTX-4090"),
    (&["rtx", "3090"], "RTX-3090"),
    (&["t4"], "T4"),
    (&["v100", "32gb"], "V100-32GB"),
    (&["v100"], "V100-16GB"),
];

/// The type of a GPU named `name` by its driver, with `memory_mib` of memory.
///
/// ```
/// # use std::collections::BTreeMap;
/// use evalctl_telemetry::normalise_gpu_name;
/// let none = BTreeMap::new();
/// assert_eq!(normalise_gpu_name("NVIDIA H100 80GB HBM3", 81_559, &none), "H100-80GB");
/// ```
pub fn normalise_gpu_name(
    name: &str,
    memory_mib: u64,
    aliases: &BTreeMap<String, String>,
) -> String {
    if let Some(alias) = aliases
        .iter()
        .find(|(from, _)| from.trim().eq_ignore_ascii_case(name.trim()))
        .map(|(_, to)| to)
    {
        return alias.clone();
    }
    let words = words(name);
    for (needles, gpu_type) in KNOWN {
        if needles.iter().all(|n| words.iter().any(|w| w == n)) {
            return (*gpu_type).to_owned();
        }
    }
    fallback(&words, memory_mib)
}

/// Lower-case words of a name, vendor words dropped ("NVIDIA GeForce RTX 4090" → rtx, 4090).
fn words(name: &str) -> Vec<String> {
    name.split(|c: char| c.is_whitespace() || c == '-' || c == '_')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .filter(|w| !matches!(w.as_str(), "nvidia" | "geforce" | "tesla" | "quadro"))
        .collect()
}

/// `<MODEL>-<N>GB`: the name's words (without memory and packaging words) joined by `-` in
/// upper case, then the memory rounded to whole GB as the driver states it in the name,
/// else from `memory_mib` (GiB, rounded; e.g. 81,559 MiB → 80GB).
fn fallback(words: &[String], memory_mib: u64) -> String {
    let stated = words.iter().find_map(|w| {
        w.strip_suffix("gb")
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
    });
    let model: Vec<String> = words
        .iter()
        .filter(|w| !is_memory_word(w) && !is_packaging_word(w))
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let model = if model.is_empty() {
        "GPU".to_owned()
    } else {
        model.join("-")
    };
    let gb = stated.or_else(|| (memory_mib > 0).then(|| gb_from_mib(memory_mib)));
    match gb {
        Some(gb) => format!("{model}-{gb}GB"),
        None => model,
    }
}

/// "80gb".
fn is_memory_word(word: &str) -> bool {
    word.strip_suffix("gb")
        .is_some_and(|n| n.parse::<u64>().is_ok())
}

/// Memory technology and form factor words, not part of a model name.
fn is_packaging_word(word: &str) -> bool {
    matches!(
        word,
        "hbm2" | "hbm2e" | "hbm3" | "hbm3e" | "sxm" | "sxm2" | "sxm4" | "sxm5"
    )
}

/// Marketed GB from the usable MiB a driver reports (a little below the nominal size):
/// the next multiple of 2 GiB when the usable size is within 8% of it, e.g. 81,559 MiB → 80,
/// 23,034 MiB → 24, 15,360 MiB → 16.
fn gb_from_mib(memory_mib: u64) -> u64 {
    let gib = memory_mib as f64 / 1024.0;
    let nominal = (gib / 2.0).ceil() as u64 * 2;
    if (nominal as f64) * 0.92 <= gib {
        nominal
    } else {
        gib.round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalise(name: &str, mib: u64) -> String {
        normalise_gpu_name(name, mib, &BTreeMap::new())
    }

    #[test]
    fn known_names_map_to_their_types() {
        let cases = [
            ("NVIDIA H100 80GB HBM3", 81_559, "H100-80GB"),
            ("NVIDIA H100 PCIe", 81_559, "H100-PCIe"),
            ("NVIDIA H100 NVL", 95_830, "H100-NVL"),
            ("NVIDIA H200", 143_771, "H200"),
            ("NVIDIA H200 NVL", 143_771, "H200-NVL"),
            ("NVIDIA A100-SXM4-80GB", 81_920, "A100-80GB"),
            ("NVIDIA A100-SXM4-40GB", 40_960, "A100-40GB"),
            ("NVIDIA A100-PCIE-40GB", 40_960, "A100-40GB"),
            ("NVIDIA A100 80GB PCIe", 81_920, "A100-80GB"),
            ("NVIDIA L4", 23_034, "L4"),
            ("NVIDIA L40S", 46_068, "L40S"),
            ("NVIDIA A10G", 23_028, "A10G"),
            ("NVIDIA A10", 23_028, "A10"),
            ("Tesla T4", 15_360, "T4"),
            ("Tesla V100-SXM2-16GB", 16_384, "V100-16GB"),
            ("Tesla V100-SXM2-32GB", 32_768, "V100-32GB"),
            ("NVIDIA B200", 183_359, "B200"),
            ("NVIDIA GH200 480GB", 97_871, "GH200"),
            ("NVIDIA GeForce RTX 4090", 24_564, "RTX-4090"),
            ("NVIDIA RTX 6000 Ada Generation", 49_140, "RTX-6000-Ada"),
        ];
        for (name, mib, expected) in cases {
            assert_eq!(normalise(name, mib), expected, "{name}");
        }
    }

    #[test]
    fn unknown_names_fall_back_to_model_and_memory() {
        // Memory in the name wins over the reported size.
        assert_eq!(normalise("NVIDIA Z900 96GB HBM3e", 90_000), "Z900-96GB");
        // Otherwise the reported size, rounded to the marketed GB.
        assert_eq!(normalise("NVIDIA Z900", 81_559), "Z900-80GB");
        assert_eq!(
            normalise("NVIDIA GeForce RTX 2080 Ti", 11_019),
            "RTX-2080-TI-11GB"
        );
        assert_eq!(normalise("NVIDIA", 0), "GPU");
    }

    #[test]
    fn aliases_win_and_match_the_exact_name_case_insensitively() {
        let aliases = BTreeMap::from([
            ("NVIDIA H100 80GB HBM3".to_owned(), "h100-sxm".to_owned()),
            ("Lab Card".to_owned(), "LAB".to_owned()),
        ]);
        assert_eq!(
            normalise_gpu_name("nvidia h100 80gb hbm3", 81_559, &aliases),
            "h100-sxm"
        );
        assert_eq!(normalise_gpu_name("lab card", 1024, &aliases), "LAB");
        assert_eq!(normalise_gpu_name("NVIDIA L4", 23_034, &aliases), "L4");
    }

    #[test]
    fn marketed_sizes_from_usable_mib() {
        for (mib, gb) in [
            (81_559, 80),
            (23_034, 24),
            (15_360, 16),
            (40_960, 40),
            (143_771, 142),
        ] {
            assert_eq!(gb_from_mib(mib), gb, "{mib} MiB");
        }
    }
}
