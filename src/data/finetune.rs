//! Fine-tuning data: TRL's dataset formats, one JSON object per line, tokenized as TRL's
//! `SFTTrainer` and `DPOTrainer` tokenize them.
//!
//! - `{"messages": [{"role", "content"}, …]}` — a conversation, rendered with the chat template
//!   (no BOS added: the template decides, as `apply_chat_template(tokenize=True)`).
//! - `{"prompt", "completion"}` — both conversations (the prompt rendered with the generation
//!   prompt) or both plain text (BOS first, EOS appended to the completion).
//! - `{"text"}` — plain text (BOS first, EOS appended).
//! - `{"prompt", "chosen", "rejected"}` — preference pairs for DPO, conversational or plain.
//!
//! Where the prompt ends is where the tokenized prompt and prompt+completion diverge (TRL's
//! `common_prefix_length`). Loss masks: the completion only, or for `messages` what the assistant
//! says — from the template's `{% generation %}` marks when it has them (TRL's
//! `assistant_only_loss`), else the tokens each assistant turn adds to the conversation.

use crate::kernels::cross_entropy::IGNORE_INDEX;
use crate::tokenizer::chat_template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;

/// Which tokens an SFT example is trained on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LossOn {
    /// The completion, or what the assistant says (TRL's `completion_only_loss` /
    /// `assistant_only_loss`).
    Completion,
    /// Every token (TRL's default for `messages` and `text`).
    All,
}

/// One tokenized SFT example: `labels[i]` is `input_ids[i]` where it counts, else
/// [`IGNORE_INDEX`] (transformers' `-100`). Not yet shifted: token `i` is predicted from `..i`.
#[derive(Clone, Debug, PartialEq)]
pub struct SftExample {
    pub input_ids: Vec<u32>,
    pub labels: Vec<u32>,
    /// 1-based line in the data file.
    pub line: usize,
}

impl SftExample {
    /// Tokens that carry loss once shifted (the first token is never predicted).
    pub fn loss_tokens(&self) -> usize {
        self.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()
    }
}

/// One tokenized preference pair.
#[derive(Clone, Debug, PartialEq)]
pub struct PreferenceExample {
    pub prompt_ids: Vec<u32>,
    pub chosen_ids: Vec<u32>,
    pub rejected_ids: Vec<u32>,
    pub line: usize,
}

impl PreferenceExample {
    /// Prompt + `completion`, cut to `max_length` (TRL's `keep_start`), and its loss mask.
    pub fn sequence(&self, chosen: bool, max_length: usize) -> (Vec<u32>, Vec<bool>) {
        let c = if chosen { &self.chosen_ids } else { &self.rejected_ids };
        let mut ids: Vec<u32> = self.prompt_ids.iter().chain(c).copied().collect();
        let mut mask: Vec<bool> = (0..ids.len()).map(|i| i >= self.prompt_ids.len()).collect();
        ids.truncate(max_length);
        mask.truncate(max_length);
        (ids, mask)
    }
}

/// A data file read and tokenized, with what was changed or left out on the way.
#[derive(Debug)]
pub struct Prepared<T> {
    pub examples: Vec<T>,
    /// Examples cut to `max_length`.
    pub truncated: usize,
    /// Examples left without a token to learn from once cut (TRL drops them too).
    pub dropped: usize,
}

impl<T> Prepared<T> {
    fn new() -> Self {
        Prepared { examples: vec![], truncated: 0, dropped: 0 }
    }
}

/// Tokenizes as TRL: the model's tokenizer and chat template.
pub struct Renderer<'a> {
    pub tok: &'a Tokenizer,
    pub template: &'a ChatTemplate,
    pub bos: String,
    pub eos: String,
}

impl<'a> Renderer<'a> {
    pub fn new(tok: &'a Tokenizer, template: &'a ChatTemplate) -> Self {
        let name = |id| tok.id_to_token(id).unwrap_or_default();
        Renderer { tok, template, bos: name(tok.bos_id), eos: name(tok.eos_id) }
    }

    /// Plain text as `tokenizer(text)`: BOS first (where the tokenizer adds it).
    fn plain(&self, text: &str) -> Result<Vec<u32>> {
        self.tok.encode_prompt(text)
    }

    /// A conversation as `apply_chat_template(messages, tokenize=True)`.
    fn chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.tok.encode(&self.template.render(messages, add_generation_prompt)?)
    }

    fn with_eos(&self, text: &str) -> String {
        if text.ends_with(&self.eos) {
            text.to_string()
        } else {
            format!("{text}{}", self.eos)
        }
    }

    /// One SFT row (any of the formats above).
    pub fn sft(&self, row: &Value, loss_on: LossOn) -> Result<(Vec<u32>, Vec<bool>)> {
        if let Some(m) = row.get("messages") {
            let msgs = messages(m, "messages")?;
            return match loss_on {
                LossOn::All => {
                    let ids = self.chat(&msgs, false)?;
                    let n = ids.len();
                    Ok((ids, vec![true; n]))
                }
                LossOn::Completion => self.assistant_mask(&msgs),
            };
        }
        if let Some(text) = row.get("text") {
            let text = text.as_str().filter(|t| !t.is_empty()).context("`text` must be a non-empty string")?;
            let ids = self.plain(&self.with_eos(text))?;
            let n = ids.len();
            return Ok((ids, vec![true; n]));
        }
        let (prompt, completion) = match (row.get("prompt"), row.get("completion")) {
            (Some(p), Some(c)) => (p, c),
            _ => bail!("a row needs `messages`, `prompt` and `completion`, or `text`"),
        };
        let (prompt_ids, full) = if prompt.is_array() || completion.is_array() {
            let p = messages(prompt, "prompt")?;
            let c = messages(completion, "completion")?;
            let all: Vec<Message> = p.iter().chain(&c).cloned().collect();
            (self.chat(&p, true)?, self.chat(&all, false)?)
        } else {
            let p = prompt.as_str().context("`prompt` must be a string or a list of messages")?;
            let c = completion.as_str().context("`completion` must be a string or a list of messages")?;
            ensure!(!c.is_empty(), "`completion` is empty");
            (self.plain(p)?, self.plain(&format!("{p}{}", self.with_eos(c)))?)
        };
        let start = common_prefix(&prompt_ids, &full);
        let mask = (0..full.len()).map(|i| loss_on == LossOn::All || i >= start).collect();
        Ok((full, mask))
    }

    /// What the assistant says in a conversation: the template's generation marks mapped to
    /// tokens through their offsets (as transformers does), or, for templates without marks,
    /// the tokens each assistant turn adds after the generation prompt.
    fn assistant_mask(&self, msgs: &[Message]) -> Result<(Vec<u32>, Vec<bool>)> {
        ensure!(msgs.iter().any(|m| m.role == "assistant"), "the conversation has no assistant message to learn");
        if self.template.has_generation_marks {
            let (text, spans) = self.template.render_marked(msgs, false)?;
            let toks = self.tok.encode_with_offsets(&text)?;
            let mut mask = vec![false; toks.len()];
            // transformers: the token holding a span's first character through the one holding
            // its last
            let token_at = |b: usize| toks.iter().position(|(_, (s, e))| *s <= b && b < *e);
            for sp in spans.iter().filter(|s| !s.is_empty()) {
                let Some(first) = token_at(sp.start) else { break };
                let last = token_at(sp.end - 1).unwrap_or(toks.len() - 1);
                mask[first..=last].iter_mut().for_each(|m| *m = true);
            }
            return Ok((toks.into_iter().map(|(id, _)| id).collect(), mask));
        }
        let full = self.chat(msgs, false)?;
        let mut mask = vec![false; full.len()];
        for i in (0..msgs.len()).filter(|&i| msgs[i].role == "assistant") {
            let before = common_prefix(&self.chat(&msgs[..i], true)?, &full);
            let upto = common_prefix(&self.chat(&msgs[..=i], false)?, &full);
            mask[before..upto.max(before)].iter_mut().for_each(|m| *m = true);
        }
        Ok((full, mask))
    }

    /// One preference row: `prompt`, `chosen`, `rejected`, all conversations or all text.
    pub fn preference(&self, row: &Value) -> Result<PreferenceExample> {
        let get = |k: &str| row.get(k).with_context(|| format!("a preference row needs `{k}`"));
        let (prompt, chosen, rejected) = (get("prompt")?, get("chosen")?, get("rejected")?);
        let (p, pc, pr) = if prompt.is_array() || chosen.is_array() || rejected.is_array() {
            let p = messages(prompt, "prompt")?;
            let cat =
                |k: &str, v: &Value| -> Result<Vec<Message>> { Ok(p.iter().cloned().chain(messages(v, k)?).collect()) };
            (
                self.chat(&p, true)?,
                self.chat(&cat("chosen", chosen)?, false)?,
                self.chat(&cat("rejected", rejected)?, false)?,
            )
        } else {
            let text = |k: &str, v: &Value| -> Result<String> {
                let s = v.as_str().with_context(|| format!("`{k}` must be a string or a list of messages"))?;
                ensure!(!s.is_empty() || k == "prompt", "`{k}` is empty");
                Ok(s.to_string())
            };
            let p = text("prompt", prompt)?;
            let (c, r) = (self.with_eos(&text("chosen", chosen)?), self.with_eos(&text("rejected", rejected)?));
            (self.plain(&p)?, self.plain(&format!("{p}{c}"))?, self.plain(&format!("{p}{r}"))?)
        };
        let n = common_prefix(&p, &pc).min(common_prefix(&p, &pr));
        Ok(PreferenceExample {
            prompt_ids: p[..n].to_vec(),
            chosen_ids: pc[n..].to_vec(),
            rejected_ids: pr[n..].to_vec(),
            line: 0,
        })
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// A list of `{"role", "content"}` messages, checked.
fn messages(v: &Value, field: &str) -> Result<Vec<Message>> {
    let list = v.as_array().with_context(|| format!("`{field}` must be a list of messages"))?;
    ensure!(!list.is_empty(), "`{field}` is an empty list");
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m.get("role").and_then(Value::as_str).with_context(|| format!("{field}[{i}] has no `role`"))?;
            ensure!(
                matches!(role, "system" | "user" | "assistant"),
                "{field}[{i}] has role `{role}`: expected system, user or assistant"
            );
            let content = m
                .get("content")
                .and_then(Value::as_str)
                .with_context(|| format!("{field}[{i}] has no `content` string"))?;
            ensure!(!content.is_empty(), "{field}[{i}] ({role}) is empty");
            Ok(Message { role: role.into(), content: content.into() })
        })
        .collect()
}

/// The rows of a JSONL file with their line numbers (blank lines skipped); a line that is not a
/// JSON object is an error naming it.
pub fn read_jsonl(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))?;
        ensure!(v.is_object(), "{}:{}: not a JSON object", path.display(), i + 1);
        rows.push((i + 1, v));
    }
    ensure!(!rows.is_empty(), "{}: no examples", path.display());
    Ok(rows)
}

/// The format a row is in (all rows of a file must share one, as in a `datasets` table).
fn format_of(v: &Value) -> &'static str {
    let has = |k| v.get(k).is_some();
    if has("chosen") || has("rejected") {
        "prompt/chosen/rejected"
    } else if has("messages") {
        "messages"
    } else if has("completion") {
        "prompt/completion"
    } else if has("text") {
        "text"
    } else {
        "unknown"
    }
}

/// An SFT data file, tokenized, cut to `max_length` (the start kept); examples with nothing left
/// to learn are dropped and counted.
pub fn sft_examples(path: &Path, r: &Renderer, loss_on: LossOn, max_length: usize) -> Result<Prepared<SftExample>> {
    let rows = read_jsonl(path)?;
    let first = format_of(&rows[0].1);
    ensure!(first != "prompt/chosen/rejected", "{}: preference pairs are DPO data (tinyllama dpo)", path.display());
    let mut out = Prepared::new();
    for (line, row) in rows {
        let at = || format!("{}:{line}", path.display());
        if format_of(&row) == "unknown" {
            let keys: Vec<&String> = row.as_object().map(|m| m.keys().collect()).unwrap_or_default();
            bail!("{}: a row needs `messages`, `prompt` and `completion`, or `text` (it has {keys:?})", at());
        }
        ensure!(format_of(&row) == first, "{}: a {} row in a file of {first} rows", at(), format_of(&row));
        let (mut ids, mut mask) = r.sft(&row, loss_on).with_context(at)?;
        ensure!(ids.len() >= 2, "{}: fewer than two tokens", at());
        if ids.len() > max_length {
            ids.truncate(max_length);
            mask.truncate(max_length);
            out.truncated += 1;
        }
        let labels: Vec<u32> = ids.iter().zip(&mask).map(|(&t, &m)| if m { t } else { IGNORE_INDEX }).collect();
        let ex = SftExample { input_ids: ids, labels, line };
        if ex.loss_tokens() == 0 {
            out.dropped += 1;
            continue;
        }
        out.examples.push(ex);
    }
    ensure!(!out.examples.is_empty(), "{}: no example has a token to learn from", path.display());
    Ok(out)
}

/// TRL's `packing_strategy="wrapped"`: every example's tokens and labels concatenated in order
/// and cut into pieces of `max_length`, each trained as one sequence (positions from 0; a piece
/// may join the end of one example to the start of the next). A piece's `line` is the line of
/// the example it starts in.
pub fn pack_wrapped(examples: &[SftExample], max_length: usize) -> Vec<SftExample> {
    let mut lines = vec![];
    let (mut ids, mut labels) = (vec![], vec![]);
    for e in examples {
        lines.extend(std::iter::repeat_n(e.line, e.input_ids.len()));
        ids.extend_from_slice(&e.input_ids);
        labels.extend_from_slice(&e.labels);
    }
    (0..ids.len())
        .step_by(max_length.max(1))
        .map(|s| {
            let e = (s + max_length).min(ids.len());
            SftExample { input_ids: ids[s..e].to_vec(), labels: labels[s..e].to_vec(), line: lines[s] }
        })
        .filter(|e| e.input_ids.len() >= 2)
        .collect()
}

/// A DPO data file, tokenized; pairs whose prompt alone fills `max_length` are dropped (TRL's
/// `keep_start`), longer ones counted as truncated.
pub fn preference_examples(path: &Path, r: &Renderer, max_length: usize) -> Result<Prepared<PreferenceExample>> {
    let rows = read_jsonl(path)?;
    let mut out = Prepared::new();
    for (line, row) in rows {
        let at = || format!("{}:{line}", path.display());
        ensure!(
            format_of(&row) == "prompt/chosen/rejected",
            "{}: DPO needs `prompt`, `chosen` and `rejected` (found a {} row)",
            at(),
            format_of(&row)
        );
        let mut ex = r.preference(&row).with_context(at)?;
        ex.line = line;
        ensure!(
            !ex.chosen_ids.is_empty() && !ex.rejected_ids.is_empty(),
            "{}: chosen or rejected adds no token after the prompt",
            at()
        );
        ensure!(
            ex.prompt_ids.len() + ex.chosen_ids.len().min(ex.rejected_ids.len()) >= 2,
            "{}: a sequence of one token has nothing to predict",
            at()
        );
        if ex.prompt_ids.len() >= max_length {
            out.dropped += 1;
            continue;
        }
        if ex.prompt_ids.len() + ex.chosen_ids.len().max(ex.rejected_ids.len()) > max_length {
            out.truncated += 1;
        }
        out.examples.push(ex);
    }
    ensure!(!out.examples.is_empty(), "{}: every pair's prompt fills max_length", path.display());
    Ok(out)
}
