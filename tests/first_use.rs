//! What a new user meets first, from the command line: flags checked before any work, models and
//! checkpoints by the names users type, errors that name the thing, `export` that keeps what it is
//! given and never overwrites, help that shows each command's own flags and defaults, fine-tunes
//! that resume without their flags again, and `info` on a GGUF file as llama.cpp describes one.

mod common;

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_tinyllama");

use common::{stderr_of as err, stdout_of as out, tinyllama as tl};

fn ok(args: &[&str]) -> Output {
    let o = tl(args, "");
    assert!(o.status.success(), "{args:?}: {}", err(&o));
    o
}

/// Exit code 1 and a message holding `want`.
fn refused(args: &[&str], stdin: &str, want: &str) -> Output {
    let o = tl(args, stdin);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", err(&o));
    assert!(err(&o).contains(want), "{args:?}: {}", err(&o));
    o
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn flags_are_checked_before_the_model_loads() {
    let d = common::tmpdir("first-flags");
    let m = common::tiny_model(&d);
    // a bad flag is named even when the model is not there: nothing was loaded or printed
    let o = refused(&["generate", "-m", "/no/such/model", "-p", "Hi", "--top-p", "2"], "", "--top-p must be in (0, 1]");
    assert!(out(&o).is_empty());
    refused(&["generate", "-m", "/no/such/model", "-p", "Hi", "--frequency-penalty", "3"], "", "--frequency-penalty");
    let prompts = d.join("prompts.txt");
    std::fs::write(&prompts, "a\nb\n").unwrap();
    refused(
        &["generate", "-m", s(&m), "--prompts", s(&prompts), "--max-batch", "0"],
        "",
        "--max-batch must be at least 1",
    );
    // empty stdin is not a prompt
    refused(&["generate", "-m", s(&m)], "", "stdin holds no prompt text");
    refused(&["generate", "-m", s(&m), "-p", "-"], "", "stdin holds no prompt text");
    // a prompt that fills the context is refused; one that nearly fills it says why it stopped
    let words = |n: usize| "word ".repeat(n);
    refused(&["generate", "-m", s(&m), "-p", &words(300)], "", "fills the model's context of 256");
    let o = ok(&["generate", "-m", s(&m), "-p", &words(250), "-n", "100"]);
    assert!(err(&o).contains("fill the model's context of 256 tokens"), "{}", err(&o));
    // a tokenizer that adds no BOS (add_bos_token: false) and an empty prompt: nothing to run from
    let no_bos = d.join("no-bos");
    std::fs::create_dir_all(&no_bos).unwrap();
    for e in std::fs::read_dir(&m).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, no_bos.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(no_bos.join("tokenizer_config.json"), r#"{"add_bos_token": false}"#).unwrap();
    refused(&["generate", "-m", s(&no_bos), "-p", ""], "", "the prompt is empty");
    let o = ok(&["generate", "-m", s(&no_bos), "-p", "Hi", "-n", "2"]);
    assert!(err(&o).contains("1 prompt + 2 generated tokens"), "no BOS before `Hi`: {}", err(&o));
    // a reader that goes away ends the output quietly
    let log = d.join("pipe-err.txt");
    let script =
        format!("set -o pipefail; '{BIN}' generate -m '{}' -p Hi -n 200 2>'{}' | head -c 1 >/dev/null", s(&m), s(&log));
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    let e = std::fs::read_to_string(&log).unwrap();
    assert!(status.success() && !e.contains("error"), "{status:?}: {e}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn models_and_checkpoints_by_the_names_users_type() {
    let d = common::tmpdir("first-names");
    let run = d.join("run");
    ok(&["pretrain", "--max-steps", "2", "--out", s(&run), "--quiet"]);
    let step = run.join("checkpoints/step-00000002");
    assert!(step.join("config.json").exists());
    // a run directory: its latest checkpoint, said; step-N for step-0000000N
    let by_run = ok(&["generate", "-m", s(&run), "-p", "Hi", "-n", "3"]);
    assert!(err(&by_run).contains("latest checkpoint") && err(&by_run).contains("step-00000002"), "{}", err(&by_run));
    let by_step = ok(&["generate", "-m", s(&run.join("checkpoints/step-2")), "-p", "Hi", "-n", "3"]);
    assert_eq!(out(&by_run), out(&by_step));
    refused(&["generate", "-m", s(&run.join("checkpoints/step-7")), "-p", "Hi"], "", "has checkpoints at steps 2");
    // errors that name the thing
    let notes = d.join("notes.txt");
    std::fs::write(&notes, "hello").unwrap();
    refused(
        &["generate", "-m", s(&notes), "-p", "Hi"],
        "",
        "notes.txt is not a model directory, checkpoint or GGUF file",
    );
    refused(&["chat", "-m", s(&d.join("nowhere"))], "", "nowhere does not exist");
    // export: by short name; an existing output is refused without --overwrite
    let hf = d.join("hf");
    ok(&["export", "--checkpoint", s(&run.join("checkpoints/step-2")), "--hf", s(&hf)]);
    refused(&["export", "--checkpoint", s(&run), "--hf", s(&hf)], "", "pass --overwrite");
    std::fs::write(hf.join("stale.txt"), "x").unwrap();
    ok(&["export", "--checkpoint", s(&run), "--hf", s(&hf), "--overwrite"]);
    assert!(hf.join("config.json").exists() && !hf.join("stale.txt").exists());
    // neither output named: both are
    let o = refused(&["export", "--checkpoint", s(&run)], "", "--hf");
    assert!(err(&o).contains("--gguf"), "{}", err(&o));
    // a q4_k_m export whose rows are not whole Q4_K blocks says what it wrote instead
    let gguf = d.join("m.gguf");
    let o = ok(&["export", "--checkpoint", s(&run), "--gguf", s(&gguf), "--dtype", "q4_k_m"]);
    assert!(out(&o).contains("instead of q4_K") && out(&o).contains("q8_0"), "{}", out(&o));
    refused(&["export", "--checkpoint", s(&run), "--gguf", s(&gguf)], "", "pass --overwrite");
    // GGUF in, HF out: said to be unsupported, with what to do instead
    refused(&["export", "--checkpoint", s(&gguf), "--hf", s(&d.join("x"))], "", "is a GGUF file");
    // bf16 stays bf16 unless asked: export and inference
    let bf = d.join("bf16");
    ok(&["export", "--checkpoint", s(&run), "--hf", s(&bf), "--dtype", "bf16"]);
    let again = d.join("bf16-again");
    ok(&["export", "--checkpoint", s(&bf), "--hf", s(&again)]);
    let cfg = std::fs::read_to_string(again.join("config.json")).unwrap();
    assert!(cfg.contains("bfloat16"), "{cfg}");
    let o = ok(&["generate", "-m", s(&bf), "-p", "Hi", "-n", "2"]);
    assert!(err(&o).contains("to bf16"), "{}", err(&o));
    // info on a GGUF file: types, size, KV bytes per token (2 × 4 layers × 64 × 2 bytes), memory
    let o = ok(&["info", "-m", s(&gguf)]);
    let text = out(&o);
    for want in [
        "tensor types:",
        "q8_0",
        "file size:",
        "bits per weight",
        "KV cache: 1024 bytes per token",
        "memory at the full context of 256",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn help_shows_each_commands_own_flags_and_defaults() {
    let help = |args: &[&str]| out(&ok(args));
    let sft = help(&["sft", "--help"]);
    let dpo = help(&["dpo", "--help"]);
    for f in ["--loss-on", "--packing"] {
        assert!(sft.contains(f) && !dpo.contains(f), "{f}");
    }
    for f in ["--beta", "--loss-type", "--ref-model"] {
        assert!(dpo.contains(f) && !sft.contains(f), "{f}");
    }
    // the default right after a flag's own help, per command
    let default_of = |text: &str, flag: &str| -> String {
        let at = text.find(&format!("{flag} <")).unwrap_or_else(|| panic!("{flag} missing"));
        let rest = &text[at..];
        let block = &rest[..rest[2..].find("\n  -").map(|i| i + 2).unwrap_or(rest.len())];
        block
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .unwrap_or_else(|| panic!("{flag}: {block}"))
            .to_string()
    };
    assert_eq!(default_of(&sft, "--micro-batch"), "4");
    assert_eq!(default_of(&dpo, "--micro-batch"), "2");
    assert_eq!(default_of(&sft, "--max-lr"), "2e-5");
    assert_eq!(default_of(&dpo, "--max-lr"), "5e-7");
    let pretrain = help(&["pretrain", "--help"]);
    assert_eq!(default_of(&pretrain, "--seed"), "1337");
    assert_eq!(default_of(&pretrain, "--micro-batch"), "8");
    assert!(default_of(&pretrain, "--global-batch-tokens").contains("--micro-batch"));
    let generate = help(&["generate", "--help"]);
    let model_help = generate.lines().skip_while(|l| !l.contains("-m, --model <MODEL>")).nth(1).unwrap();
    assert!(model_help.ends_with("[required]"), "{generate}");
    // the decode engine's flags, with their defaults
    assert_eq!(default_of(&generate, "--step-tokens"), "32");
    assert_eq!(default_of(&generate, "--draft-tokens"), "5");
    assert!(generate.contains("--draft <DRAFT>") && generate.contains("--draft-p-min"), "{generate}");
    let chat = help(&["chat", "--help"]);
    for want in ["/reset", "/system", "/exit", "--chat-template", "--stop"] {
        assert!(chat.contains(want), "{want}");
    }
    assert!(help(&["bench", "generate", "--help"]).contains("Hugging Face directory"));
    #[cfg(feature = "serve")]
    assert!(help(&["serve", "--help"]).contains("samples at 1"));
    // a measurement that does not fit the context says what it measures instead
    let o = ok(&[
        "bench",
        "generate",
        "--preset",
        "tiny-10m",
        "--prompt-len",
        "256",
        "--new-tokens",
        "40",
        "--batch",
        "1",
        "--runs",
        "1",
    ]);
    assert!(err(&o).contains("measuring a 214-token prompt"), "{}", err(&o));
}

#[test]
fn chat_takes_a_template_and_stop_strings() {
    let d = common::tmpdir("first-chat");
    let m = common::tiny_model(&d);
    let full = tl(&["chat", "-m", s(&m), "-n", "24", "--chat-template", "zephyr"], "Hello!\n");
    assert!(full.status.success(), "{}", err(&full));
    assert!(!err(&full).contains("no chat template"), "an explicit template is not a fallback");
    let reply = out(&full);
    let reply = reply.trim_end_matches('\n');
    let cut = reply.char_indices().nth(reply.chars().count() / 2).map(|c| c.0).unwrap_or(0);
    let stop: String = reply[cut..].chars().take(2).collect();
    let stopped = tl(&["chat", "-m", s(&m), "-n", "24", "--chat-template", "zephyr", "--stop", &stop], "Hello!\n");
    assert_eq!(out(&stopped), format!("{}\n", &reply[..reply.find(&stop).unwrap()]), "stop {stop:?}");
    refused(
        &["chat", "-m", s(&m), "--chat-template", "/no/such/template"],
        "",
        "not `zephyr`, and not a readable file",
    );
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn fine_tunes_resume_without_their_flags_and_say_what_changed() {
    let d = common::tmpdir("first-resume");
    let model = common::trl_model(&d.join("model"));
    let data = common::trl_fixture().join("sft_messages.jsonl");
    let run = d.join("sft");
    let o =
        ok(&["sft", "-m", s(&model), "--data", s(&data), "--out", s(&run), "--max-steps", "2", "--micro-batch", "2"]);
    let log = err(&o);
    assert!(!log.contains("train.mix") && !log.contains("0.00e0"), "pretraining keys or an unreadable lr: {log}");
    // --resume alone: the model and data the run recorded; a raised --max-steps re-plans the schedule
    let o = ok(&["sft", "--out", s(&run), "--resume", "--max-steps", "4"]);
    let log = err(&o);
    assert!(log.contains("recorded settings"), "{log}");
    assert!(log.contains("re-planned for 4 steps (the run had 2)"), "{log}");
    assert!(out(&o).contains("at step 4/4"), "{}", out(&o));
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn instructeval_without_mmlu_names_the_task_and_what_can_run() {
    let test = "instructeval_without_mmlu_names_the_task_and_what_can_run";
    let shared = Path::new("../shared/eval");
    if common::require(test, &shared.join("bbh")).is_none() {
        return;
    }
    let d = common::tmpdir("first-eval");
    let m = common::tiny_model(&d);
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    for sub in ["bbh", "drop", "humaneval"] {
        std::os::unix::fs::symlink(std::fs::canonicalize(shared.join(sub)).unwrap(), data.join(sub)).unwrap();
    }
    let o = refused(
        &["eval", "-m", s(&m), "--suite", "instructeval", "--data-dir", s(&data)],
        "",
        "task mmlu_instructeval",
    );
    assert!(err(&o).contains("--tasks bbh,drop,humaneval"), "{}", err(&o));
    std::fs::remove_dir_all(d).unwrap();
}
