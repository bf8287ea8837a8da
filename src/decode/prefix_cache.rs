//! Cached prefixes: the KV caches of finished sequences (a chat turn, a request, a few-shot
//! prefix), kept so that a new prompt that starts with the same tokens continues from there
//! (llama.cpp's `cache_prompt`, vLLM's automatic prefix caching). A prompt copies the positions it
//! shares with the best entry; entries leave least recently used first when the engine needs
//! their bytes.

use super::logprobs::TokenLogprob;
use crate::model::{InferenceModel, KvCache};

struct Entry {
    cache: KvCache,
    /// The draft model's cache of the same tokens (it may hold fewer).
    draft: Option<KvCache>,
    /// Its prompt's log-probabilities, where they were computed (prompt logprobs reuse only these).
    prompt_lp: Vec<Option<TokenLogprob>>,
    bytes: usize,
    used: u64,
}

#[derive(Default)]
pub(crate) struct PrefixCache {
    entries: Vec<Entry>,
    clock: u64,
    bytes: usize,
}

/// A new sequence's caches: copied from an entry (`reused` positions), or empty.
pub(crate) struct Start {
    pub cache: KvCache,
    pub draft: Option<KvCache>,
    pub reused: usize,
    /// With prompt log-probabilities asked for: those of the reused positions' tokens.
    pub prompt_lp: Option<Vec<Option<TokenLogprob>>>,
}

fn common(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn bytes_of(c: &KvCache, per_position: usize) -> usize {
    KvCache::capacity(c.max_len) * per_position
}

impl PrefixCache {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Caches of `max_len` positions for `prompt`: the longest cached prefix it shares (all but its
    /// last token at most, whose logits the prefill must compute) copied in, the rest to prefill.
    /// `prompt_lp`: the prompt's log-probabilities are wanted, so only positions whose next token's
    /// log-probability the entry holds are reused (a token's comes from the row before it).
    pub fn start(
        &mut self,
        prompt: &[u32],
        max_len: usize,
        model: &InferenceModel,
        draft: Option<&InferenceModel>,
        prompt_lp: bool,
    ) -> Start {
        let limit = prompt.len().saturating_sub(1);
        let reusable = |e: &Entry| {
            let n = common(&e.cache.tokens, prompt).min(limit);
            match prompt_lp {
                true => n.saturating_sub(1).min(e.prompt_lp.len().saturating_sub(1)),
                false => n,
            }
        };
        let best = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (i, reusable(e)))
            .max_by_key(|&(i, n)| (n, self.entries[i].used));
        self.clock += 1;
        match best {
            Some((i, n)) if n > 0 => {
                let e = &mut self.entries[i];
                e.used = self.clock;
                let cache = KvCache::with_prefix(&e.cache, n, max_len);
                let draft = draft.map(|d| match &e.draft {
                    Some(dc) => KvCache::with_prefix(dc, n, max_len),
                    None => KvCache::new(d, max_len),
                });
                let lp = prompt_lp.then(|| e.prompt_lp[..=n].to_vec());
                Start { cache, draft, reused: n, prompt_lp: lp }
            }
            _ => Start {
                cache: KvCache::new(model, max_len),
                draft: draft.map(|d| KvCache::new(d, max_len)),
                reused: 0,
                prompt_lp: prompt_lp.then(|| vec![None]),
            },
        }
    }

    /// Keeps a finished sequence's caches (`per_position`: bytes a position of both together
    /// holds). Entries whose tokens the new one starts with are dropped: it serves them too.
    pub fn insert(
        &mut self,
        cache: KvCache,
        draft: Option<KvCache>,
        prompt_lp: Vec<Option<TokenLogprob>>,
        per_position: usize,
    ) {
        if cache.len == 0 {
            return;
        }
        // hold what the sequence used, not the room it had for more
        let (cache, draft) = if KvCache::capacity(cache.max_len) > 2 * KvCache::capacity(cache.len) {
            let d = draft.map(|d| KvCache::with_prefix(&d, d.len, cache.len));
            (KvCache::with_prefix(&cache, cache.len, cache.len), d)
        } else {
            (cache, draft)
        };
        let before = self.entries.len();
        // (an entry with prompt log-probabilities is kept unless the new one has as many)
        self.entries
            .retain(|e| common(&e.cache.tokens, &cache.tokens) < e.cache.len || e.prompt_lp.len() > prompt_lp.len());
        if self.entries.len() != before {
            self.bytes = self.entries.iter().map(|e| e.bytes).sum();
        }
        self.clock += 1;
        let bytes = bytes_of(&cache, per_position);
        self.bytes += bytes;
        self.entries.push(Entry { cache, draft, prompt_lp, bytes, used: self.clock });
    }

    /// Drops the least recently used entry; false when there is none.
    pub fn evict_oldest(&mut self) -> bool {
        let Some(i) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.used).map(|(i, _)| i) else {
            return false;
        };
        self.bytes -= self.entries.swap_remove(i).bytes;
        true
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}
