//! The KV cache of one sequence: keys and values of every layer, laid out as the cached attention
//! kernel reads them, in f32 or f16 ([`KvCacheType`]); prefixes shared by copying.

use crate::kernels::attention::{CachedSeq, KvSlices, KEY_LANES};
use crate::kernels::quant::f32_to_f16;
use anyhow::Result;

/// Keys and values of every layer for positions `0..len` of one sequence, laid out as attention
/// reads them ([`CachedSeq`]): per layer and key/value head, keys in transposed blocks of
/// [`KEY_LANES`] positions and values by position, for `cap` positions (`max_len` rounded up to
/// [`KEY_LANES`]); f32 or IEEE half elements, as the model's [`KvCacheType`] says.
pub struct KvCache {
    pub len: usize,
    pub max_len: usize,
    n_kv_heads: usize,
    head_dim: usize,
    /// Keys `[layer][kv head][cap / KEY_LANES][head_dim][KEY_LANES]` and values
    /// `[layer][kv head][cap][head_dim]`, of one element type.
    kv: KvStore,
    /// The tokens whose keys and values are cached (for prefix reuse).
    pub tokens: Vec<u32>,
}

/// A cache's keys and values: f32, or IEEE half bits.
#[derive(Clone)]
enum KvStore {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<u16>, v: Vec<u16> },
}

impl KvStore {
    fn zeros(half: bool, n: usize) -> Self {
        if half {
            KvStore::F16 { k: vec![0; n], v: vec![0; n] }
        } else {
            KvStore::F32 { k: vec![0.0; n], v: vec![0.0; n] }
        }
    }

    /// Elements of the keys (as many as of the values).
    fn len(&self) -> usize {
        match self {
            KvStore::F32 { k, .. } => k.len(),
            KvStore::F16 { k, .. } => k.len(),
        }
    }

    fn is_half(&self) -> bool {
        matches!(self, KvStore::F16 { .. })
    }

    /// `key[at] = x` (rounded to nearest even in a half store).
    fn set_key(&mut self, at: usize, x: f32) {
        match self {
            KvStore::F32 { k, .. } => k[at] = x,
            KvStore::F16 { k, .. } => k[at] = f32_to_f16(x),
        }
    }

    /// `value[at + i] = x[i]`, rounded likewise.
    fn put_values(&mut self, at: usize, x: &[f32]) {
        match self {
            KvStore::F32 { v, .. } => v[at..][..x.len()].copy_from_slice(x),
            KvStore::F16 { v, .. } => v[at..][..x.len()].iter_mut().zip(x).for_each(|(d, &x)| *d = f32_to_f16(x)),
        }
    }

    /// A store of `n` elements each, of this one's type, holding the first `k_keep` keys and
    /// `v_keep` values of each run (run `i` from `i·src_run` here to `i·dst_run` there).
    fn prefix(&self, n: usize, src_run: usize, dst_run: usize, k_keep: usize, v_keep: usize) -> KvStore {
        fn runs<T: Copy + Default>(s: &[T], n: usize, src_run: usize, dst_run: usize, keep: usize) -> Vec<T> {
            let mut d = vec![T::default(); n];
            for (dst, from) in d.chunks_exact_mut(dst_run).zip(s.chunks_exact(src_run)) {
                dst[..keep].copy_from_slice(&from[..keep]);
            }
            d
        }
        match self {
            KvStore::F32 { k, v } => {
                KvStore::F32 { k: runs(k, n, src_run, dst_run, k_keep), v: runs(v, n, src_run, dst_run, v_keep) }
            }
            KvStore::F16 { k, v } => {
                KvStore::F16 { k: runs(k, n, src_run, dst_run, k_keep), v: runs(v, n, src_run, dst_run, v_keep) }
            }
        }
    }
}

impl KvCache {
    /// An empty cache of `max_len` positions (`half`: f16 elements).
    pub fn empty(layers: usize, n_kv_heads: usize, head_dim: usize, max_len: usize, half: bool) -> Self {
        let cap = Self::capacity(max_len);
        let n = layers * n_kv_heads * cap * head_dim;
        KvCache { len: 0, max_len, n_kv_heads, head_dim, kv: KvStore::zeros(half, n), tokens: vec![] }
    }

    /// Positions a cache of `max_len` allocates (whole blocks of keys).
    pub fn capacity(max_len: usize) -> usize {
        max_len.next_multiple_of(KEY_LANES)
    }

    /// A cache of `max_len` positions holding the first `len` positions of `src` (a shared
    /// prompt prefix computed once, continued by many sequences).
    pub fn with_prefix(src: &KvCache, len: usize, max_len: usize) -> Self {
        let len = len.min(src.len).min(max_len);
        let hd = src.head_dim;
        // one run per (layer, head) in each: whole key blocks (the last one's spare lanes are
        // never used), value rows
        let (src_run, dst_run) = (Self::capacity(src.max_len) * hd, Self::capacity(max_len) * hd);
        let layers = src.kv.len() / (src.n_kv_heads * src_run).max(1);
        let n = layers * src.n_kv_heads * dst_run;
        let blocks = len.next_multiple_of(KEY_LANES);
        let kv = src.kv.prefix(n, src_run, dst_run, blocks * hd, len * hd);
        let tokens = src.tokens[..len].to_vec();
        KvCache { len, max_len, n_kv_heads: src.n_kv_heads, head_dim: hd, kv, tokens }
    }

    /// Whether the elements are IEEE halves.
    pub fn is_half(&self) -> bool {
        self.kv.is_half()
    }

    /// Forgets positions from `len` on.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        self.tokens.truncate(self.len);
    }

    /// Stores the keys and values of positions `p0..p0 + k` at layer `l` from rows of `qkv`
    /// (`stride` apart; keys at `k_off`, then values, each `[n_kv, head_dim]`).
    pub(crate) fn store(&mut self, l: usize, qkv: &[f32], stride: usize, k_off: usize, p0: usize, k: usize) {
        let (hd, cap, kvd) = (self.head_dim, Self::capacity(self.max_len), self.n_kv_heads * self.head_dim);
        let sz = cap * kvd;
        for r in 0..k {
            let (p, row) = (p0 + r, &qkv[r * stride + k_off..][..2 * kvd]);
            for g in 0..self.n_kv_heads {
                let block = l * sz + (g * cap + p / KEY_LANES * KEY_LANES) * hd;
                for (e, &x) in row[g * hd..][..hd].iter().enumerate() {
                    self.kv.set_key(block + e * KEY_LANES + p % KEY_LANES, x);
                }
                self.kv.put_values(l * sz + (g * cap + p) * hd, &row[kvd + g * hd..][..hd]);
            }
        }
    }

    /// Layer `l`'s part of attention over this cache, for `n` new tokens.
    pub(crate) fn seq(&self, l: usize, n: usize) -> CachedSeq<'_> {
        let cap = Self::capacity(self.max_len);
        let sz = cap * self.n_kv_heads * self.head_dim;
        let kv = match &self.kv {
            KvStore::F32 { k, v } => KvSlices::F32 { k: &k[l * sz..][..sz], v: &v[l * sz..][..sz] },
            KvStore::F16 { k, v } => KvSlices::F16 { k: &k[l * sz..][..sz], v: &v[l * sz..][..sz] },
        };
        CachedSeq { kv, cap, n, p0: self.len }
    }
}

/// The element type of KV caches (`--kv-cache`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvCacheType {
    /// f16 for GGUF and quantized models, as llama.cpp caches them (half the memory, and half the
    /// reads of a long context's attention); f32 for f32 models, whose numbers are the training
    /// forward's.
    #[default]
    Auto,
    F32,
    F16,
}

impl KvCacheType {
    pub const NAMES: &'static str = "auto, f16, f32";

    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(KvCacheType::Auto),
            "f32" => Ok(KvCacheType::F32),
            "f16" => Ok(KvCacheType::F16),
            _ => anyhow::bail!("unknown KV cache type `{s}`: use one of {}", Self::NAMES),
        }
    }
}
