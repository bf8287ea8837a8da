//! Prompt construction on real items of `../shared/eval/` against the strings lm-evaluation-harness
//! v0.4 builds from its task definitions (written out by hand here), and the scoring rules on
//! hand-made log-likelihoods.

mod common;

use serde_json::Value;
use std::path::Path;
use tinyllama::eval::harness::{encode_pair, item_correct, mean_stderr, truncate_left};
use tinyllama::eval::tasks::{build_item, hellaswag_preprocess, load_task, py_capitalize, Item};

const EVAL: &str = "../shared/eval";

fn line(file: &str, n: usize) -> Option<Value> {
    let p = Path::new(EVAL).join(file);
    common::require(&format!("eval_tasks ({file})"), &p)?;
    let text = std::fs::read_to_string(p).unwrap();
    Some(serde_json::from_str(text.lines().nth(n - 1).unwrap()).unwrap())
}

fn reqs(item: &Item) -> Vec<(&str, &str)> {
    item.requests.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

#[test]
fn hellaswag_prompts() {
    let Some(v) = line("hellaswag_validation.jsonl", 1) else { return };
    let it = build_item("hellaswag", &v, "hs:1").unwrap();
    assert_eq!(it.requests[0].0, "Roof shingle removal: A man is sitting on a roof. He");
    assert_eq!(it.requests[3].1, " starts pulling up roofing on a roof.");
    assert_eq!(it.gold, 3);
    // a WikiHow item: [title] becomes ". ", bracketed markers go, double spaces collapse once
    let v = line("hellaswag_validation.jsonl", 3244).unwrap();
    let it = build_item("hellaswag", &v, "hs:3244").unwrap();
    assert_eq!(
        it.requests[0].0,
        "Personal Care and Style: How to become a fashion consultant. Obtain your high school diploma or ged. This job \
         requires a high school diploma or equivalent, so make sure to apply yourself and finish school. If your high \
         school offers these classes, take art, design, and sewing to familiarize yourself with foundational concepts in fashion."
    );
    assert!(it.choices[0].starts_with(" Many high schools have classes"), "{:?}", it.choices[0]);
    assert!(it.choices[0].ends_with("in your field.. Search for entry-level positions in fashion industries."));
    assert_eq!(py_capitalize("the lady WALKS"), "The lady walks");
    assert_eq!(hellaswag_preprocess(" a [b] [c\nd] e [f "), "a [c\nd] e [f");
}

#[test]
fn piqa_arc_openbookqa_boolq_prompts() {
    let Some(v) = line("piqa_validation.jsonl", 1) else { return };
    let it = build_item("piqa", &v, "piqa:1").unwrap();
    assert_eq!(it.requests[0].0, "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:");
    assert!(it.requests[1]
        .1
        .starts_with(" Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans"));
    assert_eq!(it.gold, 0);

    let v = line("arc_easy_validation.jsonl", 1).unwrap();
    let it = build_item("arc_easy", &v, "arc:1").unwrap();
    assert_eq!(
        reqs(&it)[0],
        ("Question: Which technology was developed most recently?\nAnswer:", " cellular telephone")
    );
    assert_eq!(it.gold, 0);

    let v = line("arc_challenge_test_from_requests.jsonl", 1).unwrap();
    let it = build_item("arc_challenge", &v, "arcc:1").unwrap();
    assert!(
        it.requests[0].0.starts_with("Question: An astronomer observes")
            && it.requests[0].0.ends_with("rotation?\nAnswer:")
    );
    assert_eq!((it.gold, it.requests[2].1.as_str()), (2, " Planetary days will become shorter."));

    let v = line("openbookqa_validation.jsonl", 1).unwrap();
    let it = build_item("openbookqa", &v, "obqa:1").unwrap();
    assert_eq!(
        reqs(&it)[0],
        (
            "Frilled sharks and angler fish live far beneath the surface of the ocean, which is why they are known as",
            " Deep sea animals"
        )
    );
    // the test split as prompt-formatted requests: back to the bare question_stem
    let v = line("openbookqa_test_from_requests.jsonl", 1).unwrap();
    let it = build_item("openbookqa", &v, "obqa-test:1").unwrap();
    assert!(
        it.requests[0].0.starts_with("A person wants to start saving money")
            && it.requests[0].0.ends_with("save money is to")
    );
    assert_eq!(it.gold, 1);

    let v = line("boolq_validation.jsonl", 1).unwrap();
    let it = build_item("boolq", &v, "boolq:1").unwrap();
    assert!(it.requests[0].0.starts_with("All biomass goes through at least some of these steps"));
    assert!(it.requests[0].0.ends_with("\nQuestion: does ethanol take more energy make that produces?\nAnswer:"));
    assert_eq!((it.requests[0].1.as_str(), it.requests[1].1.as_str(), it.gold), (" no", " yes", 0));
}

#[test]
fn winogrande_partial_scoring() {
    let Some(v) = line("winogrande_xl_validation.jsonl", 1) else { return };
    let it = build_item("winogrande", &v, "wg:1").unwrap();
    assert_eq!(
        reqs(&it),
        vec![
            ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
            ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."),
        ]
    );
    assert_eq!(it.gold, 1);
}

#[test]
fn mmlu_five_shot_prompt() {
    if line("mmlu_dev.jsonl", 1).is_none() {
        return;
    }
    let t = load_task("mmlu", Path::new(EVAL), Some(1)).unwrap();
    let ctx = &t.items[0].requests[0].0;
    assert!(ctx.starts_with(
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n\
         Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n\
         Statement 1 | If aH is an element of a factor group, then |aH| divides |a|."
    ));
    assert!(ctx.ends_with(
        "\n\nFind the degree for the given field extension Q(sqrt(2), sqrt(3), sqrt(18)) over Q.\nA. 0\nB. 4\nC. 2\nD. 6\nAnswer:"
    ));
    assert_eq!(ctx.matches("\nAnswer: ").count(), 5, "five shots");
    assert_eq!(t.items[0].requests.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(), [" A", " B", " C", " D"]);
    // --limit counts per subject, as lm-eval's does for each of the 57 subtasks
    assert_eq!(t.items.len(), 57);
    assert_eq!(load_task("mmlu", Path::new(EVAL), Some(3)).unwrap().items.len(), 57 * 3);
}

#[test]
fn bad_task_lines_name_file_and_line() {
    let bad = serde_json::json!({"goal": "x", "sol1": "a", "sol2": "", "label": 0});
    assert!(build_item("piqa", &bad, "f.jsonl:7").unwrap_err().to_string().contains("f.jsonl:7: empty choice"));
    let bad = serde_json::json!({"goal": "x", "sol1": "a", "sol2": "b", "label": 2});
    assert!(build_item("piqa", &bad, "f.jsonl:8").unwrap_err().to_string().contains("out of range"));
    let bad = serde_json::json!({"sol1": "a", "sol2": "b", "label": 0});
    assert!(build_item("piqa", &bad, "f.jsonl:9").unwrap_err().to_string().contains("missing field `goal`"));
    let err = load_task("hellaswg", Path::new("."), None).unwrap_err().to_string();
    assert!(err.contains("did you mean `hellaswag`"), "{err}");
}

#[test]
fn scoring_rules_on_hand_made_loglikelihoods() {
    let item = Item {
        requests: vec![("q".into(), " a".into()), ("q".into(), " bbbb".into()), ("q".into(), " cc".into())],
        choices: vec!["a".into(), "bbbb".into(), "cc".into()],
        gold: 1,
    };
    // raw: choice 0 wins (-2 > -3); per character: -2/1 < -3/4 → choice 1 wins acc_norm
    assert_eq!(item_correct(&item, &[-2.0, -3.0, -7.0]), (false, true));
    // ties go to the first maximum, like numpy's argmax
    assert_eq!(item_correct(&item, &[-4.0, -4.0, -9.0]), (false, true));
    let (m, se) = mean_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert!((m - 0.75).abs() < 1e-12 && (se - (0.25f64 / 4.0).sqrt()).abs() < 1e-12, "{se}");
    // window: keep the last max_len + 1 tokens
    assert_eq!(truncate_left(&[1, 2, 3, 4], &[5, 6], 4), (vec![2, 3, 4], vec![5, 6]));
}

#[test]
fn context_continuation_split_follows_lm_eval() {
    let tok = tinyllama::tokenizer::Tokenizer::llama2();
    let (c, k) = encode_pair(&tok, "Question: 2+2?\nAnswer:", " 4").unwrap();
    assert_eq!(c[0], 1, "BOS first");
    let whole: Vec<u32> = std::iter::once(1).chain(tok.encode("Question: 2+2?\nAnswer: 4").unwrap()).collect();
    // the continuation is what the whole string adds after the context's tokens: SentencePiece
    // splits " 4" after ":" into a lone "▁" and the digit
    assert_eq!(&whole[..c.len()], c.as_slice());
    let pieces: Vec<String> = k.iter().map(|&t| tok.id_to_token(t).unwrap()).collect();
    assert_eq!(pieces, ["▁", "4"]);
    // a trailing space in the context moves to the continuation
    let (c2, k2) = encode_pair(&tok, "Question: 2+2?\nAnswer: ", "4").unwrap();
    assert_eq!((c2, k2), (c, k));
}

#[test]
fn scores_are_the_same_bits_on_any_thread_count() {
    use tinyllama::eval::harness::evaluate_task;
    use tinyllama::eval::tasks::Task;
    let tok = tinyllama::tokenizer::Tokenizer::llama2();
    let mut cfg = tinyllama::config::LlamaConfig::preset("tiny-10m").unwrap();
    cfg.num_hidden_layers = 2;
    let llama = tinyllama::model::Llama::new_init(cfg, 3);
    let model = tinyllama::model::InferenceModel::from_llama(
        &llama,
        tinyllama::model::ModelDtype::Uniform(tinyllama::kernels::quant::Format::F32),
    )
    .unwrap();
    let items: Vec<Item> = (0..20)
        .map(|i| {
            let ctx = format!("Question: what is {i} plus {}?\nAnswer:", i % 7);
            let choices: Vec<String> = (0..3).map(|c| format!("{}", i + c)).collect();
            Item { requests: choices.iter().map(|c| (ctx.clone(), format!(" {c}"))).collect(), choices, gold: i % 3 }
        })
        .collect();
    let task = Task { name: "synthetic".into(), file: "none".into(), items, has_acc_norm: true };
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut log = vec![];
            let r = evaluate_task(&model, &tok, &task, Some(&mut log), &mut |_| {}).unwrap();
            (r.acc, String::from_utf8(log).unwrap())
        })
    };
    let one = run(1);
    assert_eq!(one.1.lines().count(), 60);
    assert_eq!(run(3), one);
}
