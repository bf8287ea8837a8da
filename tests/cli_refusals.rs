//! The command line refuses what it cannot do right, with exit code 1 and a message naming the
//! value and its valid range — never a silent default, a wrong number or a panic.

mod common;

use std::path::Path;
use std::process::Command;

fn refused(args: &[&str], model: &Path, want: &str) {
    let o = Command::new(env!("CARGO_BIN_EXE_tinyllama")).args(args).arg("--model").arg(model).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[test]
fn out_of_range_values_are_refused() {
    let d = common::tmpdir("cli-ranges");
    let m = common::tiny_model(&d);
    // --write-hf never replaces a directory
    let o = Command::new(env!("CARGO_BIN_EXE_tinyllama"))
        .args(["bench", "generate", "--preset", "tiny-10m", "--write-hf"])
        .arg(&m)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    for t in ["nan", "inf", "-1"] {
        refused(&["generate", "--prompt", "Hi", "--temperature", t], &m, "--temperature must be a finite number ≥ 0");
    }
    for p in ["2", "-0.5", "0"] {
        refused(&["generate", "--prompt", "Hi", "--top-p", p], &m, "--top-p must be in (0, 1]");
    }
    refused(&["eval", "--tasks", "bbh", "--limit", "0"], &m, "--limit must be at least 1");
    refused(&["eval", "--tasks", "bbh", "--limit", "-5"], &m, "invalid value '-5'");
    refused(&["eval", "--tasks", ""], &m, "no tasks given");
    refused(&["eval", "--tasks", "bhh"], &m, "did you mean `bbh`");
    refused(&["eval", "--tasks", "piqa", "--data-dir", "/no/such/dir"], &m, "pass --data-dir DIR");
    #[cfg(feature = "serve")]
    refused(&["serve", "--max-queue", "0"], &m, "--max-queue must be at least 1");
    // the decode engine's flags, before any model loads
    refused(&["generate", "--prompt", "Hi", "--step-tokens", "0"], &m, "--step-tokens must be at least 1");
    refused(&["generate", "--prompt", "Hi", "--draft-tokens", "0"], &m, "--draft-tokens must be at least 1");
    refused(&["generate", "--prompt", "Hi", "--draft-tokens=-2"], &m, "invalid value '-2'");
    refused(&["generate", "--prompt", "Hi", "--draft-p-min", "1.5"], &m, "--draft-p-min must be in [0, 1]");
    #[cfg(feature = "serve")]
    refused(&["serve", "--step-tokens", "0"], &m, "--step-tokens must be at least 1");
    // a draft of another vocabulary, or of a shorter context, is refused by name
    let other = common::tiny_model(&d.join("other"));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(other.join("config.json")).unwrap()).unwrap();
    cfg["max_position_embeddings"] = serde_json::json!(64);
    std::fs::write(other.join("config.json"), cfg.to_string()).unwrap();
    let o = other.to_str().unwrap();
    refused(&["generate", "--prompt", "Hi", "--draft", o], &m, "has a context of 64 tokens, shorter than the 256");
    // the model drafting for itself in Q8_0: the same greedy text
    let run = |extra: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_tinyllama"))
            .args(["generate", "--prompt", "Once upon a time", "-n", "24", "--temperature", "0", "--model"])
            .arg(&m)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    assert_eq!(run(&["--draft-dtype", "q8_0", "--draft-p-min", "0"]), run(&[]));
    // `info` takes the model as every command does; config.json says 1e-5, not 9.999999747378752e-6
    let o = Command::new(env!("CARGO_BIN_EXE_tinyllama")).args(["info", "--model"]).arg(&m).output().unwrap();
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("parameters: 8930432"), "{o:?}");
    let cj = std::fs::read_to_string(m.join("config.json")).unwrap();
    assert!(cj.contains("\"rms_norm_eps\": 0.00001") || cj.contains("\"rms_norm_eps\": 1e-5"), "{cj}");
    refused(&["eval", "--suite", "instructeval", "--temperature", "-1"], &m, "--temperature must be");
    let text = d.join("t.txt");
    std::fs::write(&text, "It is a truth universally acknowledged. ".repeat(40)).unwrap();
    let t = text.to_str().unwrap();
    refused(&["eval", "--perplexity", t, "--window", "300"], &m, "--window 300 exceeds the model's context (256)");
    // within the context every token after the first is scored
    let json = d.join("ppl.json");
    let o = Command::new(env!("CARGO_BIN_EXE_tinyllama"))
        .args(["eval", "--perplexity", t, "--window", "256", "--model"])
        .arg(&m)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = tinyllama::tokenizer::Tokenizer::llama2().encode(&std::fs::read_to_string(&text).unwrap()).unwrap().len();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("{n} tokens scored")), "{out} (want {n}: BOS + {n} tokens)");
    // the result says what it was computed from
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (v["window"].as_u64(), v["stride"].as_u64(), v["tokens_scored"].as_u64()),
        (Some(256), Some(128), Some(n as u64))
    );
    assert!(v["file"].as_str().unwrap().ends_with("t.txt") && v["model"].is_string(), "{v}");
    assert_eq!(v["tinyllama_version"], env!("CARGO_PKG_VERSION"), "{v}");
    std::fs::remove_dir_all(d).unwrap();
}

/// A tokenizer with more tokens than the model has rows is refused when the model is loaded (not a
/// panic in the embedding lookup at the first such token).
#[test]
fn tokenizer_larger_than_the_vocabulary_is_refused_at_load() {
    let d = common::tmpdir("cli-vocab");
    let m = d.join("model");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new("tests/fixtures/hf-tiny/model").join(f), m.join(f)).unwrap();
        // vocab 256
    }
    std::fs::copy("data/tokenizer/llama2/tokenizer.json", m.join("tokenizer.json")).unwrap(); // 32000 tokens
    refused(&["generate", "--prompt", "Hi"], &m, "the tokenizer has 32000 tokens but the model's vocabulary is 256");
    std::fs::remove_dir_all(d).unwrap();
}
