//! The Llama model: parameters in one flat buffer ([`params`]), and the forward and backward
//! passes over a preallocated [`Workspace`] ([`llama`]).

pub mod inference;
pub mod kv_cache;
pub mod llama;
pub mod lora;
pub mod params;
pub mod prefetch;
pub mod weights;

pub use inference::{DecoderLayer, InferenceModel, ModelDtype, Segment};
pub use kv_cache::{KvCache, KvCacheType};
pub use llama::{Llama, Workspace};
pub use params::{HfTensor, ParamLayout};
pub use weights::{Linear, RowMode, WeightMatrix};

/// A `tiny-10m`-shaped model with a small vocabulary and context, its weights scaled by `scale`
/// (larger weights give peaked, varied predictions), for tests.
#[cfg(test)]
pub(crate) fn test_model(vocab: usize, ctx: usize, seed: u64, scale: f32) -> Llama {
    let mut cfg = crate::config::LlamaConfig::preset("tiny-10m").unwrap();
    cfg.vocab_size = vocab;
    cfg.max_position_embeddings = ctx;
    let mut model = Llama::new_init(cfg, seed);
    model.params.iter_mut().for_each(|p| *p *= scale);
    model
}
