//! Checkpoints on disk: the safetensors format ([`safetensors`]) and Hugging Face model
//! directories (`config.json` + one or several safetensors files) ([`hf`]).

pub mod hf;
pub mod safetensors;
