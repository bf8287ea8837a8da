//! What `--help` shows beyond the flags' own text: the default of every flag whose default comes
//! from a settings struct (TOML-overridable, so the flag itself is an `Option`), per command, as
//! clap's `[default: …]`; and `[required]` on the flags a command cannot run without.

use clap::Command;
use serde_json::Value;
use tinyllama::train::config::TrainConfig;
use tinyllama::train::finetune::{FinetuneConfig, Mode};

/// `cmd` with the defaults of `pretrain`, `sft` and `dpo` written into their flags' help, and
/// `[required]` after every required flag's.
pub fn with_defaults_shown(cmd: Command) -> Command {
    let settings = [
        ("pretrain", serde_json::to_value(TrainConfig::default()).unwrap_or_default()),
        ("sft", serde_json::to_value(FinetuneConfig::defaults(Mode::Sft)).unwrap_or_default()),
        ("dpo", serde_json::to_value(FinetuneConfig::defaults(Mode::Dpo)).unwrap_or_default()),
    ];
    let mut cmd = cmd;
    for (name, defaults) in settings {
        cmd = cmd.mut_subcommand(name, |sub| show_settings_defaults(sub, &defaults));
    }
    mark_required(cmd)
}

fn show_settings_defaults(mut sub: Command, defaults: &Value) -> Command {
    let ids: Vec<String> = sub.get_arguments().map(|a| a.get_id().to_string()).collect();
    for id in ids {
        let shown = match defaults.get(&id) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_f64() => {
                let x = n.as_f64().unwrap_or_default();
                if x != 0.0 && x.abs() < 1e-3 {
                    format!("{x:e}")
                } else {
                    format!("{x}")
                }
            }
            Some(Value::Number(n)) => n.to_string(),
            // a switch's default is off, and a path or list says itself
            _ => continue,
        };
        sub = sub.mut_arg(id.as_str(), |a| {
            if a.is_hide_default_value_set() || a.get_default_values().iter().next().is_some() {
                return a;
            }
            let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
            let long = a.get_long_help().map(|h| h.to_string());
            let a = a.help(format!("{help} [default: {shown}]"));
            match long {
                Some(l) => a.long_help(format!("{l} [default: {shown}]")),
                None => a,
            }
        });
    }
    sub
}

fn mark_required(cmd: Command) -> Command {
    let subs: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    let mut cmd = cmd;
    for name in subs {
        cmd = cmd.mut_subcommand(name, |sub| {
            let sub = mark_required(sub);
            let ids: Vec<String> = sub
                .get_arguments()
                .filter(|a| a.is_required_set() && !a.is_positional())
                .map(|a| a.get_id().to_string())
                .collect();
            ids.into_iter().fold(sub, |sub, id| {
                sub.mut_arg(id.as_str(), |a| {
                    let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                    a.help(format!("{help} [required]"))
                })
            })
        });
    }
    cmd
}
