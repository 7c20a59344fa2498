//! evalctl's word tokenizer: one whitespace-separated word is one token.
//!
//! It is the simulated server's tokenizer, and the load generator counts prompt lengths by it
//! when neither the server's `/tokenize` nor a `tokenizer.json` is at hand. It lives in a crate
//! of its own so that the measuring instrument does not depend on the simulator.
//!
//! This convention is what makes exact-length prompts trivial against the simulator: a prompt of
//! `n` words separated by single spaces is exactly `n` prompt tokens, and the generated text of
//! `n` output tokens re-tokenizes to exactly `n` tokens. Words are split on Unicode whitespace
//! (`str::split_whitespace`), so leading, trailing and repeated whitespace count for nothing.
//!
//! Token ids are a stable 32-bit FNV-1a hash of the word, masked to 31 bits, so the same word
//! always has the same id in every process and release. Ids are not reversible.

use rand::Rng;

/// Words the simulator generates from. Short, ASCII, and free of whitespace, so each is one
/// token under [`count_tokens`].
pub const VOCABULARY: &[&str] = &[
    "the",
    "model",
    "token",
    "stream",
    "latency",
    "batch",
    "cache",
    "prefill",
    "decode",
    "server",
    "request",
    "tensor",
    "kernel",
    "memory",
    "bandwidth",
    "sample",
    "layer",
    "weight",
    "answer",
    "simulated",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "and",
    "then",
    "again",
    "light",
    "speed",
];

/// Number of tokens in `text`: its whitespace-separated words.
pub fn count_tokens(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Token ids of `text`, one per whitespace-separated word.
pub fn tokenize(text: &str) -> Vec<u32> {
    text.split_whitespace().map(token_id).collect()
}

/// Stable id of one word: FNV-1a over its UTF-8 bytes, masked to 31 bits.
pub fn token_id(word: &str) -> u32 {
    const OFFSET: u32 = 0x811c_9dc5;
    const PRIME: u32 = 0x0100_0193;
    let hash = word
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u32::from(b)).wrapping_mul(PRIME));
    hash & 0x7fff_ffff
}

/// Appends the text of one generated token to `out`: a vocabulary word, preceded by a space
/// unless it is the first token of the output. Returns the word.
pub fn push_token_text(rng: &mut impl Rng, first: bool, out: &mut String) -> &'static str {
    let word = VOCABULARY[rng.random_range(0..VOCABULARY.len())];
    if !first {
        out.push(' ');
    }
    out.push_str(word);
    word
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn counts_words_not_spaces() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("   "), 0);
        assert_eq!(count_tokens("one"), 1);
        assert_eq!(count_tokens("  one  two\tthree\nfour "), 4);
        assert_eq!(count_tokens("héllo wörld ✓"), 3);
    }

    #[test]
    fn ids_are_stable_and_per_word() {
        assert_eq!(
            tokenize("a b a"),
            vec![token_id("a"), token_id("b"), token_id("a")]
        );
        assert_ne!(token_id("a"), token_id("b"));
        // FNV-1a of "a" is 0xe40c292c; masked to 31 bits.
        assert_eq!(token_id("a"), 0xe40c_292c & 0x7fff_ffff);
    }

    #[test]
    fn generated_text_retokenizes_to_its_token_count() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut text = String::new();
        for i in 0..100 {
            push_token_text(&mut rng, i == 0, &mut text);
        }
        assert_eq!(count_tokens(&text), 100);
        assert!(!text.starts_with(' '));
        assert!(VOCABULARY.iter().all(|w| count_tokens(w) == 1));
    }
}
