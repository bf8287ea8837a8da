//! The data path: packed token shards ([`shard`]), corpus preparation ([`prepare`]) and the
//! resumable mixture reader that feeds training ([`loader`]).

pub mod builtin;
pub mod finetune;
pub mod loader;
pub mod prepare;
pub mod shard;
