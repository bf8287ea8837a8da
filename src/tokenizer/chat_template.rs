//! Chat templates: a model's Jinja `chat_template` (from `tokenizer_config.json` or GGUF
//! metadata) rendered as transformers' `apply_chat_template` renders it — Jinja with
//! `trim_blocks` and `lstrip_blocks`, `messages`, `bos_token`, `eos_token`,
//! `add_generation_prompt`, `raise_exception`, and Python's string methods (`.strip()`, …).
//! TinyLlama-1.1B-Chat's Zephyr template is used when a model has none.

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// The `chat_template` of TinyLlama/TinyLlama-1.1B-Chat-v1.0 (Zephyr style).
pub const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

/// Where the chosen template came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateSource {
    /// `--chat-template` named it (`zephyr` or a file).
    Flag(String),
    /// The model's own (`tokenizer_config.json`, `chat_template.jinja` or GGUF metadata).
    Model,
    /// Zephyr's, because the model has none.
    ZephyrDefault,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A compiled chat template with the special tokens it is rendered with.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    pub source: String,
    bos: String,
    eos: String,
    /// The template marks what the assistant says with `{% generation %}…{% endgeneration %}`
    /// (transformers' `return_assistant_tokens_mask`).
    pub has_generation_marks: bool,
}

/// Private-use characters standing for the `generation` tags while rendering.
const GEN_START: char = '\u{E000}';
const GEN_END: char = '\u{E001}';

/// Rewrites `{% generation %}` / `{% endgeneration %}` (a transformers extension Jinja lacks) into
/// an `if` block that prints a marker character, so that whitespace control (`trim_blocks`, `-`)
/// acts as on the original block tags. Returns the new source and whether any tag was found.
fn rewrite_generation_tags(src: &str) -> (String, bool) {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    let mut found = false;
    while let Some(i) = rest.find("{%") {
        out.push_str(&rest[..i]);
        let tag = &rest[i..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return (out, found);
        };
        let inner = &tag[2..end];
        let left = if inner.starts_with('-') || inner.starts_with('+') { &inner[..1] } else { "" };
        let right = if inner.ends_with('-') || inner.ends_with('+') { &inner[inner.len() - 1..] } else { "" };
        let word = inner[left.len()..inner.len() - right.len()].trim();
        match word {
            "generation" => {
                found = true;
                out.push_str(&format!("{{{{{left} '{GEN_START}' }}}}{{% if true {right}%}}"));
            }
            "endgeneration" => {
                found = true;
                out.push_str(&format!("{{{{ '{GEN_END}' }}}}{{%{left} endif {right}%}}"));
            }
            _ => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    (out, found)
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        let (rewritten, has_generation_marks) = rewrite_generation_tags(source);
        env.add_template_owned("chat", rewritten).map_err(|e| anyhow!("chat template does not parse: {e}"))?;
        Ok(ChatTemplate {
            env,
            source: source.into(),
            bos: bos_token.into(),
            eos: eos_token.into(),
            has_generation_marks,
        })
    }

    /// The model's own template, or Zephyr's (TinyLlama-Chat) when it has none; says which.
    pub fn for_model(template: Option<&str>, bos_token: &str, eos_token: &str) -> Result<(Self, bool)> {
        let (t, from) = Self::choose(None, template, bos_token, eos_token)?;
        Ok((t, from == TemplateSource::Model))
    }

    /// The template that renders a conversation: `--chat-template` (`zephyr`, or a file holding a
    /// Jinja template) where given, else the model's own, else Zephyr's (TinyLlama-Chat's).
    pub fn choose(
        flag: Option<&str>,
        model_template: Option<&str>,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<(Self, TemplateSource)> {
        let (source, from) = match (flag, model_template) {
            (Some(name), _) if name.eq_ignore_ascii_case("zephyr") => {
                (ZEPHYR.to_string(), TemplateSource::Flag(name.into()))
            }
            (Some(file), _) => (
                std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("--chat-template {file}: not `zephyr`, and not a readable file ({e})")
                })?,
                TemplateSource::Flag(file.into()),
            ),
            (None, Some(t)) => (t.to_string(), TemplateSource::Model),
            (None, None) => (ZEPHYR.to_string(), TemplateSource::ZephyrDefault),
        };
        Ok((Self::new(&source, bos_token, eos_token)?, from))
    }

    /// The prompt text for `messages`, ending with the assistant's header when
    /// `add_generation_prompt`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        Ok(self.render_marked(messages, add_generation_prompt)?.0)
    }

    /// The text and the byte ranges of it inside `{% generation %}` blocks.
    pub fn render_marked(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<(String, Vec<std::ops::Range<usize>>)> {
        let raw = self.render_raw(messages, add_generation_prompt)?;
        if !self.has_generation_marks {
            return Ok((raw, vec![]));
        }
        let (mut text, mut spans, mut open) = (String::with_capacity(raw.len()), vec![], None);
        for c in raw.chars() {
            match c {
                GEN_START => open = Some(text.len()),
                GEN_END => {
                    if let Some(s) = open.take() {
                        spans.push(s..text.len());
                    }
                }
                c => text.push(c),
            }
        }
        Ok((text, spans))
    }

    fn render_raw(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let t = self.env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        t.render(minijinja::context! {
            messages => messages,
            bos_token => &self.bos,
            eos_token => &self.eos,
            add_generation_prompt => add_generation_prompt,
        })
        .map_err(|e| anyhow!("chat template: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msgs(v: &[(&str, &str)]) -> Vec<Message> {
        v.iter().map(|(r, c)| Message { role: r.to_string(), content: c.to_string() }).collect()
    }

    /// The string transformers' `apply_chat_template(add_generation_prompt=True, tokenize=False)`
    /// gives with TinyLlama-Chat's tokenizer (written out here).
    #[test]
    fn zephyr_renders_as_transformers_does() {
        let (t, own) = ChatTemplate::for_model(None, "<s>", "</s>").unwrap();
        assert!(!own);
        let m = msgs(&[
            ("system", "You are a friendly chatbot."),
            ("user", "Hi!"),
            ("assistant", "Hello."),
            ("user", "How are you?"),
        ]);
        let want = "<|system|>\nYou are a friendly chatbot.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n<|user|>\nHow are you?</s>\n<|assistant|>\n";
        assert_eq!(t.render(&m, true).unwrap(), want);
        assert_eq!(
            t.render(&m[..3], false).unwrap(),
            "<|system|>\nYou are a friendly chatbot.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello.</s>\n"
        );
    }

    /// Llama-2-chat's template: `bos_token`, Python string methods, `raise_exception`.
    #[test]
    fn llama2_template_with_python_methods_and_exceptions() {
        let src = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        let out = t
            .render(
                &msgs(&[("system", "Be brief."), ("user", "  Hi  "), ("assistant", "Hello"), ("user", "Bye")]),
                true,
            )
            .unwrap();
        assert_eq!(out, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n  Hi [/INST] Hello </s><s>[INST] Bye [/INST]");
        let err = t.render(&msgs(&[("user", "a"), ("user", "b")]), true).unwrap_err().to_string();
        assert!(err.contains("Conversation roles must alternate"), "{err}");
        assert!(ChatTemplate::new("{% for %}", "<s>", "</s>").is_err());
    }
}
