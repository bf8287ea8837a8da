//! tinyllama: pretrain, evaluate and run compact Llama-2-architecture language models on CPU.
//!
//! Module map (see ARCHITECTURE.md): [`config`] → [`model`] (parameters, forward, backward) built
//! on [`kernels`]; [`checkpoint`] reads and writes Hugging Face safetensors; [`train`] holds the
//! optimiser and schedule; [`bench`] measures.

pub mod bench;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod decode;
pub mod dist;
pub mod eval;
pub mod export;
pub mod files;
pub mod generate;
pub mod gguf;
pub mod hub;
pub mod kernels;
pub mod loader;
pub mod model;
pub mod perf;
pub mod profile;
pub mod rng;
#[cfg(feature = "serve")]
pub mod serve;
pub mod tokenizer;
pub mod train;
