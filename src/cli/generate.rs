//! `tinyllama generate`: text from a prompt, or many prompts decoded together.

use super::{EngineArgs, KvArgs, SamplingArgs};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tinyllama::decode::{EngineOptions, Request};
use tinyllama::model::InferenceModel;
use tinyllama::tokenizer::Tokenizer;

#[derive(Args)]
pub struct GenerateArgs {
    /// A Hugging Face model directory (or a training checkpoint) with tokenizer.json, or a GGUF file;
    /// or a Hugging Face Hub id: `org/name`, `org/name:Q4_0` for a GGUF repository (a local path wins).
    #[arg(long, short = 'm')]
    model: PathBuf,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors; what `sft
    /// --lora-rank` and PEFT write), merged in memory into the weights of a safetensors model.
    #[arg(long, value_name = "ADAPTER_DIR")]
    lora: Option<PathBuf>,
    /// The prompt (BOS is prepended); `-` reads it from stdin, as does no prompt flag with text
    /// piped in.
    #[arg(long, short = 'p', conflicts_with_all = ["prompts", "prompt_file"])]
    prompt: Option<String>,
    /// A file holding the prompt.
    #[arg(long, conflicts_with = "prompts")]
    prompt_file: Option<PathBuf>,
    /// Stop when the text contains this string (not printed); may be given several times.
    #[arg(long)]
    stop: Vec<String>,
    /// Many prompts, decoded together (one per line, or JSONL with a "prompt" field); prints one
    /// JSON line per prompt with the completion.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Sequences decoding together with --prompts.
    #[arg(long, default_value_t = 16)]
    max_batch: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    use std::io::{IsTerminal, Read};
    let from_stdin = |what: &str| -> Result<String> {
        let mut t = String::new();
        std::io::stdin().read_to_string(&mut t).with_context(|| format!("cannot read {what} from stdin"))?;
        Ok(t)
    };
    // every flag is checked before the model loads
    a.sampling.options()?;
    a.engine.check()?;
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    let nonempty = |text: String, from: &str| -> Result<String> {
        ensure!(!text.is_empty(), "{from} holds no prompt text (pass --prompt \"\" to generate from BOS alone)");
        Ok(text)
    };
    let text = match (&a.prompt, &a.prompt_file, &a.prompts) {
        (Some(p), _, _) if p == "-" => Some(nonempty(from_stdin("the prompt")?, "stdin")?),
        (Some(p), _, _) => Some(p.clone()),
        (None, Some(f), _) => Some(nonempty(
            std::fs::read_to_string(f).with_context(|| format!("cannot read the prompt file {}", f.display()))?,
            &f.display().to_string(),
        )?),
        (None, None, None) if !std::io::stdin().is_terminal() => Some(nonempty(from_stdin("the prompt")?, "stdin")?),
        (None, None, None) => {
            anyhow::bail!("generate needs --prompt TEXT, --prompt-file FILE, --prompts FILE or a prompt on stdin")
        }
        _ => None,
    };
    let loaded = load(&a.hub.locate(&a.model)?, a.lora.as_deref(), &a.sampling.dtype, &a.sampling.kv)?;
    let draft = a.engine.load_draft(&loaded, &a.sampling.kv, &a.hub)?;
    let (model, tok, draft) = (&loaded.model, &loaded.tokenizer, draft.as_ref().map(|d| &d.model));
    match (text, &a.prompts) {
        (Some(p), _) => {
            let prompt: Vec<u32> = tok.encode_prompt(&p)?;
            let ctx = model.max_positions();
            ensure!(
                prompt.len() < ctx,
                "the prompt has {} tokens and fills the model's context of {ctx}: shorten it",
                prompt.len()
            );
            use std::io::Write;
            let mut stdout = std::io::stdout();
            write!(stdout, "{p}")?;
            let t0 = std::time::Instant::now();
            let opts = a.engine.options(model, 1, ctx);
            let (_, n) = stream_generate(model, draft, opts, tok, &prompt, &a.sampling, &a.stop)?;
            writeln!(stdout)?;
            let dt = t0.elapsed().as_secs_f64();
            eprintln!(
                "{} prompt + {n} generated tokens in {dt:.2} s ({:.1} tokens/s)",
                prompt.len(),
                n as f64 / dt.max(1e-9)
            );
            if prompt.len() + n >= ctx && n < a.sampling.max_new_tokens {
                eprintln!(
                    "note: stopped after {n} of --max-new-tokens {}: the {}-token prompt and the reply fill \
                     the model's context of {ctx} tokens",
                    a.sampling.max_new_tokens,
                    prompt.len()
                );
            }
        }
        (None, Some(file)) => {
            let opts = a.engine.options(model, a.max_batch, model.max_positions());
            generate_many(model, draft, opts, tok, file, &a.sampling)?
        }
        (None, None) => bail!("generate needs a prompt"), // refused above; kept an error, not a panic
    }
    Ok(())
}

/// The model named by `-m`, in the format asked for.
fn load(
    path: &std::path::Path,
    lora: Option<&std::path::Path>,
    dtype: &str,
    kv: &KvArgs,
) -> Result<tinyllama::loader::LoadedModel> {
    let dtype = tinyllama::model::ModelDtype::parse_or_auto(dtype)?;
    let mut m = tinyllama::loader::load_model_with_lora(path, lora, dtype, true)?;
    m.model.kv_cache = kv.kind()?;
    Ok(m)
}

/// Generates and prints text as it comes (decoded after the prompt's last token, so that a leading
/// space is kept; characters split across tokens appear whole; text from a `--stop` string on is
/// neither printed nor kept). Returns the text and the number of tokens generated.
fn stream_generate(
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    opts: EngineOptions,
    tok: &Tokenizer,
    prompt: &[u32],
    s: &SamplingArgs,
    stop_strings: &[String],
) -> Result<(String, usize)> {
    use std::io::Write;
    let sampling = s.options_announced()?;
    let mut out = std::io::stdout();
    let max_new = s.max_new_tokens;
    tinyllama::generate::generate_text(model, draft, opts, tok, prompt, sampling, max_new, stop_strings, &mut |piece| {
        write!(out, "{piece}")?;
        Ok(out.flush()?)
    })
}

/// `generate --prompts`: every prompt decoded in one batch; one JSON line per prompt, in order.
fn generate_many(
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    opts: EngineOptions,
    tok: &Tokenizer,
    file: &std::path::Path,
    s: &SamplingArgs,
) -> Result<()> {
    let prompts = tinyllama::generate::read_prompts(file)?;
    let base = s.options_announced()?;
    let ends = tinyllama::decode::end_ids(&model.cfg, tok);
    let reqs: Vec<Request> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut sampling = base.clone();
            sampling.seed = base.seed.wrapping_add(i as u64);
            Ok(Request::new(tok.encode_prompt(p)?, s.max_new_tokens, sampling, ends.clone()))
        })
        .collect::<Result<_>>()?;
    let t0 = std::time::Instant::now();
    let mut engine = tinyllama::decode::Engine::new(model, draft, opts)?;
    let outs = engine.generate_all(reqs.clone(), &mut |_, _| Ok(()))?;
    let n: usize = outs.iter().map(|o| o.len()).sum();
    use std::io::Write;
    let mut stdout = std::io::stdout();
    for ((p, r), o) in prompts.iter().zip(&reqs).zip(&outs) {
        let ids: Vec<u32> = o.iter().copied().filter(|t| !ends.contains(t)).collect();
        let finish = if o.last().is_some_and(|t| ends.contains(t)) { "stop" } else { "length" };
        let last = *r.prompt.last().context("an empty prompt (encode_prompt refuses those)")?;
        let completion = tok.decode_after(last, &ids)?;
        writeln!(
            stdout,
            "{}",
            serde_json::json!({"prompt": p, "completion": completion, "tokens": ids.len(), "finish_reason": finish})
        )?;
    }
    let dt = t0.elapsed().as_secs_f64();
    eprintln!("{} prompts, {n} tokens in {dt:.1} s ({:.1} tokens/s)", prompts.len(), n as f64 / dt);
    Ok(())
}
