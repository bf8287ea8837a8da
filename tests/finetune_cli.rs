//! `tinyllama sft` and `tinyllama dpo` from the command line: a resumed run equals the
//! uninterrupted one bit for bit, the result is a chat model (its template travels with the
//! checkpoint and the HF export, where transformers renders it), bad rows are named by file:line.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tinyllama"))
}

fn fixture() -> PathBuf {
    common::trl_fixture()
}

/// The TRL fixture's small model with the repository's tokenizer beside it.
fn model_dir(d: &Path) -> PathBuf {
    common::trl_model(&d.join("model"))
}

fn run(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{:?} failed:\n{}{}",
        cmd,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn train(mode: &str, model: &Path, data: &str, out: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.args([mode, "--quiet", "--max-lr", "1e-3", "--micro-batch", "2", "--max-length", "128", "--max-steps", "4"])
        .args(["--save-interval", "2", "--model"])
        .arg(model)
        .arg("--data")
        .arg(fixture().join(data))
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|mut v| {
            for k in ["elapsed_s", "tokens_per_s"] {
                v.as_object_mut().unwrap().remove(k);
            }
            v
        })
        .collect()
}

/// Train 4 steps; then again from the step-2 checkpoint of a copy: same rows, same weights.
fn resume_is_exact(mode: &str, data: &str, extra: &[&str]) {
    let d = common::tmpdir(&format!("ft-resume-{mode}"));
    let model = model_dir(&d);
    let a = d.join("a");
    run(&mut train(mode, &model, data, &a, extra));
    let b = d.join("b");
    run(Command::new("cp").arg("-r").arg(&a).arg(&b));
    std::fs::remove_dir_all(b.join("checkpoints/step-00000004")).unwrap();
    run(train(mode, &model, data, &b, extra).arg("--resume"));
    assert_eq!(metrics(&a), metrics(&b), "{mode}: metrics after resume");
    for f in ["model.safetensors", "optimizer.safetensors"] {
        let (x, y) = (a.join("checkpoints/step-00000004").join(f), b.join("checkpoints/step-00000004").join(f));
        assert!(std::fs::read(x).unwrap() == std::fs::read(y).unwrap(), "{mode}: {f} differs after resume");
    }
    let rows = metrics(&a);
    assert_eq!(rows.len(), 4);
    if mode == "dpo" {
        for k in ["rewards_chosen", "rewards_rejected", "reward_accuracy", "reward_margin"] {
            assert!(rows[3][k].is_f64(), "dpo row without {k}: {}", rows[3]);
        }
        assert!(b.join("ref_logps.json").exists());
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn sft_resume_is_bit_exact() {
    resume_is_exact("sft", "sft_messages.jsonl", &[]);
}

#[test]
fn dpo_resume_is_bit_exact() {
    resume_is_exact("dpo", "dpo_conv.jsonl", &["--beta", "0.1"]);
}

/// The fine-tuned checkpoint is a chat model: `chat` runs on it with its template, and the HF
/// export carries the template, which transformers renders as our chat template does.
#[test]
fn sft_result_is_a_chat_model() {
    let d = common::tmpdir("ft-chat");
    let model = model_dir(&d);
    let out = d.join("run");
    run(&mut train("sft", &model, "sft_prompt_completion_conv.jsonl", &out, &[]));
    let ck = out.join("checkpoints/step-00000004");
    let tc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tc["chat_template"].as_str().unwrap().contains("generation"), "{tc}");
    let mut chat = bin();
    chat.args(["chat", "-n", "3", "--temperature", "0", "--model"]).arg(&ck);
    chat.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = chat.spawn().unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"Hello!\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("no chat template"), "{err}");

    let hf = d.join("hf");
    run(bin().args(["export", "--checkpoint"]).arg(&ck).arg("--hf").arg(&hf));
    let Some(py) = common::python("sft_result_is_a_chat_model", "transformers") else { return };
    let msgs = r#"[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]"#;
    let script = format!(
        "import json, sys\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\n\
         print(json.dumps(t.apply_chat_template(json.loads('{msgs}'), tokenize=False, add_generation_prompt=True)))"
    );
    let o = run(Command::new(py).args(["-c", &script]).arg(&hf));
    let theirs: String = serde_json::from_slice(&o.stdout).unwrap();
    let tok = tinyllama::tokenizer::Tokenizer::from_file(&hf.join("tokenizer.json")).unwrap();
    let (ours, _) = tinyllama::train::finetune::template_for(None, &hf, &tok).unwrap();
    let m: Vec<tinyllama::tokenizer::chat_template::Message> = serde_json::from_str(msgs).unwrap();
    assert_eq!(ours.render(&m, true).unwrap(), theirs);
    std::fs::remove_dir_all(d).unwrap();
}

/// Bad rows are refused with the file and line, exit code 1.
#[test]
fn bad_rows_are_named() {
    let d = common::tmpdir("ft-bad");
    let model = model_dir(&d);
    let good = r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#;
    let cases: &[(&str, &str, &str)] = &[
        ("sft", r#"{"messages": [{"role": "robot", "content": "x"}]}"#, "role `robot`"),
        ("sft", r#"{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}"#, "empty"),
        ("sft", r#"{"messages": [{"role": "user", "content": "only a question"}]}"#, "no assistant message"),
        ("sft", r#"{"prompt": "no completion"}"#, "a row needs `messages`, `prompt` and `completion`, or `text`"),
        ("sft", r#"{"text": "plain"}"#, "a text row in a file of messages rows"),
        ("sft", "not json", "not a JSON object"),
        ("sft", r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#, "prompt/chosen/rejected row"),
        ("dpo", r#"{"prompt": "p", "chosen": "c"}"#, "a preference row needs `rejected`"),
        ("dpo", r#"{"text": "t"}"#, "DPO needs `prompt`, `chosen` and `rejected`"),
    ];
    for (i, (mode, bad, want)) in cases.iter().enumerate() {
        let f = d.join(format!("bad{i}.jsonl"));
        let first = if *mode == "sft" { good } else { r#"{"prompt": "a", "chosen": " b", "rejected": " c"}"# };
        std::fs::write(&f, format!("{first}\n\n{bad}\n")).unwrap();
        let o = bin()
            .args([*mode, "--quiet", "--max-steps", "1", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&f)
            .arg("--out")
            .arg(d.join(format!("out{i}")))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{bad}: {err}");
        assert!(err.contains(&format!("bad{i}.jsonl:3")) && err.contains(want), "{bad}: {err}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn lora_resume_is_bit_exact() {
    resume_is_exact("sft", "sft_messages.jsonl", &["--lora-rank", "4", "--lora-alpha", "8"]);
    resume_is_exact("dpo", "dpo_conv.jsonl", &["--lora-rank", "2", "--lora-targets", "q,v"]);
}

/// A LoRA run trains the adapters only; its checkpoint exports as PEFT's adapter (which PEFT
/// loads onto the base model) or, with --merge-lora, as a plain model equal to PEFT's own
/// `merge_and_unload()` of that adapter.
#[test]
fn lora_exports_match_peft() {
    let test = "lora_exports_match_peft";
    let d = common::tmpdir("ft-lora");
    let model = model_dir(&d);
    let out = d.join("run");
    run(&mut train("sft", &model, "sft_messages.jsonl", &out, &["--lora-rank", "4", "--lora-alpha", "8"]));
    let ck = out.join("checkpoints/step-00000004");
    let adapter = d.join("adapter");
    let merged = d.join("merged");
    run(bin().args(["export", "--checkpoint"]).arg(&ck).arg("--hf").arg(&adapter));
    run(bin().args(["export", "--merge-lora", "--checkpoint"]).arg(&ck).arg("--hf").arg(&merged));
    assert!(adapter.join("adapter_model.safetensors").exists() && adapter.join("adapter_config.json").exists());
    // only the adapted weights moved
    let base = tinyllama::checkpoint::hf::load_hf(&model).unwrap();
    let m = tinyllama::checkpoint::hf::load_hf(&merged).unwrap();
    for t in base.layout.hf_tensors(&base.cfg) {
        let same = base.params[t.range.clone()] == m.params[t.range.clone()];
        let adapted = t.name.contains("_proj");
        assert_eq!(same, !adapted, "{}: changed {}", t.name, !same);
    }
    let o = bin()
        .args(["export", "--merge-lora", "--checkpoint"])
        .arg(&model)
        .arg("--hf")
        .arg(d.join("x"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no LoRA adapter"));

    // --lora over the base model, merged in memory, generates what the merged export does
    let gen = |m: &Path, extra: &[&str]| {
        let o = bin()
            .args(["generate", "-p", "Hello", "-n", "12", "--temperature", "0", "-m"])
            .arg(m)
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8(o.stdout).unwrap(), String::from_utf8(o.stderr).unwrap())
    };
    let (by_adapter, said) = gen(&model, &["--lora", adapter.to_str().unwrap()]);
    assert!(said.contains("rank 4, 14 weights adapted, merged"), "{said}");
    assert_eq!(by_adapter, gen(&merged, &[]).0);
    // bad input: a rank of 0, a rank above a layer's size, an adapter for another model
    for (flags, says) in [
        (&["--lora-rank", "0"][..], "--lora-rank 0: a LoRA rank is at least 1"),
        (&["--lora-rank", "100000"][..], "is above the size of model.layers.0.self_attn.q_proj"),
    ] {
        let o = train("sft", &model, "sft_messages.jsonl", &d.join("bad"), flags).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{flags:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!d.join("bad").exists(), "nothing written");
    }
    let other = common::tiny_model(&d);
    let o =
        bin().args(["generate", "-p", "Hi", "-n", "2", "-m"]).arg(&other).arg("--lora").arg(&adapter).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the adapter is for another model or rank"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let Some(py) = common::python(test, "peft,transformers") else { return };
    let script = "import sys, torch\nfrom transformers import LlamaForCausalLM\nfrom peft import PeftModel\n\
        base = LlamaForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)\n\
        ours = LlamaForCausalLM.from_pretrained(sys.argv[3], dtype=torch.float32).state_dict()\n\
        theirs = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload().state_dict()\n\
        worst = max((theirs[k] - ours[k]).abs().max().item() for k in theirs)\n\
        print(worst)\nassert worst < 1e-6, worst\n";
    run(Command::new(py).args(["-c", script]).arg(&model).arg(&adapter).arg(&merged));
    std::fs::remove_dir_all(d).unwrap();
}

/// `--checkpoint-activations` (each layer's forward recomputed in the backward) changes no bit:
/// the same losses and the same weights, for a full fine-tune and for LoRA, SFT and DPO.
#[test]
fn recomputed_activations_change_no_bit() {
    let d = common::tmpdir("ft-recompute");
    let model = model_dir(&d);
    for (mode, data, extra) in [
        ("sft", "sft_messages.jsonl", &[][..]),
        ("sft", "sft_messages.jsonl", &["--lora-rank", "4"][..]),
        ("dpo", "dpo_conv.jsonl", &["--lora-rank", "2"][..]),
    ] {
        let (kept, recomputed) = (d.join("kept"), d.join("recomputed"));
        run(&mut train(mode, &model, data, &kept, extra));
        run(train(mode, &model, data, &recomputed, extra).arg("--checkpoint-activations"));
        assert_eq!(metrics(&kept), metrics(&recomputed), "{mode} {extra:?}");
        let ck = "checkpoints/step-00000004/model.safetensors";
        assert!(
            std::fs::read(kept.join(ck)).unwrap() == std::fs::read(recomputed.join(ck)).unwrap(),
            "{mode} {extra:?}"
        );
        std::fs::remove_dir_all(&kept).unwrap();
        std::fs::remove_dir_all(&recomputed).unwrap();
    }
    std::fs::remove_dir_all(d).unwrap();
}

/// `export --gguf-lora` writes what llama.cpp's convert_lora_to_gguf.py writes from the PEFT
/// adapter (every tensor and key), and llama.cpp running the base GGUF with it as its LoRA gives
/// the greedy tokens of our merged model's GGUF.
#[test]
fn gguf_lora_equals_llama_cpps_converter_and_runs_in_llama_cpp() {
    let test = "gguf_lora_equals_llama_cpps_converter_and_runs_in_llama_cpp";
    let d = common::tmpdir("ft-gguf-lora");
    let model = model_dir(&d);
    let out = d.join("run");
    run(&mut train("sft", &model, "sft_messages.jsonl", &out, &["--lora-rank", "4", "--lora-alpha", "256"]));
    let ck = out.join("checkpoints/step-00000004");
    let (ours, adapter) = (d.join("lora.gguf"), d.join("adapter"));
    run(bin().args(["export", "--checkpoint"]).arg(&ck).arg("--gguf-lora").arg(&ours));
    run(bin().args(["export", "--checkpoint"]).arg(&ck).arg("--hf").arg(&adapter));
    run(bin().args(["export", "--dtype", "f32", "--checkpoint"]).arg(&model).arg("--gguf").arg(d.join("base.gguf")));
    run(bin().args(["export", "--dtype", "f32", "--checkpoint"]).arg(&ck).arg("--gguf").arg(d.join("merged.gguf")));
    // refused: no adapter, --merge-lora with it, an existing output
    let refused = |args: &[&str], says: &str| {
        let o = bin().args(args).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(String::from_utf8_lossy(&o.stderr).contains(says), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let x = d.join("x.gguf");
    refused(
        &["export", "--checkpoint", model.to_str().unwrap(), "--gguf-lora", x.to_str().unwrap()],
        "holds no LoRA adapter",
    );
    refused(
        &["export", "--merge-lora", "--checkpoint", ck.to_str().unwrap(), "--gguf-lora", x.to_str().unwrap()],
        "drop --merge-lora",
    );
    refused(&["export", "--checkpoint", ck.to_str().unwrap(), "--gguf-lora", ours.to_str().unwrap()], "exists");
    assert!(!x.exists());

    let Some(py) = common::python(test, "gguf,llama_cpp") else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/lora_gguf_check.py");
    let o = run(Command::new(py)
        .arg(script)
        .arg(&model)
        .arg(&adapter)
        .arg(&ours)
        .arg(d.join("base.gguf"))
        .arg(d.join("merged.gguf"))
        .args(["[1, 15043, 29892, 920]", "12"]));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tensors_ours"], v["tensors_theirs"]);
    assert_eq!(v["mismatch"], serde_json::json!([]), "tensors that differ from convert_lora_to_gguf.py's");
    assert_eq!(v["keys_ours"], v["keys_theirs"]);
    assert_eq!(v["keys_ours"]["adapter.type"], "lora");
    assert_eq!(v["with_lora"], v["merged"], "llama.cpp with our LoRA GGUF = our merged model");
    assert_ne!(v["with_lora"], v["base"], "the adapter changes the output");
    std::fs::remove_dir_all(d).unwrap();
}
