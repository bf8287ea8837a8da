//! LoRA's flags: which weights `--lora-targets` names. The adapters are
//! [`crate::model::lora::Adapters`] (computed as LoRA in the model's forward and backward), kept in
//! PEFT's files by [`crate::checkpoint::peft`].

use crate::checkpoint::peft::TARGETS;
pub use crate::checkpoint::peft::{load_peft, save_peft};
use anyhow::{ensure, Result};

/// `q,k,v,o,gate,up,down` (any subset, or `all`) → PEFT module suffixes, in model order.
pub fn parse_targets(list: &str) -> Result<Vec<String>> {
    let want: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    ensure!(!want.is_empty(), "--lora-targets is empty");
    for w in &want {
        ensure!(
            *w == "all" || TARGETS.iter().any(|(short, _)| short == w),
            "--lora-targets: unknown `{w}` (use q, k, v, o, gate, up, down or all)"
        );
    }
    Ok(TARGETS
        .iter()
        .filter(|(short, _)| want.contains(short) || want.contains(&"all"))
        .map(|(_, module)| module.to_string())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(parse_targets("q,v").unwrap(), ["self_attn.q_proj", "self_attn.v_proj"]);
        assert_eq!(parse_targets("all").unwrap().len(), 7);
        assert!(parse_targets("q,x").unwrap_err().to_string().contains("unknown `x`"));
    }
}
