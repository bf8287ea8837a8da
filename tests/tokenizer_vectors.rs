//! The Llama-2 tokenizer against llama.cpp's SentencePiece test vectors (ids without BOS).
//! The vectors file comes from `TINYLLAMA_TOKENIZER_VECTORS` (default: the copy vendored in
//! `tests/fixtures/tokenizer/`, from `../shared/tokenizer/llama2/vectors.jsonl`); `TINYLLAMA_TOKENIZER_VECTORS=FILE cargo test
//! --release tokenizer_vectors` checks any file of that layout (`{"text", "ids"}` per line), with
//! the tokenizer from `TINYLLAMA_TOKENIZER` (default: the built-in Llama-2 one).

mod common;

use std::path::PathBuf;
use tinyllama::tokenizer::Tokenizer;

#[test]
fn tokenizer_vectors() {
    let path = PathBuf::from(
        std::env::var("TINYLLAMA_TOKENIZER_VECTORS")
            .unwrap_or_else(|_| "tests/fixtures/tokenizer/llama2-vectors.jsonl".into()),
    );
    assert!(path.exists(), "{} not found (set TINYLLAMA_TOKENIZER_VECTORS)", path.display());
    let tok = match std::env::var("TINYLLAMA_TOKENIZER") {
        Ok(p) => Tokenizer::from_file(p.as_ref()).unwrap(),
        Err(_) => Tokenizer::llama2(),
    };
    let mut n = 0;
    let mut failures = vec![];
    for line in std::fs::read_to_string(&path).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}: got {got:?}, want {want:?}"));
        }
        n += 1;
    }
    eprintln!("{n} vectors from {}", path.display());
    assert!(failures.is_empty(), "{} of {n} vectors differ:\n{}", failures.len(), failures.join("\n"));
}

/// The GGUF vocabulary llama.cpp ships for Llama-2 (pieces, SentencePiece scores, token types),
/// tokenized by our llama.cpp-style SentencePiece path: the same ids as the vectors, and as the
/// tokenizer.json path on the built-in corpus's first lines.
#[test]
fn gguf_vocabulary_tokenizes_like_sentencepiece() {
    let vocab = PathBuf::from("../shared/tokenizer/llama2/ggml-vocab-llama-spm.gguf");
    let vectors = PathBuf::from("tests/fixtures/tokenizer/llama2-vectors.jsonl");
    if common::require("gguf_vocabulary_tokenizes_like_sentencepiece", &vocab).is_none() {
        return;
    }
    let g = tinyllama::gguf::GgufFile::open(&vocab).unwrap();
    let spm = tinyllama::gguf::llama::tokenizer(&g, 32000).unwrap();
    let hf = Tokenizer::llama2();
    for line in std::fs::read_to_string(&vectors).unwrap().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let text = v["text"].as_str().unwrap();
        let want: Vec<u32> = v["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        assert_eq!(spm.encode(text).unwrap(), want, "{text:?}");
    }
    let austen = std::fs::read_to_string("../shared/corpus/austen/emma.txt")
        .or_else(|_| std::fs::read_to_string("data/corpus/README.md"))
        .unwrap_or_default();
    for line in austen.lines().take(300).filter(|l| !l.is_empty()) {
        assert_eq!(spm.encode(line).unwrap(), hf.encode(line).unwrap(), "{line:?}");
        assert_eq!(spm.decode(&spm.encode(line).unwrap()).unwrap(), hf.decode(&hf.encode(line).unwrap()).unwrap());
    }
    // the exported vocabulary carries the same scores and types as llama.cpp's
    let (pieces, scores, types) = hf.gguf_vocab();
    let (p2, s2, t2) = spm.gguf_vocab();
    assert_eq!((pieces, types), (p2, t2));
    assert!(scores.iter().zip(&s2).all(|(a, b)| a.to_bits() == b.to_bits()));
}
