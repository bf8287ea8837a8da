//! `prepare` end to end on small inputs of every kind: jsonl, jsonl.zst, parquet, plain text.

use std::path::{Path, PathBuf};
use tinyllama::data::prepare::{prepare, PrepareOptions};
use tinyllama::data::shard::Shard;
use tinyllama::tokenizer::Tokenizer;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyllama-prep-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn opts(inputs: Vec<PathBuf>, out: &Path, prefix: &str) -> PrepareOptions {
    PrepareOptions {
        inputs,
        output: out.to_path_buf(),
        prefix: prefix.into(),
        chunk_size: 64,
        val_fraction: 0.0,
        shard: (0, 1),
        strict: false,
        progress: false,
        replace: false,
    }
}

fn read_split(out: &Path, split: &str, prefix: &str) -> Vec<u32> {
    tinyllama::data::loader::component_files(out, split, prefix)
        .unwrap()
        .iter()
        .flat_map(|f| Shard::open(f).unwrap().tokens().unwrap())
        .collect()
}

/// The expected stream: each document's ids without BOS, then EOS.
fn expected(tok: &Tokenizer, docs: &[&str]) -> Vec<u32> {
    docs.iter().flat_map(|d| tok.encode(d).unwrap().into_iter().chain([tok.eos_id])).collect()
}

const DOCS: [&str; 3] = ["It is a truth universally acknowledged.", "def f(x):\n    return x * 2\n", "Ünïcödé ½ 🦙"];

fn jsonl_lines() -> String {
    let mut s = String::new();
    for d in DOCS {
        s += &serde_json::json!({"text": d, "meta": {"redpajama_set_name": "RedPajamaBook"}}).to_string();
        s += "\n";
    }
    // skipped: the GitHub subset, a malformed line, a row without text
    s += &serde_json::json!({"text": "int main() {}", "meta": {"redpajama_set_name": "RedPajamaGithub"}}).to_string();
    s += "\n{not json\n{\"meta\": {}}\n";
    s
}

#[test]
fn jsonl_and_zst_follow_tinyllama_rules() {
    let tok = Tokenizer::llama2();
    let d = tmpdir("jsonl");
    let plain = d.join("in.jsonl");
    std::fs::write(&plain, jsonl_lines()).unwrap();
    let zst = d.join("in.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(jsonl_lines().as_bytes(), 3).unwrap()).unwrap();
    for (input, prefix) in [(plain, "plain"), (zst, "zst")] {
        let out = d.join(format!("out-{prefix}"));
        let st = prepare(&opts(vec![input], &out, prefix), &tok).unwrap();
        assert_eq!(st.documents, 3);
        assert_eq!((st.skipped_redpajama_github, st.skipped_malformed, st.skipped_no_text), (1, 1, 1));
        assert!(st.first_skip.as_deref().unwrap().contains(":5"), "{:?}", st.first_skip);
        let toks = read_split(&out, "train", prefix);
        assert_eq!(toks, expected(&tok, &DOCS));
        assert!(!toks.contains(&tok.bos_id), "no BOS in packed data");
        // strict mode names file and line
        let mut o = opts(vec![d.join(if prefix == "zst" { "in.jsonl.zst" } else { "in.jsonl" })], &out, prefix);
        o.strict = true;
        o.replace = true;
        let err = format!("{:#}", prepare(&o, &tok).unwrap_err());
        assert!(err.contains(":5") && err.contains("malformed"), "{err}");
    }
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn text_files_and_directories_are_documents_and_reruns_are_identical() {
    let tok = Tokenizer::llama2();
    let d = tmpdir("text");
    let src = d.join("src");
    std::fs::create_dir_all(src.join("pkg")).unwrap();
    std::fs::write(src.join("a.txt"), DOCS[0]).unwrap();
    std::fs::write(src.join("pkg/b.py"), DOCS[1]).unwrap();
    std::fs::write(src.join("pkg/c.bin"), [0xffu8, 0xfe, 0x00]).unwrap(); // not UTF-8: skipped
    let out = d.join("out");
    let mut o = opts(vec![src.clone()], &out, "code");
    o.chunk_size = 8;
    let st = prepare(&o, &tok).unwrap();
    assert_eq!((st.documents, st.skipped_invalid_utf8), (2, 1));
    assert_eq!(read_split(&out, "train", "code"), expected(&tok, &DOCS[..2]));
    let first: Vec<Vec<u8>> = st.shard_files.iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    assert!(st.shard_files.len() > 1, "several 8-token shards");
    // a second run into the same output is refused (old and new shards would mix), touching nothing
    let err = format!("{:#}", prepare(&o, &tok).unwrap_err());
    assert!(err.contains("from an earlier run") && err.contains("--replace"), "{err}");
    let kept: Vec<Vec<u8>> = st.shard_files.iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    assert_eq!(first, kept);
    // another prefix beside it is fine (SlimPajama and Starcoderdata share a directory)
    prepare(&opts(vec![src.join("a.txt")], &out, "other"), &tok).unwrap();
    o.replace = true;
    let st2 = prepare(&o, &tok).unwrap();
    let again: Vec<Vec<u8>> = st2.shard_files.iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    assert_eq!(first, again, "re-running must give byte-identical shards");
    assert_eq!(read_split(&out, "train", "code"), expected(&tok, &DOCS[..2]), "no shard of the old run is left");
    // nothing usable in the input: an error, not an empty success
    let empty = d.join("empty.bin");
    std::fs::write(&empty, [0xffu8, 0xfe]).unwrap();
    let err = format!("{:#}", prepare(&opts(vec![empty], &d.join("out2"), "none"), &tok).unwrap_err());
    assert!(err.contains("no document written"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}

#[test]
fn validation_split_and_machine_shards() {
    let tok = Tokenizer::llama2();
    let d = tmpdir("val");
    let inputs: Vec<PathBuf> = (0..40)
        .map(|i| {
            let p = d.join(format!("doc{i:02}.txt"));
            std::fs::write(&p, format!("Document number {i}.")).unwrap();
            p
        })
        .collect();
    let out = d.join("out");
    let mut o = opts(inputs.clone(), &out, "slim");
    o.val_fraction = 0.25;
    let st = prepare(&o, &tok).unwrap();
    assert_eq!(st.val_documents + st.train_documents, 40);
    assert!(st.val_documents >= 3 && st.val_documents <= 20, "{} validation documents", st.val_documents);
    assert_eq!(
        read_split(&out, "validation", "slim").iter().filter(|&&t| t == tok.eos_id).count() as u64,
        st.val_documents
    );
    // two machines split the files without overlap and without loss
    let mut total = 0;
    for i in 0..2 {
        let mut o = opts(inputs.clone(), &d.join("split"), "slim");
        o.shard = (i, 2);
        let st = prepare(&o, &tok).unwrap();
        assert!(st.shard_files.iter().all(|f| f.starts_with(&format!("train_slim_{i}_"))));
        total += st.documents;
    }
    assert_eq!(total, 40);
    std::fs::remove_dir_all(d).unwrap();
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_content_column() {
    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;
    let tok = Tokenizer::llama2();
    let d = tmpdir("parquet");
    let path = d.join("train-00000.parquet");
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY max_stars_repo_name (UTF8); REQUIRED BYTE_ARRAY content (UTF8); }",
        )
        .unwrap(),
    );
    let props = Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let mut w = SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    for col in [vec!["a/b", "c/d", "e/f"], DOCS.to_vec()] {
        let mut c = rg.next_column().unwrap().unwrap();
        let vals: Vec<ByteArray> = col.iter().map(|s| ByteArray::from(*s)).collect();
        c.typed::<ByteArrayType>().write_batch(&vals, None, None).unwrap();
        c.close().unwrap();
    }
    rg.close().unwrap();
    w.close().unwrap();
    let out = d.join("out");
    let st = prepare(&opts(vec![path], &out, "star"), &tok).unwrap();
    assert_eq!(st.documents, 3);
    assert_eq!(read_split(&out, "train", "star"), expected(&tok, &DOCS));
    // an unreadable parquet file is a named error
    let bad = d.join("bad.parquet");
    std::fs::write(&bad, b"PAR1 not really").unwrap();
    let err = format!("{:#}", prepare(&opts(vec![bad], &d.join("out-bad"), "star"), &tok).unwrap_err());
    assert!(err.contains("bad.parquet"), "{err}");
    std::fs::remove_dir_all(d).unwrap();
}
