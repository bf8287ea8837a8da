//! Every reader of outside data, fed damaged files: valid ones truncated, bit-flipped, spliced,
//! with header-sized fields overwritten by huge values, and random bytes. Each input must end in
//! an `Ok` or an error value — never a panic. A fixed-seed slice runs here (1,000 inputs per
//! reader); `TINYLLAMA_FUZZ_N=100000 cargo test --release --test fuzz_readers` runs a longer one,
//! `TINYLLAMA_FUZZ_SEED` another slice.

use std::path::{Path, PathBuf};
use tinyllama::tokenizer::Tokenizer;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(r: &mut XorShift, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match r.below(6) {
        0 => b.truncate(r.below(b.len() + 1)),
        1 => {
            for _ in 0..1 + r.below(8) {
                if !b.is_empty() {
                    let i = r.below(b.len());
                    b[i] ^= 1 << r.below(8);
                }
            }
        }
        2 => {
            // splice: a range replaced by bytes from elsewhere in the file
            if b.len() > 2 {
                let (i, j) = (r.below(b.len()), r.below(b.len()));
                let n = r.below(64).min(b.len() - i.max(j));
                let chunk = b[j..j + n].to_vec();
                b.splice(i..i + r.below(64).min(b.len() - i), chunk);
            }
        }
        3 => {
            // a length or count field made huge
            if b.len() >= 8 {
                let i = r.below(b.len() - 7);
                let v = [u64::MAX, u64::MAX / 2, 1 << 40, u32::MAX as u64, r.next()][r.below(5)];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        4 => b = (0..r.below(2 * seed.len() + 16)).map(|_| r.next() as u8).collect(),
        _ => {
            // a digit in a text format changed to a large number
            if let Some(i) = (0..8).map(|_| r.below(b.len().max(1))).find(|&i| b.get(i).is_some_and(u8::is_ascii_digit))
            {
                b.splice(i..i + 1, b"99999999999".iter().copied());
            }
        }
    }
    b
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-fuzz-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Feeds `n` mutants of `seed` to `read`; returns how many were accepted. Panics (with the
/// input saved) if any reader panics.
fn fuzz(name: &str, seed: &[u8], read: &dyn Fn(&[u8]) -> anyhow::Result<()>) -> usize {
    let n: usize = std::env::var("TINYLLAMA_FUZZ_N").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let s: u64 = std::env::var("TINYLLAMA_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let mut r = XorShift(0x9E37_79B9_7F4A_7C15 ^ s.wrapping_mul(0x1000_0000_01B3) ^ name.len() as u64);
    assert!(read(seed).is_ok(), "{name}: the seed file itself must be valid");
    let mut ok = 0;
    for i in 0..n {
        let input = mutate(&mut r, seed);
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(&input))) {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => {}
            Err(e) => {
                let msg = e.downcast_ref::<String>().cloned().or(e.downcast_ref::<&str>().map(|s| s.to_string()));
                let keep = std::env::temp_dir().join(format!("tinyllama-fuzz-{name}-{i}.bin"));
                std::fs::write(&keep, &input).unwrap();
                let _ = std::panic::take_hook(); // the default hook again, to show this failure
                panic!("{name}: input {i} made the reader panic: {msg:?} (saved as {})", keep.display());
            }
        }
    }
    eprintln!("{name}: {n} inputs, {ok} accepted, {} refused, no panic", n - ok);
    ok
}

fn via_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn small_config() -> tinyllama::config::LlamaConfig {
    let mut c = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.num_hidden_layers = 1;
    c.num_attention_heads = 2;
    c.num_key_value_heads = 1;
    c.head_dim = 16;
    c.max_position_embeddings = 64;
    c
}

#[test]
fn readers_refuse_damaged_files_without_panicking() {
    std::panic::set_hook(Box::new(|_| {})); // panics are caught and reported by `fuzz`
    let d = tmpdir("all");
    let cfg = small_config();
    let model = tinyllama::model::Llama::new_init(cfg.clone(), 3);

    // config.json
    let config = serde_json::to_vec_pretty(&cfg.to_hf_json()).unwrap();
    fuzz("config.json", &config, &|b| {
        let v: serde_json::Value = serde_json::from_slice(b)?;
        tinyllama::config::LlamaConfig::from_hf_json(&v).map(|_| ())
    });

    // safetensors: open, then read every tensor
    let hf = d.join("hf");
    tinyllama::checkpoint::hf::save_hf(&model, &hf, tinyllama::checkpoint::safetensors::Dtype::BF16, u64::MAX).unwrap();
    let st = std::fs::read(hf.join("model.safetensors")).unwrap();
    fuzz("safetensors", &st, &|b| {
        let f = tinyllama::checkpoint::safetensors::SafeTensorsFile::open(&via_file(&d, "m.safetensors", b))?;
        for name in f.tensors.keys() {
            f.read_f32(name)?;
        }
        Ok(())
    });

    // tokenizer.json (a small trained BPE), then encode and decode with it
    let docs: Vec<String> =
        (0..50).map(|i| format!("the cat {i} sat on the mat, and the dog ran {i} times.")).collect();
    let tok = tinyllama::tokenizer::train_bpe(&docs, 300, false).unwrap();
    let tj = tok.to_json().unwrap().into_bytes();
    fuzz("tokenizer.json", &tj, &|b| {
        let t = Tokenizer::from_bytes(b)?;
        let ids = t.encode("the cat sat on the mat 12")?;
        t.decode(&ids).map(|_| ())
    });

    // LITPKDS token shard
    let shard_dir = d.join("shards");
    let mut w = tinyllama::data::shard::PackedShardWriter::new(
        &shard_dir,
        "train_x_0",
        512,
        tinyllama::data::shard::TokenDtype::for_vocab(32000),
    )
    .unwrap();
    w.push(&(0..700u32).map(|i| i * 37 % 32000).collect::<Vec<_>>()).unwrap();
    let (files, _) = w.finish().unwrap();
    let shard = std::fs::read(&files[0]).unwrap();
    fuzz("shard", &shard, &|b| {
        let s = tinyllama::data::shard::Shard::open(&via_file(&d, "s.bin", b))?;
        anyhow::ensure!(s.tokens()?.len() == s.len);
        Ok(())
    });

    // TOML run configuration
    let toml =
        b"preset = \"tiny-10m\"\nmax_steps = 40\nmicro_batch = 4\nseq_len = 128\nmax_lr = 4e-4\nwarmup_steps = 5\n";
    fuzz("run.toml", toml, &|b| {
        tinyllama::train::config::TrainConfig::from_toml_file(&via_file(&d, "run.toml", b)).map(|_| ())
    });

    // GGUF: the file, its llama metadata, its tensors as a model
    let gguf = d.join("m.gguf");
    let big_tok = Tokenizer::llama2();
    let q = tinyllama::model::ModelDtype::parse("q8_0").unwrap();
    tinyllama::gguf::llama::export(&cfg, &model.params, &big_tok, None, q, "fuzz", &gguf).unwrap();
    let g = std::fs::read(&gguf).unwrap();
    fuzz("gguf", &g, &|b| tinyllama::gguf::llama::load(&via_file(&d, "f.gguf", b)).map(|_| ()));

    // a training checkpoint's trainer_state.json (the rest of the checkpoint intact)
    let ck_root = d.join("ck");
    let state = tinyllama::train::checkpoint::TrainerState {
        step: 3,
        tokens_seen: 384,
        loaders: vec![tinyllama::data::loader::LoaderState {
            mix_rng: tinyllama::rng::Rng::new(5),
            components: vec![tinyllama::data::loader::ComponentPosition { epoch: 0, group: 1, index: 7 }],
        }],
        world: 1,
        train_config: tinyllama::train::config::TrainConfig::default(),
        model_config: cfg.clone(),
        elapsed_s: 1.5,
        consecutive_bad_steps: 0,
        examples: None,
    };
    let adam = tinyllama::train::AdamW::new(model.layout.total, tinyllama::train::AdamWConfig::default());
    let ck =
        tinyllama::train::checkpoint::save_checkpoint(&ck_root, &model, &adam, &Tokenizer::llama2(), &state, &|_| {
            Ok(())
        })
        .unwrap();
    let ts = std::fs::read(ck.join("trainer_state.json")).unwrap();
    fuzz("trainer_state.json", &ts, &|b| {
        std::fs::write(ck.join("trainer_state.json"), b)?;
        tinyllama::train::checkpoint::load_checkpoint(&ck).map(|_| ())
    });

    // evaluation data: lm-eval JSONL and InstructEval's BBH / DROP / HumanEval files
    let eval = d.join("eval");
    std::fs::create_dir_all(eval.join("bbh")).unwrap();
    std::fs::create_dir_all(eval.join("humaneval")).unwrap();
    let piqa = (0..4)
        .map(|i| format!("{{\"goal\": \"g{i}\", \"sol1\": \"a\", \"sol2\": \"b\", \"label\": {}}}\n", i % 2))
        .collect::<String>();
    fuzz("piqa.jsonl", piqa.as_bytes(), &|b| {
        std::fs::write(eval.join("piqa_validation.jsonl"), b)?;
        tinyllama::eval::tasks::load_task("piqa", &eval, None).map(|_| ())
    });
    let bbh = format!(
        "{{\"examples\": [{}]}}",
        (0..6).map(|i| format!("{{\"input\": \"q{i}\", \"target\": \"t{i}\"}}")).collect::<Vec<_>>().join(", ")
    );
    fuzz("bbh.json", bbh.as_bytes(), &|b| {
        std::fs::write(eval.join("bbh/task.json"), b)?;
        tinyllama::eval::instruct::load_gen_task("bbh", &eval, None, Some(&big_tok)).map(|_| ())
    });
    let drop = (0..8)
        .map(|i| {
            format!(
                "{{\"section_id\": \"s{}\", \"query_id\": \"q{i}\", \"passage\": \"p{}\", \"question\": \"w{i}\", \
                 \"answers_spans\": {{\"spans\": [\"{i}\"], \"types\": [\"number\"]}}}}\n",
                i / 2,
                i / 2
            )
        })
        .collect::<String>();
    fuzz("drop.jsonl", drop.as_bytes(), &|b| {
        std::fs::write(eval.join("drop_validation.jsonl"), b)?;
        tinyllama::eval::instruct::load_gen_task("drop", &eval, None, Some(&big_tok)).map(|_| ())
    });
    let he =
        "{\"task_id\": \"HumanEval/0\", \"prompt\": \"def f():\\n\", \"canonical_solution\": \"    return 1\\n\", \
              \"test\": \"def check(c):\\n    assert c() == 1\\n\", \"entry_point\": \"f\"}\n";
    fuzz("HumanEval.jsonl", he.as_bytes(), &|b| {
        std::fs::write(eval.join("humaneval/HumanEval.jsonl"), b)?;
        tinyllama::eval::instruct::load_gen_task("humaneval", &eval, None, Some(&big_tok)).map(|_| ())
    });
    let _ = std::panic::take_hook();
    std::fs::remove_dir_all(d).unwrap();
}
