//! The Llama-2 tokenizer against llama.cpp's SentencePiece test vectors (ids without BOS).
//! The vectors file comes from `TINYLLAMA_TOKENIZER_VECTORS` (default
//! `../shared/tokenizer/llama2/vectors.jsonl`); `TINYLLAMA_TOKENIZER_VECTORS=FILE cargo test
//! --release tokenizer_vectors` checks any file of that layout (`{"text", "ids"}` per line), with
//! the tokenizer from `TINYLLAMA_TOKENIZER` (default: the built-in Llama-2 one).

use std::path::PathBuf;
use tinyllama::tokenizer::Tokenizer;

#[test]
fn tokenizer_vectors() {
    let path = PathBuf::from(
        std::env::var("TINYLLAMA_TOKENIZER_VECTORS")
            .unwrap_or_else(|_| "../shared/tokenizer/llama2/vectors.jsonl".into()),
    );
    if !path.exists() {
        eprintln!("skipping tokenizer vectors: {} not found (set TINYLLAMA_TOKENIZER_VECTORS)", path.display());
        return;
    }
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
