//! `tinyllama sft` / `tinyllama dpo` against TRL itself: the fixture in tests/fixtures/trl (made
//! by tests/fixtures/make_trl_fixture.py with TRL's SFTTrainer and DPOTrainer) holds TRL's
//! tokenized examples and loss masks and every step's logged loss (and DPO's rewards) for
//! full-batch steps at a constant learning rate, one with TRL's wrapped packing, two with PEFT's LoRA (all seven linear
//! weights, rank 4, started from PEFT's own initial adapter). Each run here must tokenize the same
//! ids and masks and log the same numbers within 1e-4 relative.

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use tinyllama::data::finetune::{preference_examples, sft_examples, LossOn, Renderer};
use tinyllama::dist::SingleProcess;
use tinyllama::kernels::cross_entropy::IGNORE_INDEX;
use tinyllama::tokenizer::Tokenizer;
use tinyllama::train::finetune::{finetune, template_for, DpoLoss, FinetuneConfig, Mode};
use tinyllama::train::trainer::Resume;

fn fixture() -> PathBuf {
    common::trl_fixture()
}

/// The fixture's model directory with the repository's Llama-2 tokenizer.json beside it, made once
/// per test process.
/// The fixture model, copied once per test process (the tests run in parallel threads: one test
/// found another's half-copied tokenizer.json when each checked for it).
fn model_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        common::trl_model(&std::env::temp_dir().join(format!("tinyllama-trl-model-{}", std::process::id())))
    })
    .clone()
}

/// The model directory of a run: the fixture model, or for runs that name a tokenizer directory
/// (TinyLlama-Chat's `LlamaTokenizer` settings) a copy of it with that directory's
/// `tokenizer_config.json` and chat template.
fn model_dir_for(run: &Value) -> PathBuf {
    let Some(name) = run["tokenizer"].as_str() else { return model_dir() };
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR
        .get_or_init(|| {
            let d = std::env::temp_dir().join(format!("tinyllama-trl-model-{name}-{}", std::process::id()));
            common::trl_model(&d);
            for e in std::fs::read_dir(fixture().join(name)).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
            }
            d
        })
        .clone();
    assert!(dir.ends_with(format!("tinyllama-trl-model-{name}-{}", std::process::id())), "one tokenizer directory");
    dir
}

fn runs() -> Value {
    serde_json::from_slice(&std::fs::read(fixture().join("runs.json")).unwrap()).unwrap()
}

/// The run's settings as TRL had them: full batch, constant lr, HF's AdamW defaults.
fn config(run: &Value, n: usize, out: &Path) -> (Mode, FinetuneConfig) {
    let meta = runs();
    let mode = if run["trainer"] == "sft" { Mode::Sft } else { Mode::Dpo };
    let opts = &run["options"];
    let mut c = FinetuneConfig::defaults(mode);
    c.model = Some(model_dir_for(run));
    c.data = Some(fixture().join(run["data"].as_str().unwrap()));
    c.out = out.to_path_buf();
    c.max_lr = meta["learning_rate"].as_f64().unwrap();
    c.min_lr = c.max_lr;
    c.warmup_steps = Some(0);
    c.beta2 = meta["adam"]["beta2"].as_f64().unwrap();
    c.weight_decay = 0.0;
    c.micro_batch = n;
    c.max_steps = Some(meta["steps"].as_u64().unwrap());
    // the fixture model's context (TRL's 1024 cuts nothing here either), or the run's own
    c.max_length = Some(opts["max_length"].as_u64().unwrap_or(256) as usize);
    c.packing = opts["packing"] == true;
    c.loss_on = if run["data"] == "sft_messages.jsonl" && opts["assistant_only_loss"] != true {
        LossOn::All
    } else {
        LossOn::Completion
    };
    if let Some(b) = opts["beta"].as_f64() {
        c.beta = b;
    }
    if let Some(l) = run.get("lora") {
        c.lora_rank = l["rank"].as_u64().unwrap() as usize;
        c.lora_alpha = l["alpha"].as_f64().unwrap();
        c.lora_init = Some(fixture().join(l["init"].as_str().unwrap()));
    }
    c.loss_type = match opts["loss_type"][0].as_str() {
        Some("ipo") => DpoLoss::Ipo,
        Some("hinge") => DpoLoss::Hinge,
        _ => DpoLoss::Sigmoid,
    };
    (mode, c)
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect()
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-4 * want.abs().max(1e-2);
    assert!((got - want).abs() <= tol, "{what}: {got} vs TRL {want} (tolerance {tol:e})");
}

#[test]
fn tokenization_and_masks_equal_trl() {
    let test = "tokenization_and_masks_equal_trl";
    let Some(_) = common::require(test, &fixture().join("runs.json")) else { return };
    let mut llama_tokenizer_runs = 0;
    for (name, run) in runs()["runs"].as_object().unwrap() {
        let model = model_dir_for(run);
        let tok = Tokenizer::from_model_dir(&model).unwrap();
        let (template, _) = template_for(None, &model, &tok).unwrap();
        assert!(template.has_generation_marks);
        let r = Renderer::new(&tok, &template);
        llama_tokenizer_runs += run["tokenizer"].is_string() as usize;
        let (mode, c) = config(run, 1, Path::new("unused"));
        let data = c.data.clone().unwrap();
        let want = run["examples"].as_array().unwrap();
        match mode {
            Mode::Sft => {
                let mut got =
                    sft_examples(&data, &r, c.loss_on, if c.packing { usize::MAX } else { 256 }).unwrap().examples;
                if c.packing {
                    got = tinyllama::data::finetune::pack_wrapped(&got, c.max_length.unwrap());
                }
                assert_eq!(got.len(), want.len(), "{name}");
                for (g, w) in got.iter().zip(want) {
                    let gi: Vec<i64> = g.input_ids.iter().map(|&t| t as i64).collect();
                    let gl: Vec<i64> =
                        g.labels.iter().map(|&t| if t == IGNORE_INDEX { -100 } else { t as i64 }).collect();
                    assert_eq!(gi, ids(&w["input_ids"]), "{name} line {}: input_ids", g.line);
                    assert_eq!(gl, ids(&w["labels"]), "{name} line {}: labels (loss mask)", g.line);
                }
            }
            Mode::Dpo => {
                let got = preference_examples(&data, &r, 256).unwrap().examples;
                assert_eq!(got.len(), want.len(), "{name}");
                for (g, w) in got.iter().zip(want) {
                    for (k, v) in [
                        ("prompt_ids", &g.prompt_ids),
                        ("chosen_ids", &g.chosen_ids),
                        ("rejected_ids", &g.rejected_ids),
                    ] {
                        let gv: Vec<i64> = v.iter().map(|&t| t as i64).collect();
                        assert_eq!(gv, ids(&w[k]), "{name} line {}: {k}", g.line);
                    }
                }
            }
        }
    }
    assert!(llama_tokenizer_runs >= 2, "the fixture has runs with TinyLlama-Chat's tokenizer settings");
    // without generation marks, what each assistant turn adds: here the same tokens and the
    // newline the unmarked template puts after each turn
    let plain = tinyllama::tokenizer::chat_template::ChatTemplate::new(
        tinyllama::tokenizer::chat_template::ZEPHYR,
        "<s>",
        "</s>",
    )
    .unwrap();
    let tok = Tokenizer::from_model_dir(&model_dir()).unwrap();
    let rp = Renderer::new(&tok, &plain);
    let runs = runs();
    let run = &runs["runs"]["sft_messages_assistant"];
    let got = sft_examples(&fixture().join("sft_messages.jsonl"), &rp, LossOn::Completion, 256).unwrap().examples;
    for (g, w) in got.iter().zip(run["examples"].as_array().unwrap()) {
        assert_eq!(g.input_ids.iter().map(|&t| t as i64).collect::<Vec<_>>(), ids(&w["input_ids"]));
        let marked = ids(&w["labels"]);
        for (i, (&l, &m)) in g.labels.iter().zip(&marked).enumerate() {
            let newline = tok.id_to_token(g.input_ids[i]).is_some_and(|t| t == "<0x0A>" || t == "▁");
            assert!((l != IGNORE_INDEX) == (m != -100) || newline, "line {} token {i}", g.line);
        }
    }
}

#[test]
fn sft_and_dpo_steps_equal_trl() {
    let test = "sft_and_dpo_steps_equal_trl";
    let Some(_) = common::require(test, &fixture().join("runs.json")) else { return };
    let d = common::tmpdir("finetune-trl");
    let meta = runs();
    let mut names: Vec<&String> = meta["runs"].as_object().unwrap().keys().collect();
    names.sort_by_key(|n| (!n.starts_with("sft"), n.contains("hinge"), n.to_string()));
    for name in names {
        let run = &meta["runs"][name];
        let n = run["examples"].as_array().unwrap().len();
        let (mode, c) = config(run, n, &d.join(name));
        let out = finetune(mode, &c, Resume::No, &AtomicBool::new(false), false, &SingleProcess).unwrap();
        let want = run["steps"].as_array().unwrap();
        assert_eq!(out.rows.len(), want.len(), "{name}");
        for (g, w) in out.rows.iter().zip(want) {
            let step = w["step"].as_u64().unwrap();
            assert_eq!(g["step"].as_u64(), Some(step));
            close(g["loss"].as_f64().unwrap(), w["loss"].as_f64().unwrap(), &format!("{name} step {step} loss"));
            // torch's f32 norm of per-tensor norms (clip_grad_norm_) differs from a direct one by
            // ~1e-4 itself: the gradient norm is checked at 1e-3
            let (gn, wn) = (g["grad_norm"].as_f64().unwrap(), w["grad_norm"].as_f64().unwrap());
            assert!((gn - wn).abs() <= 1e-3 * wn, "{name} step {step} grad norm: {gn} vs TRL {wn}");
            if mode == Mode::Dpo {
                for (ours, trl) in [
                    ("rewards_chosen", "rewards/chosen"),
                    ("rewards_rejected", "rewards/rejected"),
                    ("reward_accuracy", "rewards/accuracies"),
                    ("reward_margin", "rewards/margins"),
                ] {
                    let (gv, wv) = (g[ours].as_f64().unwrap(), w[trl].as_f64().unwrap());
                    assert!((gv - wv).abs() <= 1e-4 * wv.abs().max(1.0), "{name} step {step} {ours}: {gv} vs TRL {wv}");
                }
            }
        }
    }
    std::fs::remove_dir_all(d).unwrap();
}
