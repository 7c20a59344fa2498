//! The simulator's prefix cache, modelled on vLLM's automatic prefix caching: a prompt's
//! tokens are cut into blocks of [`BLOCK_TOKENS`], each block named by a hash chained over
//! every token before it, so a block hits only when the whole prefix up to it was seen. A
//! request's hit is its leading run of cached blocks, never its last token (the engine must
//! compute at least one position to produce the first output token); hit tokens skip the
//! prefill cost. The cache holds a bounded number of blocks and evicts the least recently
//! used first. Counted as vLLM counts: `prefix_cache_queries_total` grows by the prompt's
//! tokens, `prefix_cache_hits_total` by the hit tokens.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};

/// Tokens per cached block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;

/// A bounded cache of prompt blocks.
#[derive(Debug)]
pub(crate) struct PrefixCache {
    /// Block hash → the use count when it was last used.
    blocks: HashMap<u64, u64>,
    capacity: usize,
    uses: u64,
}

impl PrefixCache {
    /// A cache of at most `capacity_tokens` tokens (rounded down to whole blocks, at least
    /// one).
    pub fn new(capacity_tokens: usize) -> PrefixCache {
        PrefixCache {
            blocks: HashMap::new(),
            capacity: (capacity_tokens / BLOCK_TOKENS).max(1),
            uses: 0,
        }
    }

    /// Looks up `tokens`' prefix and caches all its full blocks; returns the hit tokens.
    pub fn lookup_and_insert(&mut self, tokens: &[u32]) -> u64 {
        self.uses += 1;
        let use_count = self.uses;
        // The last token is always computed: only blocks wholly before it can hit.
        let hittable_blocks = tokens.len().saturating_sub(1) / BLOCK_TOKENS;
        let mut parent = 0u64;
        let mut hits = 0usize;
        let mut leading = true;
        for (i, block) in tokens.chunks_exact(BLOCK_TOKENS).enumerate() {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            let hash = hasher.finish();
            match self.blocks.get_mut(&hash) {
                Some(last_used) => {
                    *last_used = use_count;
                    if leading && i < hittable_blocks {
                        hits += 1;
                    }
                }
                None => {
                    leading = false;
                    self.blocks.insert(hash, use_count);
                }
            }
            parent = hash;
        }
        self.evict();
        (hits * BLOCK_TOKENS) as u64
    }

    /// Caches `tokens`' full blocks without counting a lookup: a finished request's prompt
    /// and output.
    pub fn insert(&mut self, tokens: &[u32]) {
        self.lookup_and_insert(tokens);
    }

    /// Drops every cached block (vLLM's `POST /reset_prefix_cache`).
    pub fn reset(&mut self) {
        self.blocks.clear();
    }

    /// Cached blocks.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Over capacity: drops the least recently used eighth, so eviction is rare.
    fn evict(&mut self) {
        if self.blocks.len() <= self.capacity {
            return;
        }
        let mut by_age: Vec<u64> = self.blocks.values().copied().collect();
        by_age.sort_unstable();
        let keep = self.capacity - self.capacity / 8;
        let cutoff = by_age[by_age.len() - keep];
        self.blocks.retain(|_, last_used| *last_used >= cutoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32, offset: u32) -> Vec<u32> {
        (offset..offset + n).collect()
    }

    #[test]
    fn a_repeated_prefix_hits_its_whole_blocks_but_never_the_last_token() {
        let mut cache = PrefixCache::new(1 << 20);
        let prompt = tokens(100, 0);
        assert_eq!(cache.lookup_and_insert(&prompt), 0, "cold");
        // 100 tokens: 6 full blocks (96 tokens), all before the last token.
        assert_eq!(cache.lookup_and_insert(&prompt), 96);
        // Exactly 96 tokens: the last block holds the last token, so 5 blocks hit.
        assert_eq!(cache.lookup_and_insert(&prompt[..96]), 80);
        // A shared 64-token prefix with a different tail hits 4 blocks.
        let mut other = prompt[..64].to_vec();
        other.extend(tokens(50, 1000));
        assert_eq!(cache.lookup_and_insert(&other), 64);
        // The same tokens after a different first block share nothing: hashes are chained.
        let mut shifted = tokens(16, 5000);
        shifted.extend(&prompt[16..]);
        assert_eq!(cache.lookup_and_insert(&shifted), 0);
    }

    #[test]
    fn reset_empties_it_and_capacity_is_bounded() {
        let mut cache = PrefixCache::new(BLOCK_TOKENS * 64);
        let prompt = tokens(200, 0);
        cache.lookup_and_insert(&prompt);
        cache.reset();
        assert_eq!(cache.lookup_and_insert(&prompt), 0);
        for i in 0..100 {
            cache.lookup_and_insert(&tokens(160, 10_000 * (i + 1)));
            assert!(cache.len() <= 64, "{}", cache.len());
        }
        // The most recent prompt survives eviction.
        assert_eq!(cache.lookup_and_insert(&tokens(160, 10_000 * 100)), 144);
    }
}
