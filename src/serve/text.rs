//! Generated tokens as OpenAI returns them, per request.

use super::engine::{Event, TokenLogprob};
use super::state::AppState;
use serde_json::{json, Value};
use std::sync::Arc;

/// Turns generated tokens into text as OpenAI returns it: special tokens dropped, incomplete
/// UTF-8 held back, and the text cut before the first stop string (also held back while a stop
/// string may be starting); with the finish reason and the log-probabilities not yet sent.
pub(super) struct TextStream {
    pub(super) st: Arc<AppState>,
    /// The prompt's last token: a completion is decoded after it, keeping its leading space.
    pub(super) after: Option<u32>,
    pub(super) text: crate::decode::TextStream,
    pub(super) finish: Option<&'static str>,
    pub(super) generated: usize,
    pub(super) max_new: usize,
    /// (token text, logprob) of tokens not yet reported.
    pub(super) logprobs: Vec<(String, TokenLogprob)>,
    /// The prompt's log-probabilities (`echo`).
    pub(super) prompt_lp: Vec<Option<TokenLogprob>>,
}

impl TextStream {
    pub(super) fn new(st: Arc<AppState>, stop_strings: Vec<String>, after: Option<u32>, max_new: usize) -> Self {
        let text = crate::decode::TextStream::new(stop_strings, after);
        TextStream { st, after, text, finish: None, generated: 0, max_new, logprobs: vec![], prompt_lp: vec![] }
    }

    /// Takes one engine event; returns the text that may be shown now.
    pub(super) fn push(&mut self, ev: Event) -> Result<String, String> {
        match ev {
            Event::Failed(e) => Err(e),
            Event::PromptLogprobs(lp) => {
                self.prompt_lp = lp;
                Ok(String::new())
            }
            Event::Done => {
                if self.finish.is_none() {
                    self.finish = Some(if self.generated >= self.max_new { "length" } else { "stop" });
                }
                Ok(self.text.finish())
            }
            Event::Token { .. } if self.finish.is_some() => Ok(String::new()),
            Event::Token { id, logprob } if self.st.end_ids.contains(&id) => {
                // the end token is counted and scored (echo's clients slice its place off), not shown
                self.generated += 1;
                if let Some(lp) = logprob {
                    self.logprobs.push((String::new(), lp));
                }
                self.finish = Some("stop");
                Ok(self.text.finish())
            }
            Event::Token { id, logprob } => {
                self.generated += 1;
                if let Some(lp) = logprob {
                    let piece = match self.text.ids().last().copied().or(self.after) {
                        Some(p) => self.st.tok.decode_after(p, &[id]),
                        None => self.st.tok.decode(&[id]),
                    };
                    self.logprobs.push((piece.unwrap_or_default(), lp));
                }
                let out = self.text.push(&self.st.tok, id).map_err(|e| format!("{e:#}"))?;
                if self.text.stopped {
                    self.finish = Some("stop");
                }
                Ok(out)
            }
        }
    }

    pub(super) fn take_logprobs(&mut self, completion: bool, offset: usize) -> Value {
        let lps = std::mem::take(&mut self.logprobs);
        let tok = &self.st.tok;
        let name = |id: u32, prev: Option<u32>| match prev {
            Some(p) => tok.decode_after(p, &[id]).unwrap_or_default(),
            None => tok.decode(&[id]).unwrap_or_default(),
        };
        if completion {
            let mut off = offset;
            let mut text_offset = vec![];
            for (piece, _) in &lps {
                text_offset.push(off);
                off += piece.len();
            }
            json!({
                "tokens": lps.iter().map(|x| &x.0).collect::<Vec<_>>(),
                "token_logprobs": lps.iter().map(|x| x.1.logprob).collect::<Vec<_>>(),
                "top_logprobs": lps.iter().map(|x| x.1.top.iter().map(|&(id, lp)| (name(id, self.after), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
                "text_offset": text_offset,
            })
        } else {
            json!({"content": lps.iter().map(|(piece, lp)| json!({
                "token": piece, "logprob": lp.logprob, "bytes": piece.as_bytes(),
                "top_logprobs": lp.top.iter().map(|&(id, l)| { let t = name(id, None); json!({"token": t, "logprob": l, "bytes": t.as_bytes()}) }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>()})
        }
    }
}
