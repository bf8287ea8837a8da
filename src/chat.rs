//! A chat session (`tinyllama chat`): the conversation rendered with the model's chat template at
//! every turn and run on the decode engine, whose prefix cache keeps the last turn (only what it
//! does not already hold is prefilled); the oldest turns dropped when the context would overflow,
//! and a reply that can be stopped mid-way.

use crate::decode::{Engine, EngineOptions, Event, Request, SamplingOptions, TextStream};
use crate::model::InferenceModel;
use crate::tokenizer::chat_template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

/// Ctrl-C during a reply: while a guard lives, SIGINT sets [`InterruptDuringReply::flag`] instead
/// of ending the process; dropping it puts the previous handler back. Installed around each reply,
/// after the line editor has read the line: rustyline installs its own SIGINT handler when it
/// starts and keeps it while it lives, so a handler installed once at start-up never runs.
pub struct InterruptDuringReply {
    previous: libc::sigaction,
}

static REPLY_INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    // an atomic store is async-signal-safe
    REPLY_INTERRUPTED.store(true, Ordering::SeqCst);
}

impl InterruptDuringReply {
    pub fn install() -> Result<Self> {
        REPLY_INTERRUPTED.store(false, Ordering::SeqCst);
        // SAFETY: sigaction with a zeroed, then filled struct; the handler only stores an atomic
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigint as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGINT, &action, &mut previous) != 0 {
                bail!("cannot install the Ctrl-C handler: {}", std::io::Error::last_os_error());
            }
            Ok(InterruptDuringReply { previous })
        }
    }

    /// Set once Ctrl-C was pressed since [`install`](Self::install).
    pub fn flag(&self) -> &'static AtomicBool {
        &REPLY_INTERRUPTED
    }
}

impl Drop for InterruptDuringReply {
    fn drop(&mut self) {
        // SAFETY: restores the handler saved by `install`
        unsafe {
            libc::sigaction(libc::SIGINT, &self.previous, std::ptr::null_mut());
        }
    }
}

pub struct ChatSession<'m> {
    model: &'m InferenceModel,
    tok: &'m Tokenizer,
    template: ChatTemplate,
    system: Option<String>,
    /// Finished turns: user, then assistant.
    turns: Vec<(String, String)>,
    /// One sequence at a time; finished turns stay in its prefix cache.
    engine: Engine<'m>,
    /// Tokens that end a reply (EOS and the like).
    end_ids: Vec<u32>,
    /// `--stop`: a reply ends before the first of these strings.
    stop_strings: Vec<String>,
}

/// What one reply did.
#[derive(Debug, Default)]
pub struct Reply {
    pub text: String,
    /// Tokens generated (an end-of-sequence token included).
    pub tokens: usize,
    /// Prompt tokens taken from the cache, and prompt tokens computed.
    pub reused: usize,
    pub prefilled: usize,
    /// Oldest turns dropped to make room.
    pub dropped_turns: usize,
    /// Stopped by the caller's flag.
    pub interrupted: bool,
}

impl<'m> ChatSession<'m> {
    /// A session on `model` with the engine's default options.
    pub fn new(
        model: &'m InferenceModel,
        tok: &'m Tokenizer,
        template: ChatTemplate,
        system: Option<String>,
    ) -> Result<Self> {
        let opts = EngineOptions::for_model(model, 1, model.max_positions());
        Self::on_engine(model, None, opts, tok, template, system)
    }

    /// A session on `model` (and `draft`, a draft model for speculative decoding), the engine run
    /// with `opts` (`max_batch` 1 is enough: one reply at a time).
    pub fn on_engine(
        model: &'m InferenceModel,
        draft: Option<&'m InferenceModel>,
        opts: EngineOptions,
        tok: &'m Tokenizer,
        template: ChatTemplate,
        system: Option<String>,
    ) -> Result<Self> {
        Ok(ChatSession {
            model,
            tok,
            template,
            system,
            turns: vec![],
            engine: Engine::new(model, draft, opts)?,
            end_ids: crate::decode::end_ids(&model.cfg, tok),
            stop_strings: vec![],
        })
    }

    /// Replies end before the first of `stops` (not shown, not kept).
    pub fn with_stop_strings(mut self, stop_strings: Vec<String>) -> Self {
        self.stop_strings = stop_strings;
        self
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.turns.clear();
        self.engine.clear_prefixes();
    }

    /// A new system prompt starts a new conversation.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system;
        self.reset();
    }

    pub fn turns(&self) -> usize {
        self.turns.len()
    }

    /// The prompt tokens of the conversation so far plus `user`, the assistant's header last;
    /// BOS first unless the template writes it.
    fn prompt(&self, user: &str) -> Result<Vec<u32>> {
        let mut msgs = vec![];
        if let Some(s) = &self.system {
            msgs.push(Message { role: "system".into(), content: s.clone() });
        }
        for (u, a) in &self.turns {
            msgs.push(Message { role: "user".into(), content: u.clone() });
            msgs.push(Message { role: "assistant".into(), content: a.clone() });
        }
        msgs.push(Message { role: "user".into(), content: user.into() });
        self.tok.with_bos(self.tok.encode(&self.template.render(&msgs, true)?)?)
    }

    /// The assistant's reply to `user`, its text streamed to `on_text` as it comes. `stop` set
    /// (Ctrl-C) ends the reply early; the turn is kept with what was said.
    pub fn reply(
        &mut self,
        user: &str,
        sampling: &SamplingOptions,
        max_new: usize,
        interrupt: &AtomicBool,
        on_text: &mut dyn FnMut(&str) -> Result<()>,
    ) -> Result<Reply> {
        let ctx = self.model.max_positions();
        let mut r = Reply::default();
        // room for the reply: drop the oldest turns while the prompt leaves less than max_new
        let mut prompt = self.prompt(user)?;
        while prompt.len() + max_new.max(1) > ctx && !self.turns.is_empty() {
            self.turns.remove(0);
            r.dropped_turns += 1;
            prompt = self.prompt(user)?;
        }
        if prompt.len() >= ctx {
            bail!("the message needs {} tokens, the model's context is {ctx}: shorten it", prompt.len());
        }
        let req = Request::new(prompt.clone(), max_new, sampling.clone(), self.end_ids.clone());
        let id = self.engine.add(req)?;
        let mut text = TextStream::new(self.stop_strings.clone(), None);
        let mut events = vec![];
        let mut stopping = false;
        while !self.engine.is_idle() {
            if interrupt.load(Ordering::Relaxed) && !stopping {
                r.interrupted = true;
                stopping = true;
                self.engine.cancel(id, &mut events);
            } else {
                self.engine.step(&mut events)?;
            }
            let mut i = 0;
            while i < events.len() {
                match &events[i] {
                    Event::Token { id: t, .. } => {
                        r.tokens += 1;
                        if !self.end_ids.contains(t) && !text.stopped {
                            on_text(&text.push(self.tok, *t)?)?;
                            if text.stopped && !stopping {
                                stopping = true;
                                self.engine.cancel(id, &mut events);
                            }
                        }
                    }
                    Event::Finished { reused, .. } => {
                        r.reused = *reused;
                        r.prefilled = prompt.len() - reused;
                    }
                    Event::Failed { message, .. } => bail!("{message}"),
                    Event::PromptLogprobs { .. } => {}
                }
                i += 1;
            }
            events.clear();
        }
        on_text(&text.finish())?;
        r.text = text.text().to_string();
        self.turns.push((user.to_string(), r.text.trim().to_string()));
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::Format;
    use crate::model::ModelDtype;

    fn session_parts() -> (InferenceModel, Tokenizer) {
        let mut cfg = crate::config::LlamaConfig::preset("tiny-10m").unwrap();
        (cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.max_position_embeddings) = (64, 128, 2, 96);
        (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) = (4, 2, 16);
        let llama = crate::model::Llama::new_init(cfg, 3);
        (InferenceModel::from_llama(&llama, ModelDtype::Uniform(Format::F32)).unwrap(), Tokenizer::llama2())
    }

    /// The second turn reuses the first turn's cache (prompt and reply); the reply equals the one
    /// a fresh session computes for the same conversation; a full context drops the oldest turns.
    #[test]
    fn turns_reuse_the_cache_and_drop_the_oldest_when_full() {
        let (model, tok) = session_parts();
        let t = || ChatTemplate::for_model(None, "<s>", "</s>").unwrap().0;
        let no = AtomicBool::new(false);
        let greedy = SamplingOptions::default();
        let mut s = ChatSession::new(&model, &tok, t(), Some("Be brief.".into())).unwrap();
        let first = s.reply("Hello!", &greedy, 6, &no, &mut |_| Ok(())).unwrap();
        assert_eq!((first.reused, first.tokens), (0, 6));
        let mut streamed = String::new();
        let second = s
            .reply("And then?", &greedy, 6, &no, &mut |x| {
                streamed.push_str(x);
                Ok(())
            })
            .unwrap();
        assert_eq!(streamed, second.text);
        assert!(
            second.reused > first.prefilled,
            "reused {} of a {}-token first prompt",
            second.reused,
            first.prefilled
        );
        // the same conversation from scratch: the same second reply
        let mut fresh = ChatSession::new(&model, &tok, t(), Some("Be brief.".into())).unwrap();
        fresh.turns.push(("Hello!".into(), first.text.trim().into()));
        let again = fresh.reply("And then?", &greedy, 6, &no, &mut |_| Ok(())).unwrap();
        assert_eq!(again.text, second.text);
        assert_eq!(again.reused, 0);
        // a context of 96: long messages push the oldest turns out, with a count
        let long = "word ".repeat(25);
        let mut dropped = 0;
        for _ in 0..4 {
            dropped += s.reply(&long, &greedy, 8, &no, &mut |_| Ok(())).unwrap().dropped_turns;
        }
        assert!(dropped >= 2 && s.turns() <= 2, "dropped {dropped}, {} turns left", s.turns());
        // a message longer than the context is refused; /reset empties the conversation
        let err = s.reply(&"word ".repeat(200), &greedy, 8, &no, &mut |_| Ok(())).unwrap_err().to_string();
        assert!(err.contains("context is 96"), "{err}");
        s.reset();
        assert_eq!(s.turns(), 0);
        // the stop flag ends a reply at once, keeping the turn
        let stop = AtomicBool::new(true);
        let r = s.reply("Hi", &greedy, 6, &stop, &mut |_| Ok(())).unwrap();
        assert!(r.interrupted && r.tokens == 0 && s.turns() == 1);
    }
}
