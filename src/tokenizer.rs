//! The tokenizer: any Hugging Face `tokenizer.json` through the `tokenizers` crate. The Llama-2
//! tokenizer TinyLlama uses is built into the binary. BOS = 1, EOS = 2 for Llama; documents are
//! encoded without special tokens (the data pipeline appends EOS itself).

use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// The Llama-2 tokenizer (32000 pieces), shipped in `data/tokenizer/llama2/` with its NOTICE.
pub const LLAMA2_TOKENIZER_JSON: &[u8] = include_bytes!("../data/tokenizer/llama2/tokenizer.json");

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: u32,
    pub eos_id: u32,
}

impl Tokenizer {
    /// The built-in Llama-2 tokenizer.
    pub fn llama2() -> Self {
        Self::from_bytes(LLAMA2_TOKENIZER_JSON).expect("the built-in tokenizer.json parses")
    }

    /// A `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("{} is not a valid tokenizer.json", path.display()))
    }

    /// The tokenizer at `path`, or the built-in Llama-2 one.
    pub fn from_file_or_builtin(path: Option<&Path>) -> Result<Self> {
        match path {
            Some(p) => Self::from_file(p),
            None => Ok(Self::llama2()),
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| anyhow!("{e}"))?;
        let id = |names: &[&str], default: u32| names.iter().find_map(|n| inner.token_to_id(n)).unwrap_or(default);
        let bos_id = id(&["<s>", "<|begin_of_text|>", "<|endoftext|>"], 1);
        let eos_id = id(&["</s>", "<|end_of_text|>", "<|endoftext|>"], 2);
        Ok(Tokenizer { inner, bos_id, eos_id })
    }

    /// Token ids of `text`, without BOS or EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Many texts at once, in parallel (order kept).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| anyhow!("tokenizer: {e}"))
    }

    /// The text piece of one token id (for streaming generation), special tokens kept.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = self.inner.to_string(true).map_err(|e| anyhow!("{e}"))?;
        crate::checkpoint::safetensors::write_atomically(path, |w| {
            use std::io::Write;
            w.write_all(text.as_bytes())?;
            Ok(())
        })
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_special_ids_and_round_trip() {
        let t = Tokenizer::llama2();
        assert_eq!((t.bos_id, t.eos_id, t.vocab_size()), (1, 2, 32000));
        let text = "Hello world! It is a truth universally acknowledged, ½ 🦙\n\tdef f(x):\n        return x";
        let ids = t.encode(text).unwrap();
        assert!(!ids.contains(&1) && !ids.contains(&2));
        assert_eq!(t.decode(&ids).unwrap(), text);
    }
}
