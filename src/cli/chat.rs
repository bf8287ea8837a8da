//! `tinyllama chat`: a conversation on the terminal or over a pipe.

use super::{EngineArgs, SamplingArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct ChatArgs {
    /// A chat model: Hugging Face directory or GGUF file. Its chat template (tokenizer_config.json
    /// or GGUF metadata) renders the conversation; TinyLlama-Chat's Zephyr template when it has none.
    /// A Hugging Face Hub id works too: `org/name`, `org/name:Q4_0` (a local path wins).
    #[arg(long, short = 'm')]
    model: PathBuf,
    #[command(flatten)]
    hub: super::hub::HubArgs,
    /// A PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors; what `sft
    /// --lora-rank` and PEFT write), merged in memory into the weights of a safetensors model.
    #[arg(long, value_name = "ADAPTER_DIR")]
    lora: Option<PathBuf>,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// `zephyr`, or a file holding a Jinja chat template [default: the model's own, else Zephyr's].
    #[arg(long)]
    chat_template: Option<String>,
    /// End a reply when its text contains this string (not printed); may be given several times.
    #[arg(long)]
    stop: Vec<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `tinyllama chat`: line editing and history on a terminal, `/help`, `/reset`, `/system TEXT`,
/// `/exit`; Ctrl-C stops a reply (not the session); the KV cache is kept across turns and the
/// oldest turns make room when the context fills.
pub fn run(a: ChatArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    use tinyllama::tokenizer::chat_template::{ChatTemplate, TemplateSource};
    a.sampling.options()?;
    a.engine.check()?;
    let dtype = tinyllama::model::ModelDtype::parse_or_auto(&a.sampling.dtype)?;
    let kv = a.sampling.kv.kind()?;
    let mut loaded = tinyllama::loader::load_model_with_lora(&a.hub.locate(&a.model)?, a.lora.as_deref(), dtype, true)?;
    loaded.model.kv_cache = kv;
    let draft = a.engine.load_draft(&loaded, &a.sampling.kv, &a.hub)?;
    let tok = &loaded.tokenizer;
    let name = |id: u32| tok.id_to_token(id).unwrap_or_default();
    let (template, from) = ChatTemplate::choose(
        a.chat_template.as_deref(),
        loaded.chat_template.as_deref(),
        &name(tok.bos_id),
        &name(tok.eos_id),
    )?;
    if from == TemplateSource::ZephyrDefault {
        eprintln!("note: {} has no chat template: using TinyLlama-Chat's Zephyr template", a.model.display());
    }
    let sampling = a.sampling.options_announced()?;
    let opts = a.engine.options(&loaded.model, 1, loaded.model.max_positions());
    let draft = draft.as_ref().map(|d| &d.model);
    let mut session =
        tinyllama::chat::ChatSession::on_engine(&loaded.model, draft, opts, tok, template, a.system.clone())?
            .with_stop_strings(a.stop.clone());
    let interactive = std::io::stdin().is_terminal();
    eprintln!("chat with {} — /help for commands; Ctrl-C stops a reply; Ctrl-D or /exit quits", a.model.display());
    let mut editor = if interactive { rustyline::DefaultEditor::new().ok() } else { None };
    let mut lines = std::io::stdin().lock().lines();
    loop {
        let line = match editor.as_mut() {
            Some(ed) => match ed.readline("> ") {
                Ok(l) => {
                    let _ = ed.add_history_entry(l.as_str());
                    l
                }
                Err(rustyline::error::ReadlineError::Interrupted) => continue,
                Err(rustyline::error::ReadlineError::Eof) => break,
                Err(e) => return Err(e.into()),
            },
            None => match lines.next() {
                Some(l) => l?,
                None => break,
            },
        };
        let line = line.trim();
        match line.split_once(' ').map(|(c, r)| (c, r.trim())).unwrap_or((line, "")) {
            ("", _) => continue,
            ("/exit" | "/quit", _) => break,
            ("/help", _) => {
                eprintln!(
                    "/reset: forget the conversation · /system TEXT: a new system prompt (and conversation) · /exit"
                );
                continue;
            }
            ("/reset", _) => {
                session.reset();
                eprintln!("(conversation cleared)");
                continue;
            }
            ("/system", text) => {
                session.set_system((!text.is_empty()).then(|| text.to_string()));
                eprintln!("(new conversation{})", if text.is_empty() { " without a system prompt" } else { "" });
                continue;
            }
            // a slash word is a command ("/usr/bin" and the like are text)
            (cmd, _) if cmd.len() > 1 && cmd.starts_with('/') && !cmd[1..].contains('/') => {
                eprintln!("unknown command {cmd}: /help lists them");
                continue;
            }
            _ => {}
        }
        let mut out = std::io::stdout();
        let interrupt = tinyllama::chat::InterruptDuringReply::install()?;
        let r = session.reply(line, &sampling, a.sampling.max_new_tokens, interrupt.flag(), &mut |t| {
            write!(out, "{t}")?;
            out.flush()?;
            Ok(())
        });
        drop(interrupt);
        println!();
        match r {
            Ok(r) => {
                if r.dropped_turns > 0 {
                    eprintln!("(the context was full: the {} oldest turn(s) were dropped)", r.dropped_turns);
                }
                if r.interrupted {
                    eprintln!("(stopped)");
                }
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    Ok(())
}
