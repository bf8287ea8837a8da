//! Checkpoints on disk: the safetensors format ([`safetensors`]) and Hugging Face model
//! directories (`config.json` + one or several safetensors files) ([`hf`]), and the names of checkpoints
//! in a run directory ([`paths`]), PEFT's LoRA adapter files ([`peft`]).

pub mod hf;
pub mod paths;
pub mod peft;
pub mod safetensors;
