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

/// A model directory's tokenizer (`Tokenizer::from_model_dir`) against transformers' own
/// `AutoTokenizer` over the same files: TinyLlama-1.1B-Chat-v1.0's `tokenizer_config.json`
/// (`LlamaTokenizer`, `legacy: false`: no "▁" after a special token), the same with `legacy: true`,
/// with `add_prefix_space: false`, and the generic backend (`tokenizer.json` as it is), over
/// chat-template-rendered conversations full of special tokens and over plain text. Ids with the
/// special tokens the tokenizer adds, and the decoded text.
#[test]
fn model_dir_tokenizer_equals_transformers() {
    let test = "model_dir_tokenizer_equals_transformers";
    let Some(py) = common::python(test, "transformers") else { return };
    use tinyllama::tokenizer::chat_template::{ChatTemplate, Message, ZEPHYR};
    let template = ChatTemplate::new(ZEPHYR, "<s>", "</s>").unwrap();
    let msg = |role: &str, content: &str| Message { role: role.into(), content: content.into() };
    let conversations = [
        vec![msg("system", "You are a friendly chatbot."), msg("user", "What is 2+2?"), msg("assistant", "4.")],
        vec![msg("user", " leading space?"), msg("assistant", "  two spaces\nand a newline ")],
        vec![msg("user", "Ünïcödé ½ 🦙 日本語"), msg("assistant", "a literal <s> and </s> inside\n\n")],
        vec![msg("system", ""), msg("user", "\ttab\n"), msg("assistant", "def f(x):\n    return x")],
    ];
    let mut texts: Vec<String> = vec![];
    for c in &conversations {
        texts.push(template.render(c, false).unwrap());
        texts.push(template.render(&c[..c.len() - 1], true).unwrap());
    }
    texts.extend(
        ["Hello world", " Hello", "  two", "Hi?</s>\n<|assistant|>\nHello", "</s> x", "<s>Hi", "a\n</s>\n b", "", "▁x"]
            .map(String::from),
    );
    let llama_chat = serde_json::json!({
        "add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": "</s>",
        "clean_up_tokenization_spaces": false, "legacy": false, "model_max_length": 2048, "pad_token": "</s>",
        "padding_side": "right", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": false
    });
    let with = |key: &str, v: serde_json::Value| {
        let mut c = llama_chat.clone();
        c[key] = v;
        c
    };
    let configs = [
        ("tinyllama-chat", Some(llama_chat.clone())),
        ("legacy-true", Some(with("legacy", true.into()))),
        ("no-prefix-space", Some(with("add_prefix_space", false.into()))),
        ("fast-class", Some(with("tokenizer_class", "LlamaTokenizerFast".into()))),
        (
            "generic",
            Some(
                serde_json::json!({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}),
            ),
        ),
        ("no-config", None),
    ];
    let d = common::tmpdir("tok-hf");
    let input = serde_json::to_string(&texts).unwrap();
    let mut legacy_differs = false;
    for (name, config) in configs {
        let dir = d.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy("data/tokenizer/llama2/tokenizer.json", dir.join("tokenizer.json")).unwrap();
        if let Some(c) = &config {
            std::fs::write(dir.join("tokenizer_config.json"), c.to_string()).unwrap();
        }
        let mut child = std::process::Command::new(&py)
            .arg("tests/reference/hf_tokenize.py")
            .arg(&dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success(), "{name}: {}", String::from_utf8_lossy(&o.stderr));
        let reference: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let tok = Tokenizer::from_model_dir(&dir).unwrap();
        for (text, want) in texts.iter().zip(reference["results"].as_array().unwrap()) {
            let want_ids: Vec<u32> =
                want["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let got = tok.encode_prompt(text).unwrap();
            assert_eq!(got, want_ids, "{name} ({}): {text:?}", reference["class"]);
            assert_eq!(tok.decode(&got).unwrap(), want["decoded"].as_str().unwrap(), "{name}: decode of {text:?}");
            // the word-at-a-time path equals the full pipeline under every setting
            assert_eq!(tok.encode(text).unwrap(), tok.encode_pipeline(text).unwrap(), "{name}: {text:?}");
            if name == "tinyllama-chat" {
                legacy_differs |= got != Tokenizer::llama2().encode_prompt(text).unwrap();
            }
        }
    }
    assert!(legacy_differs, "TinyLlama-Chat's settings change some of these texts' ids");
    // the example: `</s>` then a newline is `2, 13`, not `2, 29871, 13`
    let chat = Tokenizer::from_model_dir(&d.join("tinyllama-chat")).unwrap();
    let ids = chat.encode("Hi?</s>\n<|assistant|>\n").unwrap();
    let at = ids.iter().position(|&t| t == 2).unwrap();
    assert_eq!(ids[at + 1], 13, "{ids:?}");
    std::fs::remove_dir_all(d).unwrap();
}
