//! Llama models in GGUF, as llama.cpp names them: config from the `llama.*` keys, the tokenizer
//! from `tokenizer.ggml.*`, tensors `token_embd`, `blk.N.{attn_norm, attn_q, attn_k, attn_v,
//! attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}`, `output_norm`, `output`.
//!
//! `convert_hf_to_gguf.py` permutes the rows of `attn_q` and `attn_k` within each head so that
//! llama.cpp can rotate adjacent pairs: GGUF row `2i + j` of a head is Hugging Face row
//! `j·h/2 + i`. Reading undoes it (rows are moved, never re-quantized); writing applies it.

use super::{GgufFile, GgufWriter, Value};
use crate::config::LlamaConfig;
use crate::kernels::quant::Format;
use crate::model::lora::Adapters;
use crate::model::weights::Storage;
use crate::model::{DecoderLayer, InferenceModel, Linear, ModelDtype, ParamLayout, WeightMatrix};
use crate::tokenizer::spm::SpmVocab;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};

/// A model read from GGUF, with what else the file carries.
pub struct GgufModel {
    pub model: InferenceModel,
    pub tokenizer: Tokenizer,
    pub chat_template: Option<String>,
}

fn key_i64(g: &GgufFile, k: &str) -> Result<i64> {
    g.get(k)
        .with_context(|| format!("{}: missing metadata key `{k}`", g.path.display()))?
        .as_i64()
        .with_context(|| format!("{}: metadata `{k}` is not an integer", g.path.display()))
}

fn key_usize(g: &GgufFile, k: &str, lo: usize, hi: usize) -> Result<usize> {
    let v = key_i64(g, k)?;
    ensure!(v >= lo as i64 && v <= hi as i64, "{}: metadata `{k}` = {v} is out of range {lo}..={hi}", g.path.display());
    Ok(v as usize)
}

/// Moves q/k rows between Hugging Face order and llama.cpp's: HF row `h·hd + j·hd/2 + i` is GGUF
/// row `h·hd + 2i + j`. `to_gguf` applies `convert_hf_to_gguf.py`'s permutation, else undoes it.
fn permute(bytes: &[u8], rows: usize, row_bytes: usize, head_dim: usize, to_gguf: bool) -> Vec<u8> {
    let mut out = vec![0u8; bytes.len()];
    let half = head_dim / 2;
    for r in 0..rows {
        let (h, within) = (r / head_dim, r % head_dim);
        let (j, i) = (within / half, within % half);
        let g = h * head_dim + 2 * i + j;
        let (src, dst) = if to_gguf { (r, g) } else { (g, r) };
        out[dst * row_bytes..(dst + 1) * row_bytes].copy_from_slice(&bytes[src * row_bytes..(src + 1) * row_bytes]);
    }
    out
}

fn permute_rows(bytes: &[u8], rows: usize, row_bytes: usize, head_dim: usize) -> Vec<u8> {
    permute(bytes, rows, row_bytes, head_dim, true)
}

fn unpermute_rows(bytes: &[u8], rows: usize, row_bytes: usize, head_dim: usize) -> Vec<u8> {
    permute(bytes, rows, row_bytes, head_dim, false)
}

/// The config a GGUF file describes.
/// What llama.cpp says of a model file when it loads it: its tensors' formats, size and bits per
/// weight, and the memory a run at the full context needs.
#[derive(Debug, Clone)]
pub struct FileSummary {
    pub file_bytes: u64,
    /// Per format: tensors and bytes, largest share first.
    pub formats: Vec<(Format, usize, usize)>,
    pub weight_bytes: usize,
    pub weights: usize,
    /// K and V of one token in every layer, at f16 (llama.cpp's and `--kv-cache auto`'s type for GGUF).
    pub kv_bytes_per_token: usize,
    pub context: usize,
}

impl FileSummary {
    pub fn of(g: &GgufFile, cfg: &LlamaConfig) -> Result<Self> {
        let file_bytes = std::fs::metadata(&g.path).map(|m| m.len())?;
        let mut formats: Vec<(Format, usize, usize)> = vec![];
        for t in &g.tensors {
            match formats.iter_mut().find(|f| f.0 == t.format) {
                Some(f) => (f.1, f.2) = (f.1 + 1, f.2 + t.size),
                None => formats.push((t.format, 1, t.size)),
            }
        }
        formats.sort_by(|a, b| b.2.cmp(&a.2).then(a.1.cmp(&b.1)));
        let weights = g.tensors.iter().map(|t| t.dims.iter().product::<usize>()).sum();
        Ok(FileSummary {
            file_bytes,
            weight_bytes: formats.iter().map(|f| f.2).sum(),
            formats,
            weights,
            kv_bytes_per_token: 2 * cfg.num_hidden_layers * cfg.kv_dim() * 2,
            context: cfg.max_position_embeddings,
        })
    }
}

impl std::fmt::Display for FileSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        let types: Vec<String> = self.formats.iter().map(|(t, n, _)| format!("{}: {n} tensors", t.name())).collect();
        writeln!(f, "tensor types: {}", types.join(", "))?;
        writeln!(
            f,
            "file size: {:.2} MiB ({:.2} bits per weight, {} weights)",
            mib(self.file_bytes as usize),
            8.0 * self.weight_bytes as f64 / self.weights.max(1) as f64,
            self.weights
        )?;
        writeln!(f, "KV cache: {} bytes per token (f16 K and V, every layer)", self.kv_bytes_per_token)?;
        let kv = self.kv_bytes_per_token * self.context;
        write!(
            f,
            "memory at the full context of {}: {:.1} MiB (weights {:.1} MiB + KV cache {:.1} MiB)",
            self.context,
            mib(self.weight_bytes + kv),
            mib(self.weight_bytes),
            mib(kv)
        )
    }
}

pub fn config(g: &GgufFile) -> Result<LlamaConfig> {
    let p = g.path.display();
    let arch = g.get("general.architecture").and_then(|v| v.as_str()).unwrap_or("");
    ensure!(arch == "llama", "{p}: architecture `{arch}` (only `llama` models are read)");
    if let Some(t) = g.get("llama.rope.scaling.type").and_then(|v| v.as_str()) {
        ensure!(t == "none", "{p}: RoPE scaling `{t}` is not supported");
    }
    let d = key_usize(g, "llama.embedding_length", 1, 1 << 16)?;
    let heads = key_usize(g, "llama.attention.head_count", 1, 1024)?;
    let kv = match g.get("llama.attention.head_count_kv") {
        Some(_) => key_usize(g, "llama.attention.head_count_kv", 1, 1024)?,
        None => heads,
    };
    let head_dim = match g.get("llama.attention.key_length") {
        Some(_) => key_usize(g, "llama.attention.key_length", 1, 1024)?,
        None => d / heads,
    };
    let embd = g.tensor("token_embd.weight")?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0);
    let eps = g
        .get("llama.attention.layer_norm_rms_epsilon")
        .and_then(|v| v.as_f64())
        .with_context(|| format!("{p}: missing `llama.attention.layer_norm_rms_epsilon`"))?;
    let theta = g.get("llama.rope.freq_base").and_then(|v| v.as_f64()).unwrap_or(10000.0);
    let cfg = LlamaConfig {
        vocab_size: vocab,
        hidden_size: d,
        intermediate_size: key_usize(g, "llama.feed_forward_length", 1, 1 << 20)?,
        num_hidden_layers: key_usize(g, "llama.block_count", 1, 4096)?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: eps as f32,
        rope_theta: theta as f32,
        max_position_embeddings: key_usize(g, "llama.context_length", 1, 1 << 24)?,
        bos_token_id: g.get("tokenizer.ggml.bos_token_id").and_then(|v| v.as_i64()).unwrap_or(1) as u32,
        eos_token_id: g.get("tokenizer.ggml.eos_token_id").and_then(|v| v.as_i64()).unwrap_or(2) as u32,
        extra_eos_token_ids: vec![],
    };
    cfg.validate().with_context(|| format!("{p}: the model's metadata"))?;
    Ok(cfg)
}

/// The tokenizer in the file's `tokenizer.ggml.*` keys (a SentencePiece `llama` vocabulary).
pub fn tokenizer(g: &GgufFile, vocab_size: usize) -> Result<Tokenizer> {
    let p = g.path.display();
    let model = g.get("tokenizer.ggml.model").and_then(|v| v.as_str()).unwrap_or("");
    ensure!(model == "llama", "{p}: tokenizer model `{model}` (only SentencePiece `llama` vocabularies are read)");
    let arr = |k: &str| -> Result<&[Value]> {
        g.get(k).and_then(|v| v.as_array()).with_context(|| format!("{p}: missing array `{k}`"))
    };
    let pieces: Vec<String> = arr("tokenizer.ggml.tokens")?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()
        .with_context(|| format!("{p}: `tokenizer.ggml.tokens` holds a non-string"))?;
    let n = pieces.len();
    let scores: Vec<f32> = match g.get("tokenizer.ggml.scores") {
        Some(_) => arr("tokenizer.ggml.scores")?.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
        None => vec![0.0; n],
    };
    let types: Vec<i32> = match g.get("tokenizer.ggml.token_type") {
        Some(_) => arr("tokenizer.ggml.token_type")?.iter().map(|v| v.as_i64().unwrap_or(1) as i32).collect(),
        None => vec![1; n],
    };
    ensure!(
        scores.len() == n && types.len() == n,
        "{p}: {n} tokens but {} scores and {} types",
        scores.len(),
        types.len()
    );
    ensure!(n == vocab_size, "{p}: the tokenizer has {n} tokens but the model's embedding has {vocab_size} rows");
    let id = |k: &str, default: u32| -> Result<u32> {
        match g.get(k) {
            None => Ok(default),
            Some(v) => {
                let i = v.as_i64().with_context(|| format!("{p}: `{k}` is not an integer"))?;
                ensure!(i >= 0 && (i as usize) < n, "{p}: `{k}` = {i} is not a token id (vocabulary {n})");
                Ok(i as u32)
            }
        }
    };
    let (bos, eos, unk) = (
        id("tokenizer.ggml.bos_token_id", 1)?,
        id("tokenizer.ggml.eos_token_id", 2)?,
        id("tokenizer.ggml.unknown_token_id", 0)?,
    );
    let add_space = g.get("tokenizer.ggml.add_space_prefix").and_then(|v| v.as_i64()).map(|v| v != 0).unwrap_or(true);
    let flag = |k: &str, default: bool| g.get(k).and_then(|v| v.as_i64()).map(|v| v != 0).unwrap_or(default);
    let config = crate::tokenizer::TokenizerConfig {
        add_bos_token: flag("tokenizer.ggml.add_bos_token", true),
        add_eos_token: flag("tokenizer.ggml.add_eos_token", false),
        ..Default::default()
    };
    Ok(Tokenizer::from_spm(SpmVocab::new(pieces, scores, types, unk, add_space), bos, eos, config))
}

/// Loads a llama model from a GGUF file, its tensors used as stored (mapped, except q/k whose rows
/// are put back in Hugging Face order).
pub fn load(path: &std::path::Path) -> Result<GgufModel> {
    let g = GgufFile::open(path)?;
    let cfg = config(&g)?;
    let p = path.display().to_string();
    let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
    let (qd, kvd, hd) = (cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let mat = |name: &str, rows: usize, cols: usize, unpermute: bool| -> Result<WeightMatrix> {
        let t = g.tensor(name)?;
        ensure!(
            t.dims.len() == 2 && t.dims[0] == cols && t.dims[1] == rows,
            "{p}: tensor `{name}` is {:?} (ggml order) but the metadata implies [{cols}, {rows}]",
            t.dims
        );
        let storage = if unpermute {
            let b = unpermute_rows(g.bytes(t), rows, t.size / rows, hd);
            crate::model::weights::release_mapped(&g.map, t.offset..t.offset + t.size);
            Storage::Bytes(b)
        } else {
            Storage::Mapped { map: g.map.clone(), range: t.offset..t.offset + t.size }
        };
        WeightMatrix::new(t.format, rows, cols, storage).with_context(|| format!("{p}: tensor `{name}`"))
    };
    let vec = |name: &str| -> Result<Vec<f32>> {
        let t = g.tensor(name)?;
        ensure!(t.dims == [d], "{p}: tensor `{name}` has shape {:?}, expected [{d}]", t.dims);
        g.vector_f32(name)
    };
    let mut layers = vec![];
    for i in 0..cfg.num_hidden_layers {
        let b = format!("blk.{i}.");
        layers.push(DecoderLayer {
            attn_norm: vec(&format!("{b}attn_norm.weight"))?,
            wqkv: Linear::new(vec![
                mat(&format!("{b}attn_q.weight"), qd, d, true)?,
                mat(&format!("{b}attn_k.weight"), kvd, d, true)?,
                mat(&format!("{b}attn_v.weight"), kvd, d, false)?,
            ])?,
            wo: Linear::single(mat(&format!("{b}attn_output.weight"), d, qd, false)?),
            mlp_norm: vec(&format!("{b}ffn_norm.weight"))?,
            wgu: Linear::new(vec![
                mat(&format!("{b}ffn_gate.weight"), f, d, false)?,
                mat(&format!("{b}ffn_up.weight"), f, d, false)?,
            ])?,
            wdown: Linear::single(mat(&format!("{b}ffn_down.weight"), d, f, false)?),
        });
    }
    let embed = mat("token_embd.weight", cfg.vocab_size, d, false)?;
    // tied embeddings: the head reads the embedding matrix
    let head_name =
        if g.tensors.iter().any(|t| t.name == "output.weight") { "output.weight" } else { "token_embd.weight" };
    let lm_head = Linear::single(mat(head_name, cfg.vocab_size, d, false)?);
    let final_norm = vec("output_norm.weight")?;
    let names: std::collections::HashSet<String> = (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"]
                .map(|n| format!("blk.{i}.{n}.weight"))
        })
        .chain(["token_embd.weight", "output.weight", "output_norm.weight"].map(String::from))
        .collect();
    for t in &g.tensors {
        if !names.contains(&t.name) && !t.name.ends_with("rope_freqs.weight") {
            bail!("{p}: unknown tensor `{}` (not part of a llama model with this metadata)", t.name);
        }
    }
    let tokenizer = tokenizer(&g, cfg.vocab_size)?;
    let chat_template = g.get("tokenizer.chat_template").and_then(|v| v.as_str()).map(str::to_string);
    let model = InferenceModel::new(cfg, embed, layers, final_norm, lm_head).with_context(|| p.clone())?;
    Ok(GgufModel { model, tokenizer, chat_template })
}

/// ggml's `general.file_type` of a weight choice (`LLAMA_FTYPE_*`).
fn file_type(dtype: ModelDtype) -> u32 {
    match dtype {
        ModelDtype::Uniform(Format::F32) => 0,
        ModelDtype::Uniform(Format::F16) => 1,
        ModelDtype::Uniform(Format::Q4_0) => 2,
        ModelDtype::Uniform(Format::Q8_0) => 7,
        ModelDtype::Uniform(Format::Q4K) => 15, // Q4_K_M is the nearest named type
        ModelDtype::Q4KM => 15,
        ModelDtype::Uniform(Format::Q6K) => 18,
        ModelDtype::Uniform(Format::BF16) => 32,
    }
}

/// Writes a model given as HF-layout f32 parameters as a llama.cpp GGUF file: metadata as
/// `convert_hf_to_gguf.py` writes it, the tokenizer (with SentencePiece scores for the Llama-2
/// vocabulary) and chat template embedded, matrices quantized with ggml's reference quantizers,
/// norms in f32.
/// A matrix written in another format than asked, because its rows are not a whole number of
/// the format's blocks (as llama-quantize falls back: K-quants to Q8_0, then to f16).
#[derive(Debug, Clone, PartialEq)]
pub struct Fallback {
    pub tensor: String,
    pub wanted: Format,
    pub written: Format,
    pub cols: usize,
}

/// What [`export`] did beyond what it was asked.
#[derive(Debug, Default)]
pub struct GgufExport {
    pub fallbacks: Vec<Fallback>,
}

impl GgufExport {
    /// One line a kind of fallback ("12 tensors (blk.0.attn_q.weight, …) as Q8_0 instead of Q4_K: rows of 64 columns, not a multiple of 256").
    pub fn fallback_notes(&self) -> Vec<String> {
        let mut groups: Vec<(Format, Format, usize, Vec<&str>)> = vec![];
        for f in &self.fallbacks {
            match groups.iter_mut().find(|g| g.0 == f.wanted && g.1 == f.written && g.2 == f.cols) {
                Some(g) => g.3.push(&f.tensor),
                None => groups.push((f.wanted, f.written, f.cols, vec![&f.tensor])),
            }
        }
        groups
            .into_iter()
            .map(|(wanted, written, cols, names)| {
                let more = if names.len() > 1 { ", …" } else { "" };
                format!(
                    "{} tensor(s) ({}{more}) written as {} instead of {}: rows of {cols} columns are not whole {}-value blocks",
                    names.len(),
                    names[0],
                    written.name(),
                    wanted.name(),
                    wanted.block_len()
                )
            })
            .collect()
    }
}

pub fn export(
    cfg: &LlamaConfig,
    params: &[f32],
    tok: &Tokenizer,
    chat_template: Option<&str>,
    dtype: ModelDtype,
    name: &str,
    out: &std::path::Path,
) -> Result<GgufExport> {
    let layout = ParamLayout::new(cfg);
    ensure!(params.len() == layout.total, "parameter buffer does not match the config");
    let mut w = GgufWriter::default();
    let u32v = |x: usize| Value::U32(x as u32);
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("general.name", Value::Str(name.into()));
    w.set("llama.block_count", u32v(cfg.num_hidden_layers));
    w.set("llama.context_length", u32v(cfg.max_position_embeddings));
    w.set("llama.embedding_length", u32v(cfg.hidden_size));
    w.set("llama.feed_forward_length", u32v(cfg.intermediate_size));
    w.set("llama.attention.head_count", u32v(cfg.num_attention_heads));
    w.set("llama.attention.head_count_kv", u32v(cfg.num_key_value_heads));
    w.set("llama.rope.freq_base", Value::F32(cfg.rope_theta));
    w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps));
    w.set("general.file_type", Value::U32(file_type(dtype)));
    w.set("llama.vocab_size", u32v(cfg.vocab_size));
    w.set("llama.rope.dimension_count", u32v(cfg.head_dim));
    w.set("general.quantization_version", Value::U32(2));
    let (pieces, scores, types) = tok.gguf_vocab();
    ensure!(
        pieces.len() == cfg.vocab_size,
        "the tokenizer has {} tokens but the model's vocabulary is {}",
        pieces.len(),
        cfg.vocab_size
    );
    w.set("tokenizer.ggml.model", Value::Str("llama".into()));
    w.set("tokenizer.ggml.pre", Value::Str("default".into()));
    w.set("tokenizer.ggml.tokens", Value::Array(pieces.into_iter().map(Value::Str).collect()));
    w.set("tokenizer.ggml.scores", Value::Array(scores.into_iter().map(Value::F32).collect()));
    w.set("tokenizer.ggml.token_type", Value::Array(types.into_iter().map(Value::I32).collect()));
    w.set("tokenizer.ggml.bos_token_id", Value::U32(tok.bos_id));
    w.set("tokenizer.ggml.eos_token_id", Value::U32(tok.eos_id));
    w.set("tokenizer.ggml.unknown_token_id", Value::U32(0));
    w.set("tokenizer.ggml.add_bos_token", Value::Bool(tok.config.add_bos_token));
    w.set("tokenizer.ggml.add_eos_token", Value::Bool(tok.config.add_eos_token));
    if let Some(t) = chat_template {
        w.set("tokenizer.chat_template", Value::Str(t.into()));
    }
    let nl = cfg.num_hidden_layers;
    let mut fallbacks = vec![];
    let mut add =
        |gname: &str, kind: &str, layer: usize, range: std::ops::Range<usize>, rows: usize, cols: usize, perm: bool| {
            let fmt = if kind == "norm" { Format::F32 } else { dtype.format_for(kind, layer, nl, cols) };
            let wanted = dtype.wanted_format(kind, layer, nl);
            if kind != "norm" && fmt != wanted {
                fallbacks.push(Fallback { tensor: gname.to_string(), wanted, written: fmt, cols });
            }
            let rb = fmt.row_bytes(cols).expect("format_for picks a format that fits the row");
            let mut bytes = vec![0u8; rows * rb];
            {
                use rayon::prelude::*;
                bytes.par_chunks_mut(rb).zip(params[range].par_chunks(cols)).for_each(|(b, r)| fmt.quantize_row(r, b));
            }
            if perm {
                bytes = permute_rows(&bytes, rows, rb, cfg.head_dim);
            }
            let dims = if rows == 1 { vec![cols] } else { vec![cols, rows] };
            w.add_tensor(gname, dims, fmt, bytes);
        };
    let (d, f, qd, kvd) = (cfg.hidden_size, cfg.intermediate_size, cfg.q_dim(), cfg.kv_dim());
    add("token_embd.weight", "embed", 0, layout.embed.clone(), cfg.vocab_size, d, false);
    for (i, l) in layout.layers.iter().enumerate() {
        let b = format!("blk.{i}.");
        let q0 = l.wqkv.start;
        add(&format!("{b}attn_norm.weight"), "norm", i, l.attn_norm.clone(), 1, d, false);
        add(&format!("{b}attn_q.weight"), "q", i, q0..q0 + qd * d, qd, d, true);
        add(&format!("{b}attn_k.weight"), "k", i, q0 + qd * d..q0 + (qd + kvd) * d, kvd, d, true);
        add(&format!("{b}attn_v.weight"), "v", i, q0 + (qd + kvd) * d..l.wqkv.end, kvd, d, false);
        add(&format!("{b}attn_output.weight"), "o", i, l.wo.clone(), d, qd, false);
        add(&format!("{b}ffn_norm.weight"), "norm", i, l.mlp_norm.clone(), 1, d, false);
        let g0 = l.wgu.start;
        add(&format!("{b}ffn_gate.weight"), "gate", i, g0..g0 + f * d, f, d, false);
        add(&format!("{b}ffn_up.weight"), "up", i, g0 + f * d..l.wgu.end, f, d, false);
        add(&format!("{b}ffn_down.weight"), "down", i, l.wdown.clone(), d, f, false);
    }
    add("output_norm.weight", "norm", 0, layout.final_norm.clone(), 1, d, false);
    add("output.weight", "head", 0, layout.lm_head.clone(), cfg.vocab_size, d, false);
    w.write(out)?;
    Ok(GgufExport { fallbacks })
}

/// llama.cpp's name of the weight a PEFT module adapts (`self_attn.q_proj` → `attn_q`).
fn gguf_weight_of(module: &str) -> Option<&'static str> {
    let last = module.rsplit('.').next()?;
    let names = [
        ("q_proj", "attn_q"),
        ("k_proj", "attn_k"),
        ("v_proj", "attn_v"),
        ("o_proj", "attn_output"),
        ("gate_proj", "ffn_gate"),
        ("up_proj", "ffn_up"),
        ("down_proj", "ffn_down"),
    ];
    names.iter().find(|(hf, _)| *hf == last).map(|(_, g)| *g)
}

/// Writes LoRA adapters as llama.cpp's adapter GGUF, as `convert_lora_to_gguf.py` does:
/// `general.type` `adapter`, `adapter.type` `lora`, `adapter.lora.alpha`; per adapted weight
/// `blk.N.<weight>.weight.lora_a` (`A`, `[r, in]`) and `.lora_b` (`B`, `[out, r]`), f32, with q's
/// and k's `B` rows permuted as their weights are. llama.cpp's `--lora` applies it over a GGUF of the
/// base model.
pub fn export_lora(cfg: &LlamaConfig, adapters: &Adapters, name: &str, out: &std::path::Path) -> Result<()> {
    let mut w = GgufWriter::default();
    w.set("general.architecture", Value::Str("llama".into()));
    w.set("general.type", Value::Str("adapter".into()));
    w.set("general.name", Value::Str(name.into()));
    w.set("adapter.type", Value::Str("lora".into()));
    w.set("adapter.lora.alpha", Value::F32(adapters.alpha as f32));
    let r = adapters.rank;
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    for t in &adapters.targets {
        let weight = gguf_weight_of(&t.module).with_context(|| format!("{}: not a Llama linear layer", t.module))?;
        let base = format!("blk.{}.{weight}.weight", t.layer);
        w.add_tensor(&format!("{base}.lora_a"), vec![t.inp, r], Format::F32, f32_bytes(&adapters.weights[t.a.clone()]));
        let mut b = f32_bytes(&adapters.weights[t.b.clone()]);
        if matches!(weight, "attn_q" | "attn_k") {
            b = permute_rows(&b, t.out, r * 4, cfg.head_dim);
        }
        w.add_tensor(&format!("{base}.lora_b"), vec![r, t.out], Format::F32, b);
    }
    w.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_round_trips_and_matches_convert_hf_to_gguf() {
        // two heads of head_dim 4, one byte per row: convert's permute puts HF rows
        // [0, 2, 1, 3] of each head at GGUF rows [0, 1, 2, 3]
        let hf: Vec<u8> = (0..8).collect();
        let gg = permute_rows(&hf, 8, 1, 4);
        assert_eq!(gg, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&gg, 8, 1, 4), hf);
    }

    /// Export then load: the same logits as the model in memory, in every format.
    #[test]
    fn export_then_load_gives_the_same_model() {
        let llama = crate::model::test_model(300, 64, 9, 2.0);
        let mut cfg = llama.cfg.clone();
        cfg.vocab_size = 300;
        let dir = std::env::temp_dir().join(format!("tl-gguf-exp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // a vocabulary of the model's size
        let pieces: Vec<String> =
            (0..300).map(|i| if i < 3 { ["<unk>", "<s>", "</s>"][i].into() } else { format!("p{i}") }).collect();
        let types: Vec<i32> = (0..300)
            .map(|i| {
                if i == 0 {
                    2
                } else if i < 3 {
                    3
                } else {
                    1
                }
            })
            .collect();
        let tok = Tokenizer::from_spm(SpmVocab::new(pieces, vec![0.0; 300], types, 0, true), 1, 2, Default::default());
        for dtype in [ModelDtype::Uniform(Format::F32), ModelDtype::Uniform(Format::Q8_0), ModelDtype::Q4KM] {
            let p = dir.join("m.gguf");
            export(&cfg, &llama.params, &tok, Some("{{ x }}"), dtype, "test", &p).unwrap();
            let g = load(&p).unwrap();
            assert_eq!(g.chat_template.as_deref(), Some("{{ x }}"));
            let mut mem = InferenceModel::from_params(cfg.clone(), llama.params.clone(), dtype).unwrap();
            mem.training_numerics = false; // as a GGUF model computes
            let toks = [1u32, 50, 7, 299, 3];
            let mut c1 = crate::model::KvCache::new(&mem, 8);
            let mut c2 = crate::model::KvCache::new(&g.model, 8);
            let a = mem.next_token_logits(&toks, &mut c1, crate::model::RowMode::BatchInvariant).unwrap();
            let b = g.model.next_token_logits(&toks, &mut c2, crate::model::RowMode::BatchInvariant).unwrap();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{dtype:?}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

#[cfg(test)]
mod bad_input {
    use super::*;

    fn minimal(arch: &str) -> GgufWriter {
        let mut w = GgufWriter::default();
        w.set("general.architecture", Value::Str(arch.into()));
        w.set("llama.embedding_length", Value::U32(32));
        w.set("llama.block_count", Value::U32(1));
        w.set("llama.feed_forward_length", Value::U32(64));
        w.set("llama.attention.head_count", Value::U32(2));
        w.set("llama.context_length", Value::U64(16)); // an integer of another width
        w.set("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5));
        let mut bytes = vec![0u8; 32 * 8 * 4];
        bytes[0] = 1;
        w.add_tensor("token_embd.weight", vec![32, 8], Format::F32, bytes);
        w
    }

    #[test]
    fn clear_errors_name_the_file_and_the_key_or_tensor() {
        let dir = std::env::temp_dir().join(format!("tl-gguf-badin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("m.gguf");
        let err = |w: &GgufWriter| {
            w.write(&p).unwrap();
            format!("{:#}", load(&p).err().expect("must fail"))
        };
        let e = err(&minimal("gpt2"));
        assert!(e.contains("m.gguf") && e.contains("gpt2"), "{e}");
        let e = err(&minimal("llama"));
        assert!(e.contains("m.gguf") && e.contains("blk.0.attn_norm.weight"), "missing tensor: {e}");
        // an unknown tensor type: patch the type id of the first tensor in the header
        minimal("llama").write(&p).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        let name = b"token_embd.weight";
        let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
        b[at..at + 4].copy_from_slice(&6u32.to_le_bytes()); // q5_0
        std::fs::write(&p, &b).unwrap();
        let e = format!("{:#}", load(&p).err().unwrap());
        assert!(e.contains("token_embd.weight") && e.contains("q5_0"), "{e}");
        // a tensor whose size does not match its shape: claim more rows than the file holds
        minimal("llama").write(&p).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        let at = b.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 8;
        b[at..at + 8].copy_from_slice(&(1u64 << 30).to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        let e = format!("{:#}", load(&p).err().unwrap());
        assert!(e.contains("token_embd.weight") && e.contains("past the end"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
