//! The Llama model: parameters in one flat buffer ([`params`]), and the forward and backward
//! passes over a preallocated [`Workspace`] ([`llama`]).

pub mod inference;
pub mod llama;
pub mod params;

pub use inference::KvCache;
pub use llama::{Llama, Workspace};
pub use params::{HfTensor, ParamLayout};
