//! The tokenizer: any Hugging Face `tokenizer.json` through the `tokenizers` crate. The Llama-2
//! tokenizer TinyLlama uses is built into the binary. BOS = 1, EOS = 2 for Llama; documents are
//! encoded without special tokens (the data pipeline appends EOS itself).

pub mod chat_template;
pub mod spm;

use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// The Llama-2 tokenizer (32000 pieces), shipped in `data/tokenizer/llama2/` with its NOTICE.
pub const LLAMA2_TOKENIZER_JSON: &[u8] = include_bytes!("../../data/tokenizer/llama2/tokenizer.json");

/// SentencePiece scores of the built-in vocabulary (what real TinyLlama GGUF files carry), for
/// GGUF export: tokenizer.json has merges, not scores.
pub const LLAMA2_SCORES_F32: &[u8] = include_bytes!("../../data/tokenizer/llama2/scores.f32");

pub struct Tokenizer {
    backend: Backend,
    pub bos_id: u32,
    pub eos_id: u32,
    /// The settings it was read with (`tokenizer_config.json`; for GGUF vocabularies
    /// `tokenizer.ggml.add_bos_token` / `add_eos_token`).
    pub config: TokenizerConfig,
}

/// Where a Llama-2 tokenizer puts SentencePiece's "▁" before a text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SpacePrefix {
    /// The legacy `tokenizer.json` normalizer (SentencePiece's `add_dummy_prefix`): before every
    /// piece of text, also after a special token and before a leading space.
    EveryText,
    /// transformers' `LlamaTokenizer` with `legacy: false`, and with `legacy: true` (its `Metaspace`
    /// pre-tokenizer, `prepend_scheme` first / always): before the input's first text unless that
    /// starts with a space; for `First` never after a special token.
    UnlessSpaceFirst,
    UnlessSpaceAlways,
    /// `add_prefix_space: false`.
    Never,
}

enum Backend {
    /// A Hugging Face tokenizer.json; for SentencePiece-style BPE (Llama-2) with word-at-a-time
    /// encoding, see [`LlamaWords`].
    Hf { inner: Box<tokenizers::Tokenizer>, words: Option<Box<LlamaWords>> },
    /// A GGUF vocabulary, tokenized as llama.cpp does.
    Spm(Box<spm::SpmVocab>),
}

/// Exact fast path for Llama-2-style tokenizers (normalizer: prepend "▁", spaces to "▁"; no
/// pre-tokenizer; BPE). No piece of such a vocabulary holds "▁" after another character, so no
/// merge crosses the start of a "▁"-led word: encoding word by word gives the same ids as encoding
/// the whole text, and words repeat, so each is merged once per thread and then looked up. The
/// `tokenizers` pipeline treats a whole document as one BPE word, which is far slower.
struct LlamaWords {
    bpe: tokenizers::models::bpe::BPE,
    prefix: SpacePrefix,
    /// Added tokens (`<s>`, …) are matched in raw text by `tokenizers`: texts holding one take
    /// the full pipeline.
    added: Vec<String>,
}

thread_local! {
    static WORD_CACHE: std::cell::RefCell<std::collections::HashMap<String, Vec<u32>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

impl LlamaWords {
    fn detect(json: &serde_json::Value, inner: &tokenizers::Tokenizer) -> Option<Self> {
        let legacy_norm = serde_json::json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let null = serde_json::Value::Null;
        let (norm, pre) = (json.get("normalizer").unwrap_or(&null), json.get("pre_tokenizer").unwrap_or(&null));
        let prefix = if *norm == legacy_norm && pre.is_null() {
            SpacePrefix::EveryText
        } else if norm.is_null() && pre["type"] == "Metaspace" && pre["replacement"] == "▁" && pre["split"] == false {
            match pre["prepend_scheme"].as_str()? {
                "first" => SpacePrefix::UnlessSpaceFirst,
                "always" => SpacePrefix::UnlessSpaceAlways,
                "never" => SpacePrefix::Never,
                _ => return None,
            }
        } else {
            return None;
        };
        let tokenizers::ModelWrapper::BPE(bpe) = inner.get_model() else { return None };
        if bpe.dropout.is_some() || bpe.ignore_merges {
            return None;
        }
        let vocab = json.pointer("/model/vocab")?.as_object()?;
        if vocab.keys().any(|p| p.trim_start_matches('▁').contains('▁')) {
            return None;
        }
        let added = inner.get_added_tokens_decoder().values().map(|t| t.content.clone()).collect();
        Some(LlamaWords { bpe: bpe.clone(), prefix, added })
    }

    fn encode(&self, text: &str) -> Option<Result<Vec<u32>>> {
        if self.added.iter().any(|a| text.contains(a.as_str())) {
            return None;
        }
        if text.is_empty() {
            return Some(Ok(vec![]));
        }
        // a text without special tokens is one piece, the input's first: every scheme but `Never`
        // puts "▁" before it, the Metaspace ones only where it does not start with one already
        let spaced = text.chars().map(|c| if c == ' ' { '▁' } else { c });
        let prefixed = match self.prefix {
            SpacePrefix::EveryText => true,
            SpacePrefix::UnlessSpaceFirst | SpacePrefix::UnlessSpaceAlways => !text.starts_with([' ', '▁']),
            SpacePrefix::Never => false,
        };
        let norm: String = prefixed.then_some('▁').into_iter().chain(spaced).collect();
        let mut ids = Vec::with_capacity(text.len() / 3);
        let mut start = 0;
        let mut prev = '▁';
        let mut r = Ok(());
        WORD_CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() > 200_000 {
                cache.clear();
            }
            let mut emit = |w: &str, ids: &mut Vec<u32>| -> Result<()> {
                if let Some(hit) = cache.get(w) {
                    ids.extend_from_slice(hit);
                    return Ok(());
                }
                use tokenizers::Model;
                let toks = self.bpe.tokenize(w).map_err(|e| anyhow!("tokenizer: {e}"))?;
                let v: Vec<u32> = toks.iter().map(|t| t.id).collect();
                ids.extend_from_slice(&v);
                cache.insert(w.to_string(), v);
                Ok(())
            };
            for (i, c) in norm.char_indices() {
                if c == '▁' && prev != '▁' && i > start {
                    if let Err(e) = emit(&norm[start..i], &mut ids) {
                        r = Err(e);
                        return;
                    }
                    start = i;
                }
                prev = c;
            }
            r = emit(&norm[start..], &mut ids);
        });
        Some(r.map(|_| ids))
    }
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

    /// The tokenizer of a model directory: its `tokenizer.json`, read as transformers reads it
    /// with the `tokenizer_config.json` beside it (see [`TokenizerConfig`]).
    pub fn from_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        let config = TokenizerConfig::of_model_dir(dir)?;
        Self::from_bytes_with_config(&bytes, &config)
            .with_context(|| format!("{} is not a valid tokenizer.json", path.display()))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with_config(bytes, &TokenizerConfig::default())
    }

    /// A `tokenizer.json` with the settings of its `tokenizer_config.json`.
    pub fn from_bytes_with_config(bytes: &[u8], config: &TokenizerConfig) -> Result<Self> {
        // JSON syntax first: the tokenizers crate panics on some malformed files (found by
        // tests/fuzz_readers.rs); whatever else it panics on becomes an error too
        let mut json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| anyhow!("not valid JSON: {e}"))?;
        let rewritten;
        let bytes = match config.llama_pipeline(&json) {
            Some(pipeline) => {
                for (key, value) in pipeline {
                    json[key] = value;
                }
                rewritten = serde_json::to_vec(&json)?;
                &rewritten[..]
            }
            None => bytes,
        };
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(bytes))
            .map_err(|_| anyhow!("not a tokenizer the `tokenizers` library can read"))?
            .map_err(|e| anyhow!("{e}"))?;
        let id = |names: &[&str], default: u32| names.iter().find_map(|n| inner.token_to_id(n)).unwrap_or(default);
        let bos_id = id(&["<s>", "<|begin_of_text|>", "<|endoftext|>"], 1);
        let eos_id = id(&["</s>", "<|end_of_text|>", "<|endoftext|>"], 2);
        let words = LlamaWords::detect(&json, &inner).map(Box::new);
        Ok(Tokenizer { backend: Backend::Hf { inner: Box::new(inner), words }, bos_id, eos_id, config: config.clone() })
    }

    /// A tokenizer over a GGUF vocabulary (llama.cpp's SentencePiece algorithm).
    pub fn from_spm(vocab: spm::SpmVocab, bos_id: u32, eos_id: u32, config: TokenizerConfig) -> Self {
        Tokenizer { backend: Backend::Spm(Box::new(vocab)), bos_id, eos_id, config }
    }

    /// `ids` (a rendered chat, say) with BOS put first where the tokenizer adds one and the text
    /// did not hold it already (as llama.cpp's server does).
    /// Never empty: an empty text without BOS is an error, as in [`encode_prompt`](Self::encode_prompt).
    pub fn with_bos(&self, ids: Vec<u32>) -> Result<Vec<u32>> {
        let ids = if !self.config.add_bos_token || ids.first() == Some(&self.bos_id) {
            ids
        } else {
            std::iter::once(self.bos_id).chain(ids).collect()
        };
        Self::nonempty(ids)
    }

    fn nonempty(ids: Vec<u32>) -> Result<Vec<u32>> {
        anyhow::ensure!(
            !ids.is_empty(),
            "the prompt is empty, and this tokenizer adds no BOS (add_bos_token: false): give it some text"
        );
        Ok(ids)
    }

    /// The ids of a prompt as transformers' `tokenizer(text)` gives them: BOS first and EOS last
    /// where the tokenizer's settings add them; never empty (an empty text without BOS is an error).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 2);
        if self.config.add_bos_token {
            ids.push(self.bos_id);
        }
        ids.extend(self.encode(text)?);
        if self.config.add_eos_token {
            ids.push(self.eos_id);
        }
        Self::nonempty(ids)
    }

    /// Token ids of `text`, without BOS or EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf { words: Some(w), .. } => match w.encode(text) {
                Some(r) => r,
                None => self.encode_pipeline(text),
            },
            Backend::Hf { .. } => self.encode_pipeline(text),
            Backend::Spm(v) => Ok(v.encode(text)),
        }
    }

    /// Token ids through the full `tokenizers` pipeline (the reference the fast path must equal).
    pub fn encode_pipeline(&self, text: &str) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf { inner, .. } => {
                let enc = inner.encode_fast(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
                Ok(enc.get_ids().to_vec())
            }
            Backend::Spm(v) => Ok(v.encode(text)),
        }
    }

    /// Token ids of `text` with the byte range of `text` each covers (as transformers'
    /// `offset_mapping`); a Hugging Face tokenizer only.
    pub fn encode_with_offsets(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>> {
        match &self.backend {
            Backend::Hf { inner, .. } => {
                let enc = inner.encode(text, false).map_err(|e| anyhow!("tokenizer: {e}"))?;
                Ok(enc.get_ids().iter().copied().zip(enc.get_offsets().iter().copied()).collect())
            }
            Backend::Spm(_) => Err(anyhow!("token offsets need a tokenizer.json (a Hugging Face model directory)")),
        }
    }

    /// Many texts at once, in parallel (order kept).
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| self.encode(t)).collect()
    }

    /// Text of `ids`; special tokens are dropped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.decode(ids, true).map_err(|e| anyhow!("tokenizer: {e}")),
            Backend::Spm(v) => Ok(v.decode(ids, false)),
        }
    }

    /// The text of `ids` as a continuation of a sequence ending with `prev`: decoded after it, so
    /// that a leading space is kept (Llama decoders strip the first space of what they decode:
    /// "I am" + "▁not" is "I am not", where `decode(["▁not"])` alone gives "not").
    pub fn decode_after(&self, prev: u32, ids: &[u32]) -> Result<String> {
        let head = self.decode(&[prev])?;
        let all: Vec<u32> = std::iter::once(prev).chain(ids.iter().copied()).collect();
        let text = self.decode(&all)?;
        match text.strip_prefix(head.as_str()) {
            Some(rest) => Ok(rest.to_string()),
            None => self.decode(ids),
        }
    }

    /// The text piece of one token id (for streaming generation), special tokens kept.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.id_to_token(id),
            Backend::Spm(v) => v.pieces.get(id as usize).cloned(),
        }
    }

    /// A token the model has no row for would index past its embedding: refused, naming both sizes.
    pub fn check_fits(&self, model_vocab: usize) -> Result<()> {
        anyhow::ensure!(
            self.vocab_size() <= model_vocab,
            "the tokenizer has {} tokens but the model's vocabulary is {}: they do not belong together",
            self.vocab_size(),
            model_vocab
        );
        Ok(())
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.get_vocab_size(true),
            Backend::Spm(v) => v.pieces.len(),
        }
    }

    /// The GGUF vocabulary (pieces, scores, token types): a GGUF model's own, or for a
    /// tokenizer.json its pieces by id with SentencePiece scores where the vocabulary is the
    /// built-in Llama-2 one (else `convert_hf_to_gguf.py`'s -1000), types from the piece kinds.
    pub fn gguf_vocab(&self) -> (Vec<String>, Vec<f32>, Vec<i32>) {
        match &self.backend {
            Backend::Spm(v) => (v.pieces.clone(), v.scores.clone(), v.types.clone()),
            Backend::Hf { inner, .. } => {
                let n = inner.get_vocab_size(true);
                let pieces: Vec<String> = (0..n as u32).map(|i| inner.id_to_token(i).unwrap_or_default()).collect();
                let added: std::collections::HashSet<u32> = inner.get_added_tokens_decoder().keys().copied().collect();
                let types: Vec<i32> = pieces
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if p == "<unk>" {
                            spm::TYPE_UNKNOWN
                        } else if added.contains(&(i as u32)) {
                            spm::TYPE_CONTROL
                        } else if p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') {
                            spm::TYPE_BYTE
                        } else {
                            spm::TYPE_NORMAL
                        }
                    })
                    .collect();
                let builtin = Tokenizer::llama2();
                let same =
                    n == 32000 && (0..n as u32).all(|i| builtin.id_to_token(i).as_deref() == Some(&pieces[i as usize]));
                let scores = if same {
                    LLAMA2_SCORES_F32.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
                } else {
                    types.iter().map(|&t| if t == spm::TYPE_NORMAL { -1000.0 } else { 0.0 }).collect()
                };
                (pieces, scores, types)
            }
        }
    }

    /// The tokenizer as tokenizer.json text (GGUF vocabularies have none).
    pub fn to_json(&self) -> Result<String> {
        match &self.backend {
            Backend::Hf { inner, .. } => inner.to_string(false).map_err(|e| anyhow!("{e}")),
            Backend::Spm(_) => anyhow::bail!("a GGUF vocabulary has no tokenizer.json form"),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let Backend::Hf { inner, .. } = &self.backend else {
            anyhow::bail!("a GGUF vocabulary cannot be saved as tokenizer.json");
        };
        let text = inner.to_string(true).map_err(|e| anyhow!("{e}"))?;
        crate::files::write_atomically(path, |w| {
            use std::io::Write;
            w.write_all(text.as_bytes())?;
            Ok(())
        })
    }
}

/// What `tokenizer_config.json` says about tokenizing, as transformers (5) reads it.
///
/// For `tokenizer_class` `LlamaTokenizer` / `LlamaTokenizerFast` (TinyLlama-Chat's), transformers
/// takes the vocabulary and merges of `tokenizer.json` but builds its own pipeline: no normalizer,
/// a `Metaspace` pre-tokenizer whose "▁" goes before the input's first text only (`legacy: false`,
/// the default) or before every text after a special token (`legacy: true`), never with
/// `add_prefix_space: false`, and not before a text that starts with a space. Any other class
/// (`PreTrainedTokenizerFast`, `TokenizersBackend`, none) keeps `tokenizer.json`'s own pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizerConfig {
    pub tokenizer_class: Option<String>,
    pub legacy: bool,
    pub add_prefix_space: bool,
    pub add_bos_token: bool,
    pub add_eos_token: bool,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            tokenizer_class: None,
            legacy: false,
            add_prefix_space: true,
            add_bos_token: true,
            add_eos_token: false,
        }
    }
}

impl TokenizerConfig {
    /// The settings of a parsed `tokenizer_config.json`; absent keys take transformers' defaults.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let d = TokenizerConfig::default();
        let flag = |key: &str, default: bool| -> Result<bool> {
            match v.get(key) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(serde_json::Value::Bool(b)) => Ok(*b),
                Some(other) => Err(anyhow!("\"{key}\" must be true or false, not {other}")),
            }
        };
        Ok(TokenizerConfig {
            tokenizer_class: v.get("tokenizer_class").and_then(|c| c.as_str()).map(str::to_string),
            legacy: flag("legacy", d.legacy)?,
            add_prefix_space: flag("add_prefix_space", d.add_prefix_space)?,
            add_bos_token: flag("add_bos_token", d.add_bos_token)?,
            add_eos_token: flag("add_eos_token", d.add_eos_token)?,
        })
    }

    /// The `tokenizer_config.json` of a model directory (defaults where there is none).
    pub fn of_model_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| anyhow!("{} is not valid JSON: {e}", path.display()))?;
        Self::from_json(&v).with_context(|| path.display().to_string())
    }

    /// For a Llama tokenizer class over a BPE `tokenizer.json`: the normalizer, pre-tokenizer and
    /// decoder transformers' `LlamaTokenizer` builds instead of the file's.
    fn llama_pipeline(&self, json: &serde_json::Value) -> Option<[(&'static str, serde_json::Value); 3]> {
        let class = self.tokenizer_class.as_deref()?;
        if !matches!(class, "LlamaTokenizer" | "LlamaTokenizerFast") || json.pointer("/model/type")? != "BPE" {
            return None;
        }
        let scheme = match (self.add_prefix_space, self.legacy) {
            (false, _) => "never",
            (true, true) => "always",
            (true, false) => "first",
        };
        let mut decoders = vec![
            serde_json::json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
            serde_json::json!({"type": "ByteFallback"}),
            serde_json::json!({"type": "Fuse"}),
        ];
        if self.add_prefix_space {
            decoders.push(serde_json::json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        Some([
            ("normalizer", serde_json::Value::Null),
            (
                "pre_tokenizer",
                serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false}),
            ),
            ("decoder", serde_json::json!({"type": "Sequence", "decoders": decoders})),
        ])
    }
}

/// Trains a byte-level BPE tokenizer (GPT-2 style: any text encodes, nothing is unknown) of
/// `vocab_size` tokens on `docs`, with `<unk>`, `<s>`, `</s>` as ids 0, 1, 2 like Llama's.
pub fn train_bpe(docs: &[String], vocab_size: usize, progress: bool) -> Result<Tokenizer> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, TokenizerBuilder};
    anyhow::ensure!(vocab_size >= 256 + 3, "--vocab-size {vocab_size}: byte-level BPE needs at least 259 tokens");
    let specials = ["<unk>", "<s>", "</s>"].map(|t| AddedToken::from(t.to_string(), true)).to_vec();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(progress)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let byte_level = ByteLevel::new(false, true, true);
    let mut tk: tokenizers::TokenizerImpl<BPE, tokenizers::NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
        TokenizerBuilder::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(byte_level))
            .with_post_processor(Some(byte_level))
            .with_decoder(Some(byte_level))
            .build()
            .map_err(|e| anyhow!("{e}"))?;
    tk.train(&mut trainer, docs.iter()).map_err(|e| anyhow!("BPE training: {e}"))?;
    let json = tk.to_string(false).map_err(|e| anyhow!("{e}"))?;
    Tokenizer::from_bytes(json.as_bytes())
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

    /// The word-at-a-time path against the full pipeline, on the built-in corpus (prose and code,
    /// runs of spaces, tabs, newlines) and awkward strings.
    #[test]
    fn word_path_equals_the_pipeline() {
        let t = Tokenizer::llama2();
        assert!(matches!(t.backend, Backend::Hf { words: Some(_), .. }), "Llama-2 tokenizer takes the word path");
        let mut texts: Vec<String> =
            ["", " ", "   leading", "trailing  ", "a\n\n  b\t\tc", "<s> literal", "日本語 ½ 🦙\u{0}"]
                .map(String::from)
                .to_vec();
        for (_, bytes) in crate::data::builtin::FILES {
            let raw = zstd::decode_all(*bytes).unwrap();
            for line in std::str::from_utf8(&raw).unwrap().lines().step_by(7) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                texts.push(v["text"].as_str().unwrap().to_string());
            }
        }
        for text in &texts {
            assert_eq!(t.encode(text).unwrap(), t.encode_pipeline(text).unwrap(), "{:?}", &text[..text.len().min(80)]);
        }
    }

    #[test]
    fn trained_bpe_round_trips_any_text() {
        let docs: Vec<String> = (0..200)
            .map(|i| format!("It is a truth universally acknowledged, number {i}.\ndef f(x):\n    return x + {i}\n"))
            .collect();
        let t = train_bpe(&docs, 400, false).unwrap();
        assert_eq!((t.bos_id, t.eos_id), (1, 2));
        assert!(t.vocab_size() <= 400 && t.vocab_size() > 259, "{}", t.vocab_size());
        let common = t.encode(&docs[7]).unwrap();
        assert!(
            common.len() < docs[7].len() / 2,
            "merges learned: {} tokens for {} bytes",
            common.len(),
            docs[7].len()
        );
        for text in [docs[3].as_str(), "unseen ½ 🦙 Ünïcödé\t text"] {
            assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
        }
    }

    #[test]
    fn continuation_keeps_its_leading_space() {
        let t = Tokenizer::llama2();
        let ids = t.encode("I am not").unwrap();
        let (head, tail) = ids.split_at(2);
        assert_eq!(t.decode(head).unwrap(), "I am");
        assert_eq!(t.decode(tail).unwrap(), "not");
        assert_eq!(t.decode_after(head[1], tail).unwrap(), " not");
        // after BOS (an empty prompt) the first space goes, as in a whole decode
        assert_eq!(t.decode_after(t.bos_id, &ids).unwrap(), "I am not");
    }
}
