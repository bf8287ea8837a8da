//! Generated tokens as text: [`TextStream`] (incremental detokenization with stop strings), and
//! the ids that end a sequence.

use anyhow::Result;

/// The ids that end a generation: the tokenizer's EOS and every `eos_token_id` of the model's
/// config (which may be a list).
pub fn end_ids(cfg: &crate::config::LlamaConfig, tok: &crate::tokenizer::Tokenizer) -> Vec<u32> {
    let mut ids = vec![tok.eos_id];
    for e in cfg.eos_ids() {
        if !ids.contains(&e) {
            ids.push(e);
        }
    }
    ids
}

/// Generated tokens turned into text as it may be shown: decoded whole each time (so characters
/// split across tokens appear whole), held back while it ends in an incomplete character or in
/// what may be the start of a stop string, and cut before the first stop string.
pub struct TextStream {
    /// The token before the first generated one: decoding after it keeps a leading space.
    after: Option<u32>,
    stop_strings: Vec<String>,
    ids: Vec<u32>,
    text: String,
    shown: usize,
    /// A stop string was found (the text ends before it).
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop_strings: Vec<String>, after: Option<u32>) -> Self {
        TextStream { after, stop_strings, ids: vec![], text: String::new(), shown: 0, stopped: false }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// All the text so far (up to a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Adds a generated (non-special) token; returns the text that can be shown now.
    pub fn push(&mut self, tok: &crate::tokenizer::Tokenizer, id: u32) -> Result<String> {
        if self.stopped {
            return Ok(String::new());
        }
        self.ids.push(id);
        self.text = match self.after {
            Some(a) => tok.decode_after(a, &self.ids)?,
            None => tok.decode(&self.ids)?,
        };
        if let Some(cut) = self.stop_strings.iter().filter_map(|s| self.text.find(s.as_str())).min() {
            self.text.truncate(cut);
            self.stopped = true;
            return Ok(self.finish());
        }
        let mut end = self.text.trim_end_matches('\u{fffd}').len();
        for s in &self.stop_strings {
            // the longest tail of the text that begins a stop string waits
            if let Some(k) = (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && self.text[..end].ends_with(&s[..k]))
            {
                end -= k;
            }
        }
        Ok(self.take_until(end))
    }

    /// What is left to show when generation ends.
    pub fn finish(&mut self) -> String {
        self.take_until(self.text.len())
    }

    fn take_until(&mut self, end: usize) -> String {
        if end <= self.shown || !self.text.is_char_boundary(end) || !self.text.is_char_boundary(self.shown) {
            return String::new();
        }
        let out = self.text[self.shown..end].to_string();
        self.shown = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stop strings cut the text and are never shown, also when they arrive split over tokens;
    /// the streamed pieces add up to the text.
    #[test]
    fn text_stream_holds_back_possible_stop_strings() {
        let tok = crate::tokenizer::Tokenizer::llama2();
        let ids = tok.encode("Hello world. Bye now").unwrap();
        let mut ts = TextStream::new(vec![". B".into()], None);
        let mut shown = String::new();
        for &id in &ids {
            shown += &ts.push(&tok, id).unwrap();
            assert!(!shown.contains('.') || ts.stopped, "{shown:?} shown before the stop string was decided");
        }
        shown += &ts.finish();
        assert!(ts.stopped);
        assert_eq!((shown.as_str(), ts.text()), ("Hello world", "Hello world"));
        // no stop: everything, in pieces that add up (a leading space kept after the prompt)
        let mut ts = TextStream::new(vec![], Some(ids[0]));
        let mut shown = String::new();
        for &id in &ids[1..] {
            shown += &ts.push(&tok, id).unwrap();
        }
        shown += &ts.finish();
        assert_eq!(shown, " world. Bye now");
    }
}
