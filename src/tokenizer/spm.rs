//! SentencePiece-style tokenization from a GGUF vocabulary (pieces, scores, token types), the way
//! llama.cpp's `llm_tokenizer_spm` does it: the text is split at special tokens; each raw fragment
//! after a special token (or at the start) gets a leading space, spaces become "▁", and adjacent
//! symbols (UTF-8 characters at first) are merged greedily, highest score of the merged piece
//! first (ties: leftmost); what is left unmatched falls back to byte tokens `<0xXX>`.
//!
//! With SentencePiece's real scores this equals SentencePiece (and Hugging Face's merges); with the
//! -1000 that `convert_hf_to_gguf.py` writes when it only has tokenizer.json it differs, exactly as
//! llama.cpp does — so a model's own metadata decides, and both engines agree on every file.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

pub const TYPE_NORMAL: i32 = 1;
pub const TYPE_UNKNOWN: i32 = 2;
pub const TYPE_CONTROL: i32 = 3;
pub const TYPE_USER_DEFINED: i32 = 4;
pub const TYPE_BYTE: i32 = 6;

pub struct SpmVocab {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    pub types: Vec<i32>,
    index: HashMap<String, u32>,
    byte_ids: [Option<u32>; 256],
    /// Control and user-defined pieces, longest first: matched in raw text.
    specials: Vec<(String, u32)>,
    pub unk_id: u32,
    pub add_space_prefix: bool,
}

#[derive(PartialEq)]
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl Eq for Bigram {}
impl Ord for Bigram {
    fn cmp(&self, o: &Self) -> Ordering {
        // max-heap: higher score first, then the leftmost
        self.score.partial_cmp(&o.score).unwrap_or(Ordering::Equal).then(o.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    n: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl SpmVocab {
    pub fn new(pieces: Vec<String>, scores: Vec<f32>, types: Vec<i32>, unk_id: u32, add_space_prefix: bool) -> Self {
        let mut index = HashMap::with_capacity(pieces.len());
        for (i, p) in pieces.iter().enumerate() {
            index.entry(p.clone()).or_insert(i as u32);
        }
        let mut byte_ids = [None; 256];
        for (i, p) in pieces.iter().enumerate() {
            if types[i] == TYPE_BYTE && p.len() == 6 && p.starts_with("<0x") && p.ends_with('>') {
                if let Ok(b) = u8::from_str_radix(&p[3..5], 16) {
                    byte_ids[b as usize] = Some(i as u32);
                }
            }
        }
        let mut specials: Vec<(String, u32)> = pieces
            .iter()
            .enumerate()
            .filter(|(i, p)| (types[*i] == TYPE_CONTROL || types[*i] == TYPE_USER_DEFINED) && !p.is_empty())
            .map(|(i, p)| (p.clone(), i as u32))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        SpmVocab { pieces, scores, types, index, byte_ids, specials, unk_id, add_space_prefix }
    }

    pub fn id(&self, piece: &str) -> Option<u32> {
        self.index.get(piece).copied()
    }

    /// Token ids of `text` (no BOS), special tokens in the text recognised.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out = vec![];
        let mut prev_special = true;
        let mut raw_start = 0;
        let mut i = 0;
        let b = text.as_bytes();
        while i < b.len() {
            let hit = if self.specials.is_empty() {
                None
            } else {
                self.specials.iter().find(|(s, _)| b[i..].starts_with(s.as_bytes()))
            };
            match hit {
                Some((s, id)) => {
                    if raw_start < i {
                        self.encode_raw(&text[raw_start..i], prev_special, &mut out);
                    }
                    out.push(*id);
                    prev_special = true;
                    i += s.len();
                    raw_start = i;
                }
                None => i += 1,
            }
        }
        if raw_start < b.len() {
            self.encode_raw(&text[raw_start..], prev_special, &mut out);
        }
        out
    }

    fn encode_raw(&self, frag: &str, prev_special: bool, out: &mut Vec<u32>) {
        let mut text = String::with_capacity(frag.len() + 3);
        if self.add_space_prefix && prev_special {
            text.push('▁');
        }
        for c in frag.chars() {
            if c == ' ' {
                text.push('▁');
            } else {
                text.push(c);
            }
        }
        let mut syms: Vec<Symbol> = vec![];
        for (k, (start, c)) in text.char_indices().enumerate() {
            syms.push(Symbol { start, n: c.len_utf8(), prev: k.checked_sub(1), next: Some(k + 1) });
        }
        if let Some(l) = syms.last_mut() {
            l.next = None;
        }
        let mut queue = BinaryHeap::new();
        let mut rev_merge: HashMap<String, (usize, usize)> = HashMap::new();
        let try_add = |l: Option<usize>,
                       r: Option<usize>,
                       syms: &[Symbol],
                       q: &mut BinaryHeap<Bigram>,
                       rev: &mut HashMap<String, (usize, usize)>| {
            let (Some(l), Some(r)) = (l, r) else { return };
            let piece = &text[syms[l].start..syms[l].start + syms[l].n + syms[r].n];
            let Some(&id) = self.index.get(piece) else { return };
            q.push(Bigram { left: l, right: r, score: self.scores[id as usize], size: piece.len() });
            rev.insert(piece.to_string(), (l, r));
        };
        for k in 1..syms.len() {
            try_add(Some(k - 1), Some(k), &syms, &mut queue, &mut rev_merge);
        }
        while let Some(bg) = queue.pop() {
            let (l, r) = (syms[bg.left], syms[bg.right]);
            if l.n == 0 || r.n == 0 || l.n + r.n != bg.size {
                continue;
            }
            syms[bg.left].n += r.n;
            syms[bg.right].n = 0;
            syms[bg.left].next = r.next;
            if let Some(nx) = r.next {
                syms[nx].prev = Some(bg.left);
            }
            let lp = syms[bg.left].prev;
            let ln = syms[bg.left].next;
            try_add(lp, Some(bg.left), &syms, &mut queue, &mut rev_merge);
            try_add(Some(bg.left), ln, &syms, &mut queue, &mut rev_merge);
        }
        let mut i = if syms.is_empty() { None } else { Some(0) };
        while let Some(k) = i {
            self.resegment(&text, &syms, k, &rev_merge, out, 0);
            i = syms[k].next;
        }
    }

    fn resegment(
        &self,
        text: &str,
        syms: &[Symbol],
        k: usize,
        rev: &HashMap<String, (usize, usize)>,
        out: &mut Vec<u32>,
        depth: usize,
    ) {
        let piece = &text[syms[k].start..syms[k].start + syms[k].n];
        if let Some(&id) = self.index.get(piece) {
            out.push(id);
            return;
        }
        match rev.get(piece) {
            Some(&(l, r)) if depth < 64 => {
                self.resegment(text, syms, l, rev, out, depth + 1);
                self.resegment(text, syms, r, rev, out, depth + 1);
            }
            _ => {
                for &b in piece.as_bytes() {
                    out.push(self.byte_ids[b as usize].unwrap_or(self.unk_id));
                }
            }
        }
    }

    /// Text of `ids`: control tokens dropped (or kept with `keep_special`), "▁" as spaces, byte
    /// tokens as bytes, one leading space stripped (as the Llama decoders do).
    pub fn decode(&self, ids: &[u32], keep_special: bool) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            let Some(p) = self.pieces.get(id as usize) else { continue };
            match self.types[id as usize] {
                TYPE_CONTROL | TYPE_UNKNOWN if !keep_special => {}
                TYPE_BYTE => match u8::from_str_radix(p.get(3..5).unwrap_or(""), 16) {
                    Ok(b) => bytes.push(b),
                    Err(_) => bytes.extend_from_slice(p.as_bytes()),
                },
                _ => bytes.extend_from_slice(p.replace('▁', " ").as_bytes()),
            }
        }
        let s = String::from_utf8_lossy(&bytes).into_owned();
        match s.strip_prefix(' ') {
            Some(rest) => rest.to_string(),
            None => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> SpmVocab {
        let mut pieces: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
        let mut types = vec![TYPE_UNKNOWN, TYPE_CONTROL, TYPE_CONTROL];
        for b in 0..=255u8 {
            pieces.push(format!("<0x{b:02X}>"));
            types.push(TYPE_BYTE);
        }
        for p in ["▁", "a", "b", "ab", "▁a", "▁ab", "c", "bc"] {
            pieces.push(p.into());
            types.push(TYPE_NORMAL);
        }
        let mut scores = vec![0.0; pieces.len()];
        let at = |p: &str| pieces.iter().position(|x| x == p).unwrap();
        scores[at("ab")] = -1.0;
        scores[at("bc")] = -0.5;
        scores[at("▁a")] = -2.0;
        scores[at("▁ab")] = -1.5;
        scores[at("▁")] = -3.0;
        SpmVocab::new(pieces, scores, types, 0, true)
    }

    #[test]
    fn merges_by_score_with_byte_fallback_and_specials() {
        let v = toy();
        let id = |p: &str| v.id(p).unwrap();
        // "▁abc": bc (-0.5) beats ab (-1.0) and ▁a (-2.0); then ▁a remains
        assert_eq!(v.encode("abc"), vec![id("▁a"), id("bc")]);
        // "▁ab": ab first, then ▁ + ab = ▁ab
        assert_eq!(v.encode("ab"), vec![id("▁ab")]);
        // 'é' is no piece: its two UTF-8 bytes
        assert_eq!(v.encode("é"), vec![id("▁"), id("<0xC3>"), id("<0xA9>")]);
        // a special token in the text, and the space prefix after it
        assert_eq!(v.encode("ab</s>ab"), vec![id("▁ab"), 2, id("▁ab")]);
        assert_eq!(v.decode(&v.encode("ab abc"), false), "ab abc");
        assert!(v.encode("").is_empty());
    }
}
