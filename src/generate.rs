//! Text generation for `tinyllama generate` and the library's callers, on the decode engine:
//! [`generate_text`] streams one prompt's text, [`generate_batch`] decodes many prompts together,
//! [`generate`] returns one prompt's tokens.

use crate::decode::{end_ids, Engine, EngineOptions, Event, Request, Sampler, SamplingOptions, TextStream};
use crate::model::InferenceModel;
use anyhow::{ensure, Result};

/// Generates up to `max_new` tokens after `prompt` (which should start with BOS) with `sampler`'s
/// options, calling `on_token` with each as it comes; stops after any of `eos`. Returns the new
/// tokens.
pub fn generate(
    model: &InferenceModel,
    prompt: &[u32],
    max_new: usize,
    eos: &[u32],
    sampler: &mut Sampler,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Vec<u32>> {
    let req = Request::new(prompt.to_vec(), max_new, sampler.opts.clone(), eos.to_vec());
    let mut out = generate_batch(model, vec![req], 1, &mut |_, t| on_token(t))?;
    Ok(out.pop().unwrap_or_default())
}

/// Generates after `prompt` as `tinyllama generate` does, each token decoded to text as soon as it
/// is whole and handed to `on_text`; stops at an end id, at one of the `stop_strings` (not shown)
/// or after `max_new` tokens (fewer if the context fills). `draft`: a draft model for speculative
/// decoding. Returns the text and the number of tokens generated.
#[allow(clippy::too_many_arguments)]
pub fn generate_text(
    model: &InferenceModel,
    draft: Option<&InferenceModel>,
    opts: EngineOptions,
    tok: &crate::tokenizer::Tokenizer,
    prompt: &[u32],
    sampling: SamplingOptions,
    max_new: usize,
    stop_strings: &[String],
    on_text: &mut dyn FnMut(&str) -> Result<()>,
) -> Result<(String, usize)> {
    let ctx = model.max_positions();
    ensure!(prompt.len() < ctx, "the prompt has {} tokens and fills the model's context ({ctx})", prompt.len());
    let mut engine = Engine::new(model, draft, opts)?;
    let ends = end_ids(&model.cfg, tok);
    let id = engine.add(Request::new(prompt.to_vec(), max_new, sampling, ends.clone()))?;
    let mut text = TextStream::new(stop_strings.to_vec(), prompt.last().copied());
    let mut n = 0;
    engine.run(&mut |engine, ev| {
        match ev {
            Event::Token { id: t, .. } => {
                n += 1;
                if !ends.contains(&t) && !text.stopped {
                    on_text(&text.push(tok, t)?)?;
                    if text.stopped {
                        engine.cancel(id, &mut vec![]);
                    }
                }
            }
            Event::Failed { message, .. } => anyhow::bail!("{message}"),
            Event::Finished { .. } | Event::PromptLogprobs { .. } => {}
        }
        Ok(())
    })?;
    on_text(&text.finish())?;
    Ok((text.text().to_string(), n))
}

/// Prompts from a file, one per line, or JSONL objects with a `"prompt"` string (blank lines
/// skipped); a bad line is named.
pub fn read_prompts(file: &std::path::Path) -> Result<Vec<String>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut prompts = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let p = if line.trim_start().starts_with('{') {
            let v: serde_json::Value =
                serde_json::from_str(line).with_context(|| format!("{}:{}: not valid JSON", file.display(), i + 1))?;
            v.get("prompt")
                .and_then(|p| p.as_str())
                .with_context(|| format!("{}:{}: no string field \"prompt\"", file.display(), i + 1))?
                .to_string()
        } else {
            line.to_string()
        };
        prompts.push(p);
    }
    ensure!(!prompts.is_empty(), "{}: no prompts", file.display());
    Ok(prompts)
}

/// Generates every request, at most `max_batch` sequences running together; `on_token(i, t)`
/// sees each new token of request `i` as it comes. A request's tokens do not depend on the others.
pub fn generate_batch(
    model: &InferenceModel,
    reqs: Vec<Request>,
    max_batch: usize,
    on_token: &mut dyn FnMut(usize, u32) -> Result<()>,
) -> Result<Vec<Vec<u32>>> {
    let max_len = reqs.iter().map(|r| r.prompt.len() + r.max_new).max().unwrap_or(1).min(model.max_positions());
    let opts = EngineOptions::for_model(model, max_batch, max_len);
    Engine::new(model, None, opts)?.generate_all(reqs, on_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_from_lines_or_jsonl() {
        let d = std::env::temp_dir().join(format!("tinyllama-prompts-{}", std::process::id()));
        std::fs::write(&d, "Once upon\n\n{\"prompt\": \"a {b}\"}\n").unwrap();
        assert_eq!(read_prompts(&d).unwrap(), ["Once upon", "a {b}"]);
        std::fs::write(&d, "ok\n{\"text\": 1}\n").unwrap();
        let e = read_prompts(&d).unwrap_err().to_string();
        assert!(e.contains(":2: no string field \"prompt\""), "{e}");
        std::fs::write(&d, "\n").unwrap();
        assert!(read_prompts(&d).unwrap_err().to_string().contains("no prompts"));
        std::fs::remove_file(d).unwrap();
    }
}
